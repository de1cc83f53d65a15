"""Choose each method's settings for the shapes model on the *val* split; write them into the model folder.

    python benchmarks/shapes_sweep.py --n 60     # writes src/promptseg/zoo/shapes/promptseg_settings.json

`load_backbone("shapes")` reads that file, and `build_method` starts from its settings (the caller's win).

The test split (benchmarks/shapes_benchmark.py) is never looked at here. Only what the shapes model changes is
swept: which resolutions exist (its 16x16 latent has attention at 16x16 and 8x8 only), the timestep, the prompt
form (it was trained on captions like "a red circle and a blue square on grass") and the refinement depth. The
method's own hyper-parameters (InvSeg's loss weights, steps, learning rate; FastSeg's tau) keep the papers' values.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import tempfile
from pathlib import Path

from promptseg import load_backbone
from promptseg.backbone import BUNDLED, SETTINGS_FILE
from promptseg.eval.runner import EvalRun, evaluate

HERE = Path(__file__).parent
FINE, COARSE = 1.0, 0.5  # the shapes UNet's attention grids as fractions of its 16x16 latent


BACKBONE = {}


def run(method: str, settings: dict, n: int, model: str) -> float:
    if model not in BACKBONE:
        BACKBONE[model] = load_backbone(model, device="cpu")
    work = tempfile.mkdtemp(prefix="sweep_")
    try:
        report = evaluate(
            EvalRun(refine="none", dataset="shapes", split="val", method=method, model=model, out=work, limit=n, device="cpu",
                    settings=settings),
            progress=False,
            backbone=BACKBONE[model],
        )
    finally:
        shutil.rmtree(work)
    return report["miou"]


def grid(**axes):
    keys = list(axes)
    for values in itertools.product(*axes.values()):
        yield dict(zip(keys, values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--model", default="shapes")
    args = parser.parse_args()
    log = []
    prompts = [("{}", " and "), ("a {}", " and a ")]
    best = {}

    baseline_axes = grid(
        timestep=[100, 200, 300, 400, 500],
        prompt=prompts,
        cross_weights=[{FINE: 0.5, COARSE: 0.5}, {COARSE: 1.0}],
        refine_iterations=[0, 1, 2],
        self_weights=[{FINE: 1.0}, {COARSE: 1.0}],
    )
    for axes in baseline_axes:
        template, joiner = axes.pop("prompt")
        settings = {**axes, "template": template, "joiner": joiner, "background_threshold": None}
        score = run("baseline", settings, args.n, args.model)
        log.append({"method": "baseline", "settings": settings, "val_miou": score})
        print(f"baseline {score:.4f} {settings}", flush=True)
        if score > best.get("baseline", (-1, None))[0]:
            best["baseline"] = (score, settings)
    base = best["baseline"][1]

    resolutions = [{FINE: 1.0}, {FINE: 0.5, COARSE: 0.5}, {COARSE: 1.0}]
    for axes in grid(timestep=[1, 100, 300, 500], cross_weights=resolutions[1:], hard_weights=resolutions):
        settings = {**axes, "class_template": base["template"], "joiner": base["joiner"], "background_threshold": None}
        score = run("fastseg", settings, args.n, args.model)
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
        score = run("invseg", settings, max(20, args.n // 3), args.model)
        log.append({"method": "invseg", "settings": settings, "val_miou": score})
        print(f"invseg {score:.4f} {settings}", flush=True)
        if score > best.get("invseg", (-1, None))[0]:
            best["invseg"] = (score, settings)

    chosen = {name: settings for name, (_, settings) in best.items()}
    folder = BUNDLED.get(args.model, Path(args.model))
    (Path(folder) / SETTINGS_FILE).write_text(json.dumps(chosen, indent=1) + "\n")
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    lines = [f"# Settings sweep on the shapes val split ({args.n} images; invseg {max(20, args.n // 3)})", "",
             "| method | val mIoU | settings |", "| --- | --- | --- |"]
    for entry in sorted(log, key=lambda e: (e["method"], -e["val_miou"])):
        lines.append(f"| {entry['method']} | {100 * entry['val_miou']:.1f} | `{json.dumps(entry['settings'])}` |")
    (results / "shapes_sweep.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(chosen, indent=1))


if __name__ == "__main__":
    main()
