"""Train DPSeg's image encoder and decoder (text and visual-prompt encoders frozen), on one process or many.

    promptseg train dpseg --dataset shapes --out zoo/promptseg_models/shapes-dpseg           # the bundled weights
    accelerate launch -m promptseg.cli train dpseg --dataset coco_stuff --root DATA \\
        --clip openai/clip-vit-base-patch16 --model stable-diffusion-v1-5/stable-diffusion-v1-5 --out dpseg-b16

The paper's recipe: pixel-wise binary cross-entropy over every offered class, AdamW at lr 2e-4, COCO-Stuff's 171
classes, 80k iterations of batch 4. Each step's images are drawn from (seed, step) alone, so a run killed at any
point resumes from WORK (`accelerate`'s saved state: weights, optimiser, random states) to the same weights, and
every process takes its own slice of the global batch. Classes named in `--hold-out` are never offered and their
pixels count for nothing (neither positive nor negative, as SPNet and ZS3Net train): the weights must find them from
their prompts alone (the open-vocabulary split; `NetConfig.trained_classes` records which were seen). On shapes the
four colour words are offered as extra training classes (`--no-extra-classes` to train on the class names alone;
with `--held-out-as-negatives` as well, that is our first recipe).

Ours, off by default (the paper's recipe above is the default): `--dice W` adds W x a soft Dice loss over the
classes present in each image (a class of a few pixels weighs as much as the sky, which the pixel-averaged BCE does
not give it); `--zoom Z` crops 1/z of the short side, z uniform in [1, Z] (scale augmentation, so small things are
also seen large); `--init WEIGHTS` starts from trained weights built with the same settings (fine-tuning; the
starting weights are recorded in the new config).

Visual prompts of the training classes are generated once by `--model` (cached on disk; with several processes
the main one generates and the others read the cache).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from promptseg.models.dpseg.decoder import DecoderConfig
from promptseg.models.dpseg.network import DPSegNet, NetConfig
from promptseg.text import parse_labels

DEFAULTS = {  # per dataset: CLIP, diffusion model, templates, held-out classes, steps, batch
    "shapes": {"clip": "shapes-clip", "model": "shapes", "templates": ["a photo of a {}", "an image of a {}", "a {}"],
               "hold_out": ["sky", "triangle"], "steps": 3000, "batch": 8},
    # scenes: three things (one multi-token) and one stuff class held out; the world's own class names
    "scenes": {"clip": "scenes-clip", "model": "scenes", "templates": ["a photo of a {}", "an image of a {}", "a {}"],
               "hold_out": ["sailboat", "kite", "snowman", "sand"], "steps": 3000, "batch": 8},
    "coco_stuff": {"clip": "openai/clip-vit-base-patch16", "model": "stable-diffusion-v1-5/stable-diffusion-v1-5",
                   "templates": ["a photo of a {}.", "a photo of the {}.", "an image of a {}."], "hold_out": [],
                   "steps": 80000, "batch": 4},
}


def training_data(name: str, root: str | None, n_train: int, extra_classes: bool = True):
    """The training split of `name`: shapes (rendered train split, `n_train` images, with its colour words as extra
    classes unless `extra_classes` is False), scenes (rendered train split) or coco_stuff (mmseg layout)."""
    if name == "shapes":
        if extra_classes:
            return ShapesWithColours(n_train)
        from promptseg.data.shapes import ShapesDataset

        return ShapesDataset(split="train", n=n_train)
    if name == "scenes":
        from promptseg.data.shapes import ScenesDataset

        return ScenesDataset(split="train", n=n_train)
    if name == "coco_stuff":
        if root is None:
            raise ValueError("dataset 'coco_stuff' needs --root, the folder holding images/ and annotations/")
        from promptseg.data.openvocab import FolderSegDataset

        return FolderSegDataset("coco_stuff", root, split="train2017")
    raise ValueError(f"unknown training dataset {name!r}; choose from {sorted(DEFAULTS)}")


def training_pair(image: Image.Image, arrays: list[np.ndarray], size: int, out: int, rng: np.random.Generator,
                  zoom: float = 1.0):
    """A random square crop (side = the short side, divided by a zoom drawn uniformly from [1, `zoom`] when `zoom`
    > 1), a random horizontal flip, the image resized to `size` and each HxW array (label, masks; nearest) to `out`:
    (PIL image, [(out, out) arrays])."""
    w, h = image.size
    side = min(w, h)
    if zoom > 1:  # drawn only then, so that runs without zoom keep their random stream
        side = max(1, int(round(side / rng.uniform(1.0, zoom))))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    image = image.crop((left, top, left + side, top + side))
    arrays = [a[top:top + side, left:left + side] for a in arrays]
    if rng.random() < 0.5:
        image, arrays = image.transpose(Image.FLIP_LEFT_RIGHT), [a[:, ::-1] for a in arrays]
    if image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    resized = []
    for a in arrays:
        a = np.ascontiguousarray(a)
        if a.shape != (out, out):
            a = np.asarray(Image.fromarray(a.astype(np.int32)).resize((out, out), Image.NEAREST)).astype(a.dtype)
        resized.append(a)
    return image, resized


def targets_for(label: np.ndarray, extra: np.ndarray, class_ids: list[int], held_out_ids: list[int],
                ignore_index: int) -> tuple[np.ndarray, np.ndarray]:
    """((K, H, W) float targets, (H, W) bool valid) of one image: class k is `label == class_ids[k]`, then one
    target per extra mask (E, H, W). Pixels of held-out classes and `ignore_index` pixels are not valid: an
    unseen class is neither positive nor negative in training (SPNet's and ZS3Net's inductive protocol)."""
    base = [label == c for c in class_ids]
    target = np.stack(base + list(extra)).astype(np.float32)
    valid = (label != ignore_index) & ~np.isin(label, held_out_ids)
    return target, valid


def bce_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Pixel-wise binary cross-entropy of (B, K, H, W) logits against (B, K, H, W) targets, averaged over the
    (B, H, W) valid pixels."""
    valid = valid[:, None].expand_as(target).float()
    loss = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    return (loss * valid).sum() / valid.sum().clamp(min=1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Soft Dice loss, 1 - 2|P T| / (|P| + |T|) over the valid pixels, averaged over the (image, class) pairs whose
    class is in the image (ours, beside the BCE): each present class weighs the same however few its pixels, where the
    BCE's pixel average lets a class of 0.5% of the image be ignored. 0 when no class is present anywhere."""
    valid = valid[:, None].expand_as(target).float()
    prob = torch.sigmoid(logits.float()) * valid
    target = target.float() * valid
    inter, total = (prob * target).flatten(2).sum(-1), (prob + target).flatten(2).sum(-1)
    present = target.flatten(2).sum(-1) > 0
    if not present.any():
        return logits.sum() * 0.0
    dice = 1 - (2 * inter + 1) / (total + 1)
    return dice[present].mean()


class ShapesWithColours:
    """The shapes train split with the four colour words as extra training classes (ours): `extra(i)` gives
    (4, H, W) masks, the pixels of the shapes of each colour. Five class names alone let a decoder learn each
    class's cost pattern by heart; more names, read through the same prompts, push it to follow the prompt."""

    def __init__(self, n: int):
        from promptseg.data.shapes import ShapesDataset
        from promptseg.data.shapes_world import COLOURS

        self.base = ShapesDataset(split="train", n=n)
        self.class_names, self.ignore_index = self.base.class_names, self.base.ignore_index
        self.extra_names = list(COLOURS)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        return self.base[index]

    def extra(self, index: int) -> np.ndarray:
        from promptseg.data.shapes_world import render_sample

        sample = render_sample("train", index, self.base.size)
        masks = np.zeros((len(self.extra_names),) + sample.instance_map.shape, bool)
        for i, obj in enumerate(sample.objects):
            masks[self.extra_names.index(obj.colour)] |= sample.instance_map == i + 1
        return masks


def initialise(net: DPSegNet, weights: str) -> dict:
    """Load trained DPSeg `weights` into `net` (fine-tuning); returns what to record of them.

    Raises:
        ValueError: the weights were built differently (another CLIP, templates, decoder or held-out classes).
    """
    from safetensors.torch import load_file

    from promptseg.models.dpseg.network import WEIGHTS_NAME, read_net_config, resolve_weights

    folder = resolve_weights(weights)
    old = read_net_config(folder)
    mine = net.config
    for key in ("clip", "templates", "visual_layers", "decoder", "held_out"):
        if getattr(old, key) != getattr(mine, key):
            raise ValueError(f"--init {weights!r} was built with {key} = {getattr(old, key)!r}, this run with "
                             f"{getattr(mine, key)!r}; pass the same settings it was trained with")
    net.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
    return {"weights": str(weights), "training": old.training}


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="shapes", choices=sorted(DEFAULTS))
    parser.add_argument("--root", default=None, help="dataset folder (coco_stuff)")
    parser.add_argument("--clip", default=None, help="CLIP to start from (default per dataset)")
    parser.add_argument("--model", default=None, help="diffusion model that draws the visual prompts")
    parser.add_argument("--templates", default=None, help="JSON list of templates with '{}'")
    parser.add_argument("--hold-out", default=None, help="comma-separated classes never trained on")
    parser.add_argument("--out", required=True, help="folder for the trained weights")
    parser.add_argument("--work", default=None, help="checkpoint folder (default OUT/../<name>-work); resumes")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None, help="images per step over all processes")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--encoder-lr-scale", type=float, default=0.1, help="image encoder lr = lr x this")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--n-train", type=int, default=20000, help="shapes: train-split images to draw from")
    parser.add_argument("--prompt-images", type=int, default=4, help="generated images per class and template")
    parser.add_argument("--no-visual-cost", action="store_true", help="ablation: no multi-scale visual cost volumes")
    parser.add_argument("--no-extra-classes", action="store_true",
                        help="shapes: train on the class names only (not also on the colour words)")
    parser.add_argument("--held-out-as-negatives", action="store_true",
                        help="count held-out classes' pixels as negatives of every offered class (our first recipe)")
    parser.add_argument("--dice", type=float, default=0.0,
                        help="weight of a Dice term beside the BCE (ours; 0: the paper's BCE alone)")
    parser.add_argument("--zoom", type=float, default=1.0,
                        help="scale augmentation (ours): crops of 1/z of the short side, z uniform in [1, ZOOM]")
    parser.add_argument("--init", default=None,
                        help="start from these DPSeg weights (a folder or bundled name; fine-tuning) instead of CLIP")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--cache-dir", default=None, help="visual-prompt cache (default ~/.cache/promptseg)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--stop-after", type=int, default=None,
                        help="stop after this many steps in this run, saving the state (for time-limited jobs; resume "
                             "by running the same command again)")


