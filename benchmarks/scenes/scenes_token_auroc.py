"""Do class words' cross-attention maps point at their pixels on the scenes model? Per-class token AUROC.

    python benchmarks/scenes/scenes_token_auroc.py --n 100 --model scenes

For each val image the UNet is conditioned on the image's complete caption at one timestep. Each class named in
it (things and stuff; multi-token names such as "hot air balloon" read as the mean of their tokens' maps) is
scored by the AUROC of separating that class's pixels from the rest with the word's map (mean over heads and
layers of a grid, upsampled; "all" averages the grids; "all, words renormalised" divides each pixel's attention
by its sum over the caption's words first, so a sink that takes mass evenly changes nothing there). 0.5 is chance.
The issue's bar is the median over classes of each class's mean AUROC. Also written: where the attention goes
(start token, class words, other words, end and padding tokens), which says whether a sink token takes the
caption, and whether each layer of the text tower keeps its tokens' identity (`token_identity`). Output: benchmarks/scenes/results/<out>.md.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from promptseg import load_backbone
from promptseg.data.scenes_world import CLASS_NAMES, STUFF, plural, render_sample
from promptseg.diffusion.attention import attention_pass
from promptseg.diffusion.capture import attention_grids, select_layers
from promptseg.diffusion.encode import prepare_pixels
from promptseg.diffusion.noise import noised_latents
from promptseg.diffusion.readout import resize_maps, tokens_to_maps
from promptseg.eval.metrics import auroc
from promptseg.text import span_positions


def class_spans(caption: str, present: list[str]) -> dict[str, tuple[int, int]]:
    """Character span of the mention that names each present class (its name or plural): a thing's first mention,
    a stuff class's last. Captions name stuff in their closing list ("... with sky, water and grass"); an earlier
    "sky" or "water" is part of a thing's phrase ("three birds in the sky"), a word about the bird's place."""
    spans = {}
    for name in present:
        for word in (plural(name), name):
            matches = list(re.finditer(rf"\b{re.escape(word)}\b", caption))
            if matches:
                spans[name] = (matches[-1] if name in STUFF else matches[0]).span()
                break
    return spans


def token_identity(text_encoder, tokenizer, captions: list[str]) -> list[dict]:
    """Does each layer's token state still say which word it is? Per hidden layer of the text tower (0 = token +
    position embedding, last = after the final layer norm): the mean cosine of one token's states across captions,
    the mean cosine between different tokens of one caption, and how often a state is nearest (cosine) to its own
    token's mean state. A tower whose later states are nearest their caption, not their word, leaves a UNet no way
    to read a word's place from its token."""
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt")
    with torch.no_grad():
        out = text_encoder(ids.input_ids, output_hidden_states=True)
    lengths = ids.attention_mask.sum(1).tolist()
    rows = []
    for li, h in enumerate([*out.hidden_states, out.last_hidden_state]):
        h = torch.nn.functional.normalize(h.float(), dim=-1)
        states = defaultdict(list)
        within = []
        for i, n in enumerate(lengths):
            words = h[i, 1:n - 1]  # no start or end token
            for j, t in enumerate(ids.input_ids[i, 1:n - 1].tolist()):
                states[t].append(words[j])
            if len(words) > 1:
                sim = words @ words.T
                within.append(float((sim.sum() - sim.diagonal().sum()) / (len(words) * (len(words) - 1))))
        kept = {t: torch.stack(v) for t, v in states.items() if len(v) >= 3}
        across = [float(((v @ v.T).sum() - len(v)) / (len(v) * (len(v) - 1))) for v in kept.values()]
        tokens = list(kept)
        centres = torch.nn.functional.normalize(torch.stack([kept[t].mean(0) for t in tokens]), dim=-1)
        hits = [int(tokens[int((v @ centres.T).argmax())] == t) for t in tokens for v in kept[t]]
        name = "final (after layer norm)" if li == len(out.hidden_states) else str(li)
        rows.append({"layer": name, "same_token_across_captions": float(np.mean(across)),
                     "tokens_within_a_caption": float(np.mean(within)), "nearest_own_token": float(np.mean(hits))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--model", default="scenes")
    parser.add_argument("--timestep", type=int, default=300)
    parser.add_argument("--out", default="scenes_token_auroc")
    args = parser.parse_args()
    backbone = load_backbone(args.model, device="cpu")
    grids = attention_grids(backbone.unet, backbone.latent_size, "cross")
    layers = select_layers(backbone.unet, backbone.latent_size, cross_grids=grids)
    per_class = defaultdict(list)  # (grid or "all", class) -> AUROCs
    mass = defaultdict(list)  # token kind -> share of attention
    for index in range(args.n):
        sample = render_sample("val", index)
        caption = sample.caption
        present = [CLASS_NAMES[c] for c in np.unique(sample.class_map)]
        spans = class_spans(caption, present)
        positions = dict(zip(spans, span_positions(backbone.tokenizer, caption, list(spans.values()))))
        n_tokens = len(backbone.tokenizer(caption).input_ids)
        prepared = prepare_pixels(backbone, sample.image)
        noisy, _ = noised_latents(backbone, prepared.latents, args.timestep, seed=index)
        with torch.no_grad():
            store = attention_pass(backbone, noisy, args.timestep, backbone.encode_text(caption), layers)
        size = sample.class_map.shape
        combined = words_only = 0
        for grid in grids:
            cross = store.mean("cross", grid)  # (1, HW, T)
            share = cross[0].mean(0)
            words = sorted(p for ps in positions.values() for p in ps)
            mass["start token"].append(float(share[0]))
            mass["class-word tokens"].append(float(share[words].sum()))
            mass["other caption tokens"].append(float(share[1:n_tokens - 1].sum() - share[words].sum()))
            mass["end + padding tokens"].append(float(share[n_tokens - 1:].sum()))
            maps = resize_maps(tokens_to_maps(cross, grid), size)[0]
            combined = combined + maps / len(grids)
            # the same maps with each pixel's attention renormalised over the caption's words (no start, end or
            # padding token): does the sink only take mass, or does it also bend where a word's mass goes?
            renormalised = cross.clone()
            renormalised[..., 1:n_tokens - 1] /= renormalised[..., 1:n_tokens - 1].sum(-1, keepdim=True)
            words_only = words_only + resize_maps(tokens_to_maps(renormalised, grid), size)[0] / len(grids)
            for name, ps in positions.items():
                truth = sample.class_map == CLASS_NAMES.index(name)
                per_class[(f"{grid[0]}x{grid[1]}", name)].append(auroc(maps[ps].mean(0).numpy().ravel(), truth.ravel()))
        for name, ps in positions.items():
            truth = sample.class_map == CLASS_NAMES.index(name)
            per_class[("all", name)].append(auroc(combined[ps].mean(0).numpy().ravel(), truth.ravel()))
            per_class[("all, words renormalised", name)].append(auroc(words_only[ps].mean(0).numpy().ravel(),
                                                                      truth.ravel()))
    grid_names = [f"{g[0]}x{g[1]}" for g in grids] + ["all", "all, words renormalised"]
    lines = [f"# Per-class token AUROC of cross-attention, model `{args.model}`, {args.n} val images, "
             f"t={args.timestep}", "", "| class | tokens | " + " | ".join(grid_names) + " | n |",
             "| --- | --- | " + " | ".join("---" for _ in grid_names) + " | --- |"]
    for name in CLASS_NAMES:
        if ("all", name) not in per_class:
            continue
        n_pieces = len(backbone.tokenizer.tokenize(name))
        cells = [f"{np.nanmean(per_class[(g, name)]):.3f}" for g in grid_names]
        lines.append(f"| {name} | {n_pieces} | " + " | ".join(cells) + f" | {len(per_class[('all', name)])} |")
    medians = {g: float(np.median([np.nanmean(v) for (gg, _), v in per_class.items() if gg == g])) for g in grid_names}
    lines += ["", "Median over classes of the per-class mean AUROC: "
              + ", ".join(f"{g} {m:.3f}" for g, m in medians.items()), "",
              "| where cross-attention goes (mean over pixels, heads, layers, grids, images) | share |", "| --- | --- |"]
    lines += [f"| {kind} | {np.mean(v):.3f} |" for kind, v in mass.items()]
    captions = [render_sample("val", i).caption for i in range(max(args.n, 60))]
    lines += ["", f"Token identity in the text tower ({len(captions)} val captions; cosine similarities of token states):",
              "", "| layer | one token across captions | different tokens of one caption | state nearest its own "
              "token's mean |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['layer']} | {r['same_token_across_captions']:.3f} | {r['tokens_within_a_caption']:.3f} | "
              f"{r['nearest_own_token']:.3f} |" for r in token_identity(backbone.text_encoder, backbone.tokenizer, captions)]
    text = "\n".join(lines) + "\n"
    out = Path(__file__).parent / "results" / f"{args.out}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
