"""Train the "shapes-sam" model: a transformers `SamModel` for the shapes world (seeded, resumable).

    python -m promptseg.training.shapes_sam --work runs/shapes-sam-w128 --out zoo/promptseg_models/shapes-sam

Segment Anything's architecture (`SamModel`: a ViT image encoder with a neck, the prompt encoder, the two-way
transformer mask decoder), small: 64x64 images in 4x4 patches (a 16x16 embedding grid), encoder width 96 with 2
layers, prompt encoder and mask decoder width 128; masks come out at 64x64, the image's own size. Saved in the
transformers layout with its `SamProcessor`, so `SamModel.from_pretrained`, `SamProcessor.from_pretrained` and
`promptseg.models.sam.load_sam` read it like `facebook/sam-vit-base`.

One fix that matters: transformers sets the scale of SAM's random-Fourier positional encoding (shared by the image
grid and the prompt coordinates) to hidden_size // 2, harmless for pretrained SAM whose weights overwrite it but, from
scratch, so high a frequency that neighbouring coordinates look unrelated; the first model (scale 48) learnt to
ignore its prompt (0.49 box and point mIoU, the same for both: "the shapes in the image", not "this shape"). Here
the scale is segment-anything's own default, 1, and the encoding is frozen as in the original.

Training: rendered train-split images (never val or test); each item is one visible instance with one prompt, a box
(its bounding box, each side jittered by up to 10% of the box size) or a point (a random pixel of the instance,
label 1), half and half; loss = binary cross-entropy + dice on the single output mask; AdamW, 100 warm-up steps, a
cosine decay. Checkpoint every `--save-every` steps to WORK/state.pt; a killed run resumes to the same weights. At
the end the script measures single-box and single-point mIoU on test instances and writes them beside the weights
(`eval.json`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from promptseg.data.shapes_world import render_sample
from promptseg.training import common

IMAGE_SIZE = 64
MEAN = (0.485, 0.456, 0.406)  # SamImageProcessor's defaults, so the stock processor matches training
STD = (0.229, 0.224, 0.225)


def build_model(seed: int = 0, width: int = 128, pos_scale: float = 1.0, image_size: int = IMAGE_SIZE,
                patch_size: int = 4):
    """A fresh (untrained) `SamModel` of the shapes-sam architecture (scenes-sam: 128 px in 8x8 patches, the same
    16x16 embedding grid)."""
    from transformers import SamConfig, SamMaskDecoderConfig, SamModel, SamPromptEncoderConfig, SamVisionConfig

    torch.manual_seed(seed)
    vision = SamVisionConfig(
        image_size=image_size, patch_size=patch_size, hidden_size=96, num_hidden_layers=2, num_attention_heads=4, mlp_dim=384,
        output_channels=width, num_pos_feats=width // 2, global_attn_indexes=[1], window_size=0,
    )
    prompt = SamPromptEncoderConfig(hidden_size=width, image_size=image_size, patch_size=patch_size,
                                    mask_input_channels=16)
    decoder = SamMaskDecoderConfig(hidden_size=width, num_hidden_layers=2, num_attention_heads=4, mlp_dim=4 * width,
                                   iou_head_hidden_dim=64)
    config = SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(),
                       mask_decoder_config=decoder.to_dict())
    model = SamModel(config)
    # SamVisionConfig fixes the random-Fourier scale of the prompt/image positional encoding at hidden_size // 2
    # (48 here); pretrained SAM overwrites it from its weights, but from scratch frequencies that high make
    # neighbouring coordinates unrelated, and the decoder cannot tell where a prompt is. SAM's own default is 1.
    with torch.no_grad():
        model.shared_image_embedding.positional_embedding.copy_(
            pos_scale * torch.randn(model.shared_image_embedding.positional_embedding.shape))
    model.shared_image_embedding.positional_embedding.requires_grad_(False)
    return model


def make_processor(image_size: int = IMAGE_SIZE):
    """`SamProcessor` for the model: longest edge and padding `image_size`, SAM's normalisation."""
    from transformers import SamImageProcessor, SamProcessor

    image_processor = SamImageProcessor(size={"longest_edge": image_size}, pad_size={"height": image_size,
                                        "width": image_size}, image_mean=list(MEAN), image_std=list(STD))
    return SamProcessor(image_processor=image_processor)