def train(args: argparse.Namespace) -> Path:
    """Run (or resume) a training; returns the output folder. See the module docstring."""
    try:
        from accelerate import Accelerator
    except ImportError as err:
        raise ImportError("promptseg train needs accelerate: pip install 'promptseg[train]'") from err

    from promptseg.methods.dpseg.bank import PromptBank
    from promptseg.methods.dpseg.prompts import VisualPromptCache
    from promptseg.models import load_backbone
    from promptseg.models.clip import load_clip

    if args.threads:
        torch.set_num_threads(args.threads)
    defaults = DEFAULTS[args.dataset]
    steps = args.steps or defaults["steps"]
    batch = args.batch or defaults["batch"]
    templates = json.loads(args.templates) if args.templates else defaults["templates"]
    hold_out = [c.strip() for c in args.hold_out.split(",") if c.strip()] if args.hold_out is not None else defaults["hold_out"]
    out = Path(args.out)
    work = Path(args.work) if args.work else out.parent / f"{out.name}-work"
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(args.seed)
    if args.zoom < 1:
        raise ValueError(f"--zoom {args.zoom} would crop more than the image; give 1 (no zoom) or more")
    if args.dice < 0:
        raise ValueError(f"--dice {args.dice} is a loss weight; give 0 (BCE alone) or more")
    if batch % accelerator.num_processes:
        raise ValueError(f"--batch {batch} must be a multiple of the {accelerator.num_processes} processes")

    data = training_data(args.dataset, args.root, args.n_train, extra_classes=not args.no_extra_classes)
    extra_names = list(getattr(data, "extra_names", []))
    names = [n.split(",")[0].strip() for n in data.class_names]
    unknown = sorted(set(hold_out) - set(names))
    if unknown:
        raise ValueError(f"--hold-out names {unknown} are not classes of {args.dataset}: {names}")
    class_ids = [i for i, n in enumerate(names) if n not in hold_out]
    held_out_ids = [] if args.held_out_as_negatives else [i for i, n in enumerate(names) if n in hold_out]
    labels = parse_labels([data.class_names[i] for i in class_ids] + extra_names)

    clip = load_clip(args.clip or defaults["clip"], device=accelerator.device, dtype=torch.float32)
    decoder = DecoderConfig(prompt_channels=len(templates), feature_dim=int(clip.model.config.projection_dim),
                            layer_dim=int(clip.model.config.vision_config.hidden_size),
                            visual_cost=not args.no_visual_cost)
    config = NetConfig(clip=clip.name, templates=templates, decoder=decoder,
                       trained_classes=[lb.name for lb in labels[:len(class_ids)]],
                       held_out=hold_out, training={
                           "dataset": args.dataset, "steps": steps, "batch": batch, "lr": args.lr, "dice": args.dice,
                           "zoom": args.zoom,
                           "encoder_lr_scale": args.encoder_lr_scale, "seed": args.seed,
                           "diffusion_model": args.model or defaults["model"], "prompt_images": args.prompt_images,
                           "extra_classes": extra_names,
                           "held_out_pixels": "negatives" if args.held_out_as_negatives else "ignored"})
    net = DPSegNet(clip.model, config)
    if args.init:
        config.training["init"] = initialise(net, args.init)
    net = net.to(accelerator.device)

    cache_kwargs = {"root": args.cache_dir, "images": args.prompt_images, "seed": args.seed}
    with accelerator.main_process_first():  # the main process draws the visual prompts; the others read them
        backbone = load_backbone(args.model or defaults["model"], device=accelerator.device)
        bank = PromptBank(clip, templates, config.visual_layers, VisualPromptCache(backbone, **cache_kwargs))
        prompts = bank.features([lb.synonyms for lb in labels], "dual")
    del backbone, bank

    encoder = [p for n, p in net.named_parameters() if not n.startswith("decoder.")]
    opt = torch.optim.AdamW([{"params": net.decoder.parameters(), "lr": args.lr},
                             {"params": encoder, "lr": args.lr * args.encoder_lr_scale}], weight_decay=1e-4)
    base_lrs = [g["lr"] for g in opt.param_groups]
    net, opt = accelerator.prepare(net, opt)
    state = {"step": 0, "log": []}
    if (work / "progress.json").exists():
        accelerator.load_state(str(work / "state"))
        state = json.loads((work / "progress.json").read_text())
        accelerator.print(f"resumed from {work} at step {state['step']}")

    size = clip.image_size
    per_process = batch // accelerator.num_processes
    running, t0 = 0.0, time.perf_counter()
    net.train()
    stop = steps if args.stop_after is None else min(steps, state["step"] + args.stop_after)
    while state["step"] < stop:
        step = state["step"]
        rng = np.random.default_rng([args.seed, step])
        picks = rng.integers(0, len(data), size=batch)
        mine = picks[accelerator.process_index * per_process:(accelerator.process_index + 1) * per_process]
        images, targets, valids = [], [], []
        for i in mine:
            sample = data[int(i)]
            extra = data.extra(int(i)) if extra_names else np.zeros((0,) + sample.label.shape, bool)
            out_side = size  # the decoder's output is 8x the patch grid: the CLIP input side for patch 8
            image, (label, *masks) = training_pair(sample.image, [sample.label, *extra], size, out_side, rng,
                                                          args.zoom)
            target, valid = targets_for(label, np.array(masks).reshape((len(masks),) + label.shape), class_ids,
                                        held_out_ids, data.ignore_index)
            images.append(image)
            targets.append(torch.from_numpy(target))
            valids.append(torch.from_numpy(valid))
        target = torch.stack(targets).to(accelerator.device)
        valid = torch.stack(valids).to(accelerator.device)
        for group, base in zip(opt.param_groups, base_lrs):
            group["lr"] = base * lr_factor(step, args.warmup, steps)
        logits = net(clip.pixel_values(images), prompts)
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        loss = bce_loss(logits, target, valid)
        if args.dice:
            loss = loss + args.dice * dice_loss(logits, target, valid)
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        running += float(loss.detach())
        state["step"] = step + 1
        if state["step"] % 50 == 0:
            state["log"].append({"step": state["step"], "loss": round(running / 50, 5)})
            accelerator.print(f"step {state['step']}/{steps} loss {running / 50:.4f} "
                              f"({(time.perf_counter() - t0) / 50:.2f} s/step)", flush=True)
            running, t0 = 0.0, time.perf_counter()
        if state["step"] % args.save_every == 0 or state["step"] == stop:
            accelerator.wait_for_everyone()
            accelerator.save_state(str(work / "state"))
            if accelerator.is_main_process:
                tmp = work / "progress.tmp"
                tmp.write_text(json.dumps(state))
                os.replace(tmp, work / "progress.json")
    accelerator.wait_for_everyone()
    if state["step"] < steps:
        accelerator.print(f"stopped at step {state['step']} of {steps}; run again to resume")
        return out
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(net)
        model.save(out)
        (out / "training_log.json").write_text(json.dumps({"steps": state["step"], "log": state["log"]}, indent=1))
        print(f"wrote {out} at step {state['step']}", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    train(parser.parse_args(argv))


if __name__ == "__main__":
    main()
