"""The pointing game for word heat maps (`promptseg maps`) on the shapes world's *test* split.

    python benchmarks/shapes/wordmaps_pointing.py --model shapes --n 100

For each image, the maps of every class name of the world (the vocabulary: the same words for every image) are
computed once (`Pipeline.attention_maps`, the model's read-out); a present shape class's word "hits" when its map's
maximum lies inside that shape's ground-truth mask. Shapes are the thing classes (backgrounds fill the frame and
colours are not classes). Writes `benchmarks/shapes/results/<model>_pointing.{json,md}`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from promptseg import Pipeline
from promptseg.data.shapes import ShapesDataset

HERE = Path(__file__).parent
SHAPES = ("circle", "square", "triangle")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--n", type=int, default=100)
    args = parser.parse_args()
    data = ShapesDataset(split="test", n=args.n)
    pipe = Pipeline(args.model, "baseline", device="cpu")
    names = list(data.class_names)
    hits = {name: [0, 0] for name in names if name in SHAPES}
    for sample in data:
        maps = pipe.attention_maps(sample.image, names)
        for index in np.unique(sample.label):
            name = names[index] if index < len(names) else None
            if name not in hits:
                continue
            heat = maps.maps[names.index(name)]
            peak = np.unravel_index(int(heat.argmax()), heat.shape)
            hits[name][0] += int(sample.label[peak] == index)
            hits[name][1] += 1
    total = [sum(h[0] for h in hits.values()), sum(h[1] for h in hits.values())]
    rows = {name: {"hits": h, "present": n, "rate": h / n if n else None} for name, (h, n) in hits.items()}
    out = HERE / "results" / f"{args.model}_pointing"
    out.with_suffix(".json").write_text(json.dumps({"n": args.n, "split": "test", "rows": rows,
                                                    "total": {"hits": total[0], "present": total[1],
                                                              "rate": total[0] / total[1]}}, indent=1))
    lines = [f"# {args.model}: pointing game of the word heat maps (test, {args.n} images, every class name offered)",
             "", f"Made by `python benchmarks/shapes/wordmaps_pointing.py --model {args.model} --n {args.n}`.", "",
             "| word | present | peak inside | rate |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {r['present']} | {r['hits']} | {100 * (r['rate'] or 0):.1f}% |" for name, r in rows.items()]
    lines += [f"| **all shapes** | {total[1]} | {total[0]} | {100 * total[0] / total[1]:.1f}% |"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