def instances(split: str, n: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Images (n, 64, 64, 3) and every visible instance as (image index, 64x64 bool mask)."""
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    out = []
    for i in range(n):
        sample = render_sample(split, i)
        images[i] = sample.image
        for k in range(len(sample.objects)):
            mask = sample.instance_map == k + 1
            if mask.sum() >= 4:
                out.append((i, mask))
    return images, out


def pixels(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def box_of(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)  # x0, y0, x1, y1


def prompts(masks: list[np.ndarray], rng: np.random.Generator, kind: str | None = None):
    """Per mask a box (jittered) or a point inside it: (boxes (B, 1, 4) or None, points (B, 1, 1, 2) or None)."""
    kind = kind or ("box" if rng.random() < 0.5 else "point")
    if kind == "box":
        boxes = []
        for mask in masks:
            box = box_of(mask)
            size = np.array([box[2] - box[0], box[3] - box[1]] * 2, np.float32)
            boxes.append(box + rng.uniform(-0.1, 0.1, 4).astype(np.float32) * size)
        return torch.from_numpy(np.stack(boxes))[:, None], None
    points = []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        j = int(rng.integers(len(xs)))
        points.append([xs[j] + 0.5, ys[j] + 0.5])
    return None, torch.tensor(points, dtype=torch.float32)[:, None, None]


def predict(model, x: torch.Tensor, boxes, points) -> torch.Tensor:
    """(B, K, H, W) mask logits at the images' own size for K prompts per image: boxes (B, K, 4) or points
    (B, K, 1, 2). The image is encoded once and its K prompts decoded from that one embedding."""
    if boxes is not None:
        out = model(pixel_values=x, input_boxes=boxes, multimask_output=False)
    else:
        labels = torch.ones(points.shape[:3], dtype=torch.long)
        out = model(pixel_values=x, input_points=points, input_labels=labels, multimask_output=False)
    logits = out.pred_masks[:, :, 0]
    if logits.shape[-2:] != x.shape[-2:]:
        b, k = logits.shape[:2]
        logits = F.interpolate(logits.flatten(0, 1)[:, None], size=x.shape[-2:], mode="bilinear",
                               align_corners=False).view(b, k, *x.shape[-2:])
    return logits


def pick_items(items: list, by_image: dict, rng: np.random.Generator, batch: int, per_image: int) -> list[int]:
    """Indices into `items` for one step: `batch` items drawn at random (`per_image` 1), or `batch // per_image`
    images drawn at random and `per_image` of each image's masks (with replacement), image after image."""
    if per_image == 1:
        return rng.integers(0, len(items), batch).tolist()
    images = list(by_image)
    picked = []
    for i in rng.integers(0, len(images), batch // per_image):
        mine = by_image[images[i]]
        picked += [mine[j] for j in rng.integers(0, len(mine), per_image)]
    return picked


def mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy + dice, mean over the batch."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = logits.sigmoid().flatten(1)
    t = target.flatten(1)
    dice = 1 - (2 * (prob * t).sum(1) + 1) / (prob.sum(1) + t.sum(1) + 1)
    return bce + dice.mean()


@torch.no_grad()
def evaluate_prompts(model, split: str = "test", n_images: int = 200, seed: int = 0, data=None) -> dict:
    """Mean IoU of the thresholded mask for one box and for one point per instance of the first n images
    (`data(split, n)` gives the images and masks; this world's `instances` by default)."""
    model.eval()
    images, items = (data or instances)(split, n_images)
    out = {}
    for kind in ("box", "point"):
        rng = np.random.default_rng(seed)
        ious = []
        for start in range(0, len(items), 64):
            chunk = items[start : start + 64]
            masks = [m for _, m in chunk]
            if kind == "box":  # the exact box at test time
                boxes, points = torch.from_numpy(np.stack([box_of(m) for m in masks]))[:, None], None
            else:
                boxes, points = prompts(masks, rng, "point")
            pred = predict(model, pixels(images[[i for i, _ in chunk]]), boxes, points)[:, 0] > 0
            truth = torch.from_numpy(np.stack(masks))
            inter = (pred & truth).flatten(1).sum(1).float()
            union = (pred | truth).flatten(1).sum(1).float()
            ious += (inter / union.clamp_min(1)).tolist()
        out[f"{kind}_miou"] = float(np.mean(ious))
    out["n_instances"] = len(items)
    return out


def train(args: argparse.Namespace, world=None) -> None:
    """The training loop; `world` (scenes-sam) gives the image size, patch size, training masks, test masks."""
    per_image = args.masks_per_image
    if per_image < 1 or args.batch % per_image:
        raise ValueError(f"--masks-per-image {per_image} must be >= 1 and divide --batch {args.batch}")
    size, patch, train_data, test_data = world or (IMAGE_SIZE, 4, instances, instances)
    model = build_model(args.seed, args.width, args.pos_scale, size, patch)
    work, opt, rng, state = common.begin(args, model, weight_decay=0.01)
    t0 = time.time()
    images, items = train_data("train", args.n_train)
    by_image = {}
    for j, (i, _) in enumerate(items):
        by_image.setdefault(i, []).append(j)
    print(f"rendered {args.n_train} training images ({len(items)} instances) in {time.time() - t0:.0f}s", flush=True)
    model.train()
    t0, running = time.time(), None
    while state["step"] < args.steps:
        step = state["step"]
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + np.cos(np.pi * step / args.steps))
        pick = pick_items(items, by_image, rng, args.batch, per_image)
        masks = [items[j][1] for j in pick]
        boxes, points = prompts(masks, rng)
        shape = (len(pick) // per_image, per_image)  # (images, prompts per image)
        boxes = None if boxes is None else boxes.view(*shape, 4)
        points = None if points is None else points.view(*shape, 1, 2)
        logits = predict(model, pixels(images[[items[j][0] for j in pick[::per_image]]]), boxes, points)
        target = torch.from_numpy(np.stack(masks)).float().view(*shape, *masks[0].shape)
        value = common.optimiser_step(model, opt, mask_loss(logits.flatten(0, 1), target.flatten(0, 1)))
        running = value if running is None else 0.98 * running + 0.02 * value
        t0 = common.step_done(work, model, opt, rng, state, args, running, t0)
    scores = evaluate_prompts(model, n_images=args.n_eval, data=test_data) if args.n_eval else None
    common.export(Path(args.out), model, make_processor(size), state, scores)


def add_sam_arguments(parser: argparse.ArgumentParser) -> None:
    """The SAM scripts' own arguments (beside `common.add_arguments`)."""
    parser.add_argument("--n-eval", type=int, default=200, help="test images scored at the end (0: skip)")
    parser.add_argument("--width", type=int, default=128, help="prompt encoder / mask decoder width")
    parser.add_argument("--pos-scale", type=float, default=1.0, help="random Fourier positional encoding scale")
    parser.add_argument("--masks-per-image", type=int, default=1,
                        help="masks decoded per image encoding (SAM's recipe: several; 1: each item its own image, "
                             "the bundled shapes-sam's recipe); --batch counts masks and must be a multiple")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_arguments(parser, work="runs/shapes-sam-w128", out="zoo/promptseg_models/shapes-sam", n_train=10000,
                             batch=32, steps=4000, lr=5e-4)
    add_sam_arguments(parser)
    train(parser.parse_args(argv))


if __name__ == "__main__":
    main()
