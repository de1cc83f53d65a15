"""Choose each method's settings for a bundled model on its world's *val* split; write them into the model folder.

    python benchmarks/shapes/settings_sweep.py --n 60                                   # shapes
    python benchmarks/shapes/settings_sweep.py --dataset scenes --model scenes --n 60   # scenes

Writes the methods' entries of `zoo/promptseg_models/<model>/promptseg_settings.json` (other entries, the filter's
and the refiner's, are kept) and `benchmarks/shapes/results/<dataset>_sweep.md`. `load_backbone(model)` reads that file,
and `build_method` starts from its settings (the caller's win).

The test split (the benchmarks) is never looked at here. Only what the model changes is swept: which attention
grids it has (shapes: 16x16 and 8x8; scenes: 16x16, 8x8 and 4x4), the timestep, the prompt form (the models were
trained on captions like "a red circle and a blue square on grass") and the refinement depth. The methods' own
hyper-parameters (InvSeg's loss weights, steps, learning rate; FastSeg's tau) keep the papers' values. Every image
is offered its ground-truth classes (the oracle setting), so the filter does not enter.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import tempfile
from pathlib import Path

from promptseg import load_backbone
from promptseg.eval.runner import EvalRun, evaluate
from promptseg.models import SETTINGS_FILE, bundled

HERE = Path(__file__).parent
FINE, COARSE, COARSEST = 1.0, 0.5, 0.25  # attention grids as fractions of the 16x16 latent (scenes has all three)
PROMPTS = {"shapes": [("{}", " and "), ("a {}", " and a ")], "scenes": [("{}", " and "), ("a {}", " and a "), ("{}", ", ")]}
CROSS = {"shapes": [{FINE: 0.5, COARSE: 0.5}, {COARSE: 1.0}],
         "scenes": [{FINE: 0.5, COARSE: 0.5}, {COARSE: 1.0}, {COARSE: 0.5, COARSEST: 0.5}, {FINE: 1.0}]}
TIMESTEPS = {"shapes": [100, 200, 300, 400, 500], "scenes": [100, 300, 500, 700]}  # scenes: stuff words matter only at high noise (scenes_word_reliance.md)
REFINE_ITERATIONS = {"shapes": [0, 1, 2], "scenes": [1, 2]}


BACKBONE = {}


def run(method: str, settings: dict, n: int, model: str, dataset: str) -> float:
    if model not in BACKBONE:
        BACKBONE[model] = load_backbone(model, device="cpu")
    work = tempfile.mkdtemp(prefix="sweep_")
    try:
        report = evaluate(
            EvalRun(refine="none", dataset=dataset, split="val", method=method, model=model, out=work, limit=n, device="cpu",
                    settings=settings),
            progress=False,
            backbone=BACKBONE[model],
        )
    finally:
        shutil.rmtree(work)
    return report["miou"]


def write_model_settings(model: str, entries: dict) -> dict:
    """Put `entries` (method -> settings) into the model folder's `promptseg_settings.json`, its other entries (the
    filter's, the other methods') kept; returns what the file now holds."""
    path = Path(bundled("diffusion").get(model, model)) / SETTINGS_FILE
    chosen = json.loads(path.read_text()) if path.exists() else {}
    chosen.update(entries)
    path.write_text(json.dumps(chosen, indent=1) + "\n")
    return chosen


def grid(**axes):
    keys = list(axes)
    for values in itertools.product(*axes.values()):
        yield dict(zip(keys, values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--dataset", default="shapes", choices=sorted(PROMPTS))
    args = parser.parse_args()
    log = []
    best = {}

    def run_here(method: str, settings: dict, n: int) -> float:
        return run(method, settings, n, args.model, args.dataset)

    baseline_axes = grid(
        timestep=TIMESTEPS[args.dataset],
        prompt=PROMPTS[args.dataset],
        cross_weights=CROSS[args.dataset],
        refine_iterations=REFINE_ITERATIONS[args.dataset],
        self_weights=[{FINE: 1.0}, {COARSE: 1.0}],
    )
    for axes in baseline_axes:
        template, joiner = axes.pop("prompt")
        settings = {**axes, "template": template, "joiner": joiner, "background_threshold": None}
        score = run_here("baseline", settings, args.n)
        log.append({"method": "baseline", "settings": settings, "val_miou": score})
        print(f"baseline {score:.4f} {settings}", flush=True)
        if score > best.get("baseline", (-1, None))[0]:
            best["baseline"] = (score, settings)
    base = best["baseline"][1]

    resolutions = [{FINE: 1.0}, {FINE: 0.5, COARSE: 0.5}, {COARSE: 1.0}]
    for axes in grid(timestep=[1, 100, 300, 500], cross_weights=CROSS[args.dataset], hard_weights=resolutions):
        settings = {**axes, "class_template": base["template"], "joiner": base["joiner"], "background_threshold": None}
        score = run_here("fastseg", settings, args.n)
        log.append({"method": "fastseg", "settings": settings, "val_miou": score})
        print(f"fastseg {score:.4f} {settings}", flush=True)
        if score > best.get("fastseg", (-1, None))[0]:
            best["fastseg"] = (score, settings)

    readout = {k: base[k] for k in ("cross_weights", "self_weights", "template", "joiner", "background_threshold",
                                     "timestep")}
    t = base["timestep"]
    for loss_grid, train_range in itertools.product(({FINE: 1.0}, {COARSE: 1.0}), ((5, 300), (max(5, t - 150), t + 150))):
        settings = {**readout, "loss_cross_weights": loss_grid, "loss_self_weights": loss_grid,
                    "train_timesteps": train_range}
        score = run_here("invseg", settings, max(20, args.n // 3))
        log.append({"method": "invseg", "settings": settings, "val_miou": score})
        print(f"invseg {score:.4f} {settings}", flush=True)
        if score > best.get("invseg", (-1, None))[0]:
            best["invseg"] = (score, settings)

    chosen = write_model_settings(args.model, {name: settings for name, (_, settings) in best.items()})
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    lines = [f"# Settings sweep on the {args.dataset} val split, model `{args.model}` ({args.n} images; invseg "
             f"{max(20, args.n // 3)}; oracle class names)", "",
             "| method | val mIoU | settings |", "| --- | --- | --- |"]
    for entry in sorted(log, key=lambda e: (e["method"], -e["val_miou"])):
        lines.append(f"| {entry['method']} | {100 * entry['val_miou']:.1f} | `{json.dumps(entry['settings'])}` |")
    (results / f"{args.dataset}_sweep.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(chosen, indent=1))


if __name__ == "__main__":
    main()
