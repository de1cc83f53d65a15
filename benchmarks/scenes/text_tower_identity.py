"""Do a CLIP text tower's token states still say which word they are? Layer by layer, for one or more CLIPs.

    python benchmarks/scenes/text_tower_identity.py --clip scenes-clip --clip runs/v1/scenes-clip --out scenes_clip_identity

The measure of `scenes_token_auroc.token_identity` (one token's states across captions, different tokens of one
caption, and how often a state is nearest its own token's mean state) on val captions of the scenes world, without
a diffusion model: it says whether a UNet conditioned on the tower could find a word's place at all.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scenes_token_auroc import token_identity

from promptseg.data.scenes_world import render_sample
from promptseg.models import bundled
from promptseg.training.scenes import load_text_encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", action="append", required=True, help="a bundled CLIP name or a CLIP folder")
    parser.add_argument("--n", type=int, default=60, help="val captions")
    parser.add_argument("--out", default="scenes_clip_identity")
    args = parser.parse_args()
    captions = [render_sample("val", i).caption for i in range(args.n)]
    lines = [f"# Token identity in CLIP text towers ({args.n} scenes val captions)", "",
             f"Made by `python benchmarks/scenes/text_tower_identity.py {' '.join('--clip ' + c for c in args.clip)}`. "
             "Cosine similarities of token states (start and end tokens left out); the last column is how often a "
             "state is nearest (cosine) its own token's mean state.", "",
             "| CLIP | layer | one token across captions | different tokens of one caption | nearest own token |",
             "| --- | --- | --- | --- | --- |"]
    for name in args.clip:
        text_encoder, tokenizer = load_text_encoder(bundled("clip").get(name, name))
        for r in token_identity(text_encoder, tokenizer, captions):
            lines.append(f"| {name} | {r['layer']} | {r['same_token_across_captions']:.3f} | "
                         f"{r['tokens_within_a_caption']:.3f} | {r['nearest_own_token']:.3f} |")
    text = "\n".join(lines) + "\n"
    (Path(__file__).parent / "results" / f"{args.out}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
