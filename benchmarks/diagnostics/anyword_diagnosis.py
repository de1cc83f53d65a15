"""Which signal points at the right object? Per-object pick accuracy of word maps on the shapes model (val images).

    python benchmarks/diagnostics/anyword_diagnosis.py --n 60

For every visible object of every val image with two or more objects, and for its shape word ("circle") and its
colour word ("red") alone: is the object with the highest mean map value the right one? Maps: the word's
cross-attention (the prompt is the word alone, 8x8 layers, t = 100/300/500 averaged: what Segment Anyword reads),
the word's denoising gain (`promptseg/evidence.py`: relative drop of the noise-prediction error against the
empty prompt, 8 timesteps), and that gain less the gain of the generic word "object". Chance is about 1 / (objects
per image), ~0.43 here. Results: benchmarks/diagnostics/results/anyword_diagnosis.md and .json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from promptseg import load_backbone
from promptseg.data.shapes_world import render_sample
from promptseg.diffusion.attention import attention_pass
from promptseg.diffusion.evidence import DenoisingEvidence
from promptseg.diffusion.noise import noised_latents
from promptseg.diffusion.readout import resize_maps, tokens_to_maps
from promptseg.methods import build_method
from promptseg.text import span_positions

RESULTS = Path(__file__).parent / "results"


def attention_map(backbone, baseline, latents, word: str, size: int) -> np.ndarray:
    positions = span_positions(backbone.tokenizer, word, [(0, len(word))])[0]
    total = 0
    for t in (100, 300, 500):
        noisy, _ = noised_latents(backbone, latents, t, 0)
        store = attention_pass(backbone, noisy, t, backbone.encode_text(word), baseline.layers)
        grid = max(baseline.cross_grids, key=lambda g: baseline.cross_grids[g])
        total = total + tokens_to_maps(store.mean("cross", grid)[..., positions].mean(-1, keepdim=True), grid)
    return resize_maps(total, (size, size))[0, 0].numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60, help="val images scanned (those with one object are skipped)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    backbone = load_backbone("shapes", device="cpu")
    baseline = build_method("baseline", backbone)
    hits: dict[str, list[int]] = {}
    chance = []
    for index in range(args.n):
        sample = render_sample("val", index)
        ids = [k + 1 for k in range(len(sample.objects)) if (sample.instance_map == k + 1).any()]
        if len(ids) < 2:
            continue
        size = sample.image.shape[0]
        prepared = baseline.prepare(sample.image)
        evidence = DenoisingEvidence(backbone, prepared.latents, (100, 200, 300, 400, 500, 600, 700, 800), 0)

        def gain(word: str, evidence=evidence, size=size) -> np.ndarray:
            return resize_maps(evidence.gain(word)[None, None].float(), (size, size))[0, 0].numpy()

        reference = gain("object")
        for k in ids:
            obj = sample.objects[k - 1]
            chance.append(1 / len(ids))
            for kind, word in (("shape", obj.shape), ("colour", obj.colour)):
                maps = {
                    "cross-attention": attention_map(backbone, baseline, prepared.latents, word, size),
                    "denoising gain": gain(word),
                    "denoising gain - gain('object')": gain(word) - reference,
                }
                for name, value in maps.items():
                    means = [value[sample.instance_map == j].mean() for j in ids]
                    hits.setdefault(f"{kind} word | {name}", []).append(int(ids[int(np.argmax(means))] == k))
    table = {key: {"accuracy": float(np.mean(v)), "n": len(v)} for key, v in hits.items()}
    write_pick_table("anyword_diagnosis", {"n_images": args.n, "chance": float(np.mean(chance))}, table, [
        f"# Per-object pick accuracy of word maps, shapes model, val images 0-{args.n - 1} with 2+ objects", "",
        f"Made by `python benchmarks/diagnostics/anyword_diagnosis.py --n {args.n}`. Chance: {np.mean(chance):.3f}.", "",
        "| word | map | pick accuracy | objects |"])


def write_pick_table(name: str, record: dict, table: dict, head: list[str]) -> None:
    """results/NAME.json (`record` and the rows) and NAME.md (`head`, then one line per "kind | signal" row)."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({**record, "rows": table}, indent=1))
    lines = [*head, "| --- | --- | --- | --- |"]
    for key, row in table.items():
        kind, signal = key.split(" | ")
        lines.append(f"| {kind} | {signal} | {row['accuracy']:.3f} | {row['n']} |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
