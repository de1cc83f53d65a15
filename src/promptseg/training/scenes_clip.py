"""Train the bundled "scenes-clip" model: a transformers `CLIPModel` for the scenes world (seeded, resumable).

    python -m promptseg.training.scenes_clip --work runs/scenes-clip --out zoo/promptseg_models/scenes-clip

CLIP's architecture, small (a ViT image tower on 128x128 images in 16x16 patches, width 128, 4 layers; a causal
text tower of width 128, 3 layers, 77 positions) and CLIP's real tokenizer (49,408 byte-pair tokens, from the
vocabulary file in the `open-clip-torch` wheel: `promptseg.models.tokenizers.build_clip_tokenizer`). Its text tower
is, frozen, the text encoder of the `scenes` diffusion model: Stable Diffusion's recipe (a contrastively trained
CLIP text tower, never trained with the UNet). Weights are stored in fp16 (the package-size budget), loaded in
the caller's dtype.

Training is contrastive on rendered train-split images and texts about them: the image's caption as people would
write it (`scenes_world.caption_parts`: synonyms, colours and things sometimes left out), one class ("a photo of
a red car", "a photo of the sea"), or a few. A text true of several images of the batch is a positive for each
of them (`shapes_clip.multi_positive_loss`), which is what makes zero-shot presence work. A second term keeps
each word token's final state nearest its own token (`token_identity_loss`), the property of SD's CLIP that lets
a UNet's cross-attention say where a word is.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from promptseg.data.scenes_world import SIZE, STUFF, caption_parts, pick_word
from promptseg.models.tokenizers import build_clip_tokenizer
from promptseg.training import common
from promptseg.training.shapes_clip import clip_pixels, make_processor, multi_positive_loss

TEXT_LENGTH = 77
TEMPLATES = ("{}", "a photo of {}", "an image of {}", "a picture of {}")


def build_model(seed: int = 0):
    """A fresh (untrained) tokenizer and `CLIPModel` of the scenes-clip architecture."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(model_max_length=TEXT_LENGTH)
    text = dict(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=TEXT_LENGTH, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(image_size=SIZE, patch_size=16, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                  num_attention_heads=4)
    return tokenizer, CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=128))


def _article(word: str, stuff: bool) -> str:
    if stuff:
        return word if word in ("grass", "sand", "snow", "asphalt") or word.endswith("s") else f"the {word}"
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def describe(sample, rng: np.random.Generator):
    """One text about a scene and what it claims: ([(class, colour or None)], [stuff])."""
    visible = sample.visible
    kind = rng.random()
    if kind < 0.35 or not visible:
        return caption_parts(sample, rng)
    if kind < 0.55:  # one stuff region
        name = sample.stuff[int(rng.integers(len(sample.stuff)))]
        text = _article(pick_word(name, rng), True)
        claims, stuff = [], [name]
    elif kind < 0.85:  # one thing, maybe with its colour
        obj = visible[int(rng.integers(len(visible)))]
        colour = obj.colour if obj.colour and rng.random() < 0.5 else None
        word = pick_word(obj.cls, rng)
        text = _article(f"{colour} {word}" if colour else word, False)
        claims, stuff = [(obj.cls, colour)], []
    else:  # two or three classes
        names = sorted({o.cls for o in visible} | set(sample.stuff))
        picked = [names[i] for i in rng.permutation(len(names))[: int(rng.integers(2, 4))]]
        text = " and ".join(_article(pick_word(n, rng), n in STUFF) for n in picked)
        claims, stuff = [(n, None) for n in picked if n not in STUFF], [n for n in picked if n in STUFF]
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    return template.format(text), (claims, stuff)


def token_identity_loss(states: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, embedding: torch.Tensor,
                        special: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Each word token's final state must name its own token: cross-entropy of its cosine similarity to the token
    embeddings of the batch's vocabulary (start, end and padding tokens excluded).

    Why: trained on the contrastive loss alone, a small text tower washes its tokens' identity out in its first
    layer (measured: a final state was nearest its own token's mean state 11% of the time, 100% before the first
    layer), so a UNet conditioned on it cannot tell where a word is (token AUROC 0.55). Stable Diffusion's CLIP-L
    keeps it (that is what DAAM and every attention-reading method rely on); this term gives the small tower that
    property without changing its architecture or the contrastive objective.
    """
    keep = mask.bool() & ~torch.isin(ids, special)
    vocab = ids[keep].unique()  # sorted
    logits = F.normalize(states[keep], dim=-1) @ F.normalize(embedding[vocab], dim=-1).T / temperature
    return F.cross_entropy(logits, torch.searchsorted(vocab, ids[keep]))


def is_true_of(claims, sample) -> bool:
    """Whether a text's claims hold in a scene."""
    things, stuff = claims
    if any(s not in sample.stuff for s in stuff):
        return False
    return all(any(o.cls == cls and (colour is None or o.colour == colour) for o in sample.visible)
               for cls, colour in things)


def train(args: argparse.Namespace) -> None:
    tokenizer, model = build_model(args.seed)
    work, opt, rng, state = common.begin(args, model, weight_decay=0.05)

    from promptseg.training.scenes import training_set

    images, samples = training_set(Path(args.render_cache or work), args.n_train)

    special = torch.tensor([tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id])
    model.train()
    t0, running = time.time(), None
    while state["step"] < args.steps:
        step = state["step"]
        common.set_warm_cosine_lr(opt, step, args.lr, args.steps)
        idx = rng.integers(0, args.n_train, args.batch)
        texts, claims = zip(*(describe(samples[i], rng) for i in idx))
        truth = torch.tensor([[is_true_of(c, samples[i]) for c in claims] for i in idx])
        tokens = tokenizer(list(texts), padding="longest", max_length=TEXT_LENGTH, truncation=True,
                           return_tensors="pt")
        out = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                    pixel_values=clip_pixels(images[idx], rng.random(len(idx)) < 0.5))
        loss = multi_positive_loss(out.logits_per_image, truth)
        if args.identity_weight:
            loss = loss + args.identity_weight * token_identity_loss(
                out.text_model_output.last_hidden_state, tokens.input_ids, tokens.attention_mask,
                model.text_model.embeddings.token_embedding.weight, special)
        value = common.optimiser_step(model, opt, loss)
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        running = value if running is None else 0.98 * running + 0.02 * value
        t0 = common.step_done(work, model, opt, rng, state, args, running, t0)
    common.export(Path(args.out), model.half(), make_processor(tokenizer, SIZE), state)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_arguments(parser, work="runs/scenes-clip", out="zoo/promptseg_models/scenes-clip", n_train=20000,
                             batch=128, steps=2500, lr=5e-4)
    parser.add_argument("--render-cache", default=None,
                        help="folder of the rendered training set's cache (WORK by default; training.scenes' WORK shares it)")
    parser.add_argument("--identity-weight", type=float, default=0.5,
                        help="weight of the token-identity term (`token_identity_loss`; 0: the contrastive loss alone)")
    train(parser.parse_args(argv))


if __name__ == "__main__":
    main()
