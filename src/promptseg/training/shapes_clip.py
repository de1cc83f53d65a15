"""Train the bundled "shapes-clip" model: a transformers `CLIPModel` for the shapes world (seeded, resumable).

    python -m promptseg.training.shapes_clip --work runs/shapes-clip --out zoo/promptseg_models/shapes-clip

The architecture is CLIP's own (`CLIPModel`: a ViT image tower, a causal transformer text tower, linear
projections, a learnt temperature), small: 64x64 images in 8x8 patches, width 128, 4 vision and 2 text layers.
It is saved in the transformers folder layout (safetensors, `CLIPProcessor` files), so `CLIPModel.from_pretrained`,
`CLIPProcessor.from_pretrained` and `promptseg.models.clip.load_clip` read it like `openai/clip-vit-large-patch14`.

Training is contrastive on rendered train-split images (never val or test) and texts about them. Each image gets
one text: its full caption, or a part of it (one shape, with or without its colour; the background alone; a few of
its objects), in a template ("a photo of ...", "an image of ...", or bare). A part of a caption is true of many
images, so the loss is InfoNCE with *every* true pair as a positive (soft targets spread over the images a text is
true of, and over the texts true of an image): with one positive per row, "a photo of a circle" would be taught to
be unlike every other image with a circle. That is also what makes zero-shot presence work: "a photo of a circle"
scores high on exactly the images that show one. Checkpoint every `--save-every` steps to WORK/state.pt; a killed
run resumes to the same weights.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from promptseg.data.shapes_world import VOCABULARY, render_sample
from promptseg.models.tokenizers import build_word_tokenizer
from promptseg.training import common

TEXT_LENGTH = 24
IMAGE_SIZE = 64
TEMPLATES = ("{}", "a photo of {}", "an image of {}")
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def build_model(seed: int = 0):
    """A fresh (untrained) tokenizer and `CLIPModel` of the shapes-clip architecture."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer(VOCABULARY, model_max_length=TEXT_LENGTH)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    text = dict(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=TEXT_LENGTH, bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"),
        eos_token_id=eos, pad_token_id=eos,
    )
    vision = dict(
        image_size=IMAGE_SIZE, patch_size=8, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4,
    )
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=128)
    return tokenizer, CLIPModel(config)


def make_processor(tokenizer, image_size: int = IMAGE_SIZE):
    """`CLIPProcessor` for the model: resize/crop to `image_size`, normalise with the statistics used in training."""
    from transformers import CLIPImageProcessor, CLIPProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        image_mean=list(MEAN), image_std=list(STD),
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _scene(index: int) -> tuple[np.ndarray, list[tuple[str, str]], str]:
    sample = render_sample("train", index)
    visible = [(o.shape, o.colour) for k, o in enumerate(sample.objects) if (sample.instance_map == k + 1).any()]
    return sample.image, visible, sample.background


def describe(objects: list[tuple[str, str]], background: str, rng: np.random.Generator):
    """One text about a scene and what it requires: ([(shape, colour or None)], background or None)."""
    kind = rng.random()
    if kind < 0.3:  # the full caption (colours sometimes dropped)
        picked, bg = list(objects), background
    elif kind < 0.75:  # one object
        picked, bg = [objects[int(rng.integers(len(objects)))]] if objects else [], None
    elif kind < 0.9:  # the background alone
        picked, bg = [], background
    else:  # some objects, maybe the background
        keep = rng.random(len(objects)) < 0.5
        picked, bg = [o for o, k in zip(objects, keep) if k], background if rng.random() < 0.5 else None
    if not picked and bg is None:
        bg = background
    needs = [(shape, colour if rng.random() < 0.6 else None) for shape, colour in picked]
    words = " and ".join("a " + (f"{c} {s}" if c else s) for s, c in needs)
    if bg is not None:
        words = f"{words} on {bg}" if words else bg
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    return template.format(words), (needs, bg)


def is_true_of(needs, scene) -> bool:
    """Whether a text's requirements hold in a scene (objects, background)."""
    required, bg = needs
    objects, background = scene
    if bg is not None and bg != background:
        return False
    return all(any(s == shape and (c is None or c == colour) for shape, colour in objects) for s, c in required)


def clip_pixels(images: np.ndarray, flip: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = torch.where(torch.from_numpy(flip)[:, None, None, None], x.flip(-1), x)
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    return (x - mean) / std


def multi_positive_loss(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with every true pair a positive: soft targets spread evenly over the true entries.

    Args:
        logits (`torch.Tensor`): (B, B) image-by-text similarities times the temperature.
        truth (`torch.Tensor`): (B, B) bool, whether text j is true of image i (the diagonal always is).
    """
    t = truth.float()
    image_to_text = -(t / t.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    text_to_image = -(t / t.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
    return (image_to_text + text_to_image) / 2


def train(args: argparse.Namespace) -> None:
    tokenizer, model = build_model(args.seed)
    work, opt, rng, state = common.begin(args, model, weight_decay=0.05)

    t0 = time.time()
    scenes, images = [], np.empty((args.n_train, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    for i in range(args.n_train):
        images[i], objects, background = _scene(i)
        scenes.append((objects, background))
    print(f"rendered {args.n_train} training images in {time.time() - t0:.0f}s", flush=True)

    model.train()
    t0, running = time.time(), None
    while state["step"] < args.steps:
        step = state["step"]
        common.set_warm_cosine_lr(opt, step, args.lr, args.steps)
        idx = rng.integers(0, args.n_train, args.batch)
        texts, needs = zip(*(describe(*scenes[i], rng) for i in idx))
        truth = torch.tensor([[is_true_of(n, scenes[i]) for n in needs] for i in idx])
        tokens = tokenizer(list(texts), padding="max_length", max_length=TEXT_LENGTH, return_tensors="pt")
        out = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                    pixel_values=clip_pixels(images[idx], rng.random(len(idx)) < 0.5))
        value = common.optimiser_step(model, opt, multi_positive_loss(out.logits_per_image, truth))
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        running = value if running is None else 0.98 * running + 0.02 * value
        t0 = common.step_done(work, model, opt, rng, state, args, running, t0)
    common.export(Path(args.out), model, make_processor(tokenizer), state)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_arguments(parser, work="runs/shapes-clip", out="zoo/promptseg_models/shapes-clip", n_train=20000,
                             batch=128, steps=3000, lr=5e-4)
    train(parser.parse_args(argv))


if __name__ == "__main__":
    main()

