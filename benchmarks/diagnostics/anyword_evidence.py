"""Which denoising evidence points at the referred object? Pick accuracy among true object masks (val images).

    python benchmarks/diagnostics/anyword_evidence.py --n 40

For every one-target expression without a relation ("the circle", "the red circle") of val images 0..n-1 with two
or more visible objects: is the object with the highest mean evidence inside its true mask the referred one? The
evidence is the phrase's denoising gain (`promptseg/evidence.py`) less a generic reference word's, read with
the settings of Segment Anyword's two val sweeps: the first ("red circle" less "object", 8 draws at t = 100..800) and
the second ("a red circle" less "a object", as the training captions write phrases, 32 draws at t = 400..950), and
the two halves of the second (its template at the first sweep's timesteps; its timesteps without the template). True
masks isolate the evidence from the proposals: this is the ceiling of ranking whole objects by it. Results:
benchmarks/diagnostics/results/anyword_evidence.md and .json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "referring"))  # its referring sibling
from anyword_benchmark import HIGH_EVIDENCE as HIGH
from anyword_benchmark import OLD_EVIDENCE as FIRST
from anyword_diagnosis import write_pick_table

from promptseg import load_backbone
from promptseg.data.shapes_world import render_sample
from promptseg.diffusion.encode import prepare_pixels
from promptseg.diffusion.evidence import DenoisingEvidence
from promptseg.diffusion.readout import resize_maps

VARIANTS = {  # name: (template, timesteps)
    "first sweep: '{}', x8 t100-800": ("{}", FIRST),
    "'a {}', x8 t100-800": ("a {}", FIRST),
    "'{}', x32 t400-950": ("{}", HIGH),
    "second sweep: 'a {}', x32 t400-950": ("a {}", HIGH),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="val images scanned (those with one object are skipped)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    backbone = load_backbone("shapes", device="cpu")
    hits: dict[tuple[str, str], list[int]] = {}
    for index in range(args.n):
        sample = render_sample("val", index)
        ids = [k + 1 for k in range(len(sample.objects)) if (sample.instance_map == k + 1).any()]
        if len(ids) < 2:
            continue
        latents = prepare_pixels(backbone, sample.image).latents
        size = sample.image.shape[:2]
        for name, (template, timesteps) in VARIANTS.items():
            evidence = DenoisingEvidence(backbone, latents, timesteps, 0)

            def gain(phrase: str, evidence=evidence, template=template, size=size) -> np.ndarray:
                return resize_maps(evidence.gain(template.format(phrase))[None, None].float(), size)[0, 0].numpy()

            reference = gain("object")
            for expression, targets in sample.referring:
                words = expression.split()[1:]  # "the red circle" -> "red circle"
                if len(targets) != 1 or " of " in expression:
                    continue
                value = gain(" ".join(words)) - reference
                means = [value[sample.instance_map == j].mean() for j in ids]
                kind = "colour shape" if len(words) == 2 else "shape"
                hits.setdefault((kind, name), []).append(int(ids[int(np.argmax(means))] == targets[0]))
    table = {f"{kind} | {name}": {"accuracy": float(np.mean(v)), "n": len(v)} for (kind, name), v in sorted(hits.items())}
    write_pick_table("anyword_evidence", {"n_images": args.n}, table, [
        f"# Pick accuracy of denoising evidence among true object masks, shapes model, val images 0-{args.n - 1}", "",
        f"Made by `python benchmarks/diagnostics/anyword_evidence.py --n {args.n}` (images with 2+ visible objects; one-target",
        "expressions without a relation).", "", "| expression | evidence | pick accuracy | expressions |"])

if __name__ == "__main__":
    main()
