"""Reading images and writing segmentation outputs.

Outputs per image (see `save_result`): ``NAME.png`` palette label map, ``NAME_overlay.png`` with a legend,
``NAME_scores.npz`` (scores KxHxW float16, labels), ``NAME_masks.json`` one COCO RLE per label present.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from promptseg.io.rle import encode_rle


class ImageLoadError(ValueError):
    """An image file that cannot be used; the message names the file and the reason."""


def load_image(path: str | Path | bytes, name: str = "the image") -> Image.Image:
    """Open any image PIL reads as RGB, with EXIF orientation applied: a file, or its bytes (`name` names them in
    errors: a download).

    Modes: RGB, L, RGBA/LA (alpha composited over white), P (palette expanded), 16-bit (I;16, I: scaled to 8 bits
    from the image's own range), CMYK, float (F).

    Raises:
        ImageLoadError: missing, empty, corrupt, unsupported, or a decompression bomb (larger than
            `PIL.Image.MAX_IMAGE_PIXELS`).
    """
    if isinstance(path, (bytes, bytearray)):
        source, path = io.BytesIO(path), name
        if not source.getbuffer().nbytes:
            raise ImageLoadError(f"{name}: empty (0 bytes)")
    else:
        path = source = Path(path)
        if not path.is_file():
            raise ImageLoadError(f"{path}: no such file")
        if path.stat().st_size == 0:
            raise ImageLoadError(f"{path}: the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as handle:
                handle.load()
                image = ImageOps.exif_transpose(handle)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageLoadError(
            f"{path}: refused as a possible decompression bomb ({err}); raise PIL.Image.MAX_IMAGE_PIXELS if you trust it"
        ) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"{path}: not a readable image ({err})") from err
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB (see `load_image`)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255 if high > low else np.zeros_like(array)
        return Image.fromarray(scaled.round().astype(np.uint8)).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def palette(n: int) -> np.ndarray:
    """n x 3 uint8 colours: the PASCAL VOC colour map (index 0 black), the field's convention."""
    colours = np.zeros((max(n, 1), 3), np.uint8)
    for i in range(len(colours)):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours[i] = (r, g, b)
    return colours


def label_png(label_map: np.ndarray) -> Image.Image:
    """A palette ("P") PNG image of an HxW label map with values < 256."""
    if label_map.max(initial=0) > 255 or label_map.min(initial=0) < 0:
        raise ValueError(f"label values must be in [0, 255] for a palette PNG, got {label_map.min()}..{label_map.max()}")
    image = Image.fromarray(label_map.astype(np.uint8), mode="P")
    image.putpalette(palette(256).flatten().tolist())
    return image


def overlay(image: Image.Image, label_map: np.ndarray, labels: list[str], alpha: float = 0.5) -> Image.Image:
    """The image with its label map blended in, and a legend strip of label colours and names below it.

    Labels take the VOC colours from index 1 on (red, green, yellow, ...); a "background" label is black.
    """
    colours = palette(len(labels) + 1)[1:]
    if labels and labels[0] == "background":
        colours[0] = 0
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    blended = (1 - alpha) * base + alpha * colours[label_map].astype(np.float32)
    picture = Image.fromarray(blended.round().astype(np.uint8))
    row = 14
    legend = Image.new("RGB", (picture.width, row * len(labels) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    for i, name in enumerate(labels):
        y = 2 + i * row
        draw.rectangle([2, y, 12, y + 10], fill=tuple(int(v) for v in colours[i]), outline=(0, 0, 0))
        draw.text((16, y - 1), name, fill=(0, 0, 0))
    out = Image.new("RGB", (picture.width, picture.height + legend.height), (255, 255, 255))
    out.paste(picture, (0, 0))
    out.paste(legend, (0, picture.height))
    return out


def save_result(result, image: Image.Image, out_dir: str | Path, stem: str) -> dict[str, Path]:
    """Write the four outputs of one image into `out_dir`; returns their paths by kind."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "label_map": out_dir / f"{stem}.png",
        "overlay": out_dir / f"{stem}_overlay.png",
        "scores": out_dir / f"{stem}_scores.npz",
        "masks": out_dir / f"{stem}_masks.json",
    }
    label_png(result.label_map).save(paths["label_map"])
    overlay(image, result.label_map, result.labels).save(paths["overlay"])
    np.savez_compressed(paths["scores"], scores=result.scores.astype(np.float16), labels=np.array(result.labels))
    masks = []
    for i, name in enumerate(result.labels):
        mask = result.label_map == i
        if mask.any():
            masks.append({"label": name, "id": i, "area": int(mask.sum()), "segmentation": encode_rle(mask)})
    record = {"labels": result.labels, "masks": masks, "warnings": result.warnings}
    for key in ("filter", "refine"):
        if key in result.extra:
            record[key] = result.extra[key]
    paths["masks"].write_text(json.dumps(record))
    return paths


def save_refer(result, image: Image.Image, out_dir: str | Path, stem: str) -> dict[str, Path]:
    """Write one referring answer into `out_dir`: the mask PNG (0/255), the overlay with the expression as legend,
    and a JSON with the expression, the COCO RLE of the mask, warnings and the method's diagnostics; returns the
    paths by kind."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "mask": out_dir / f"{stem}_mask.png",
        "overlay": out_dir / f"{stem}_overlay.png",
        "json": out_dir / f"{stem}_refer.json",
    }
    Image.fromarray(result.mask.astype(np.uint8) * 255).save(paths["mask"])
    overlay(image, result.mask.astype(np.int32), ["background", result.expression]).save(paths["overlay"])
    record = {
        "expression": result.expression,
        "area": int(result.mask.sum()),
        "empty": not bool(result.mask.any()),
        "segmentation": encode_rle(result.mask),
        "warnings": result.warnings,
        "extra": {k: v for k, v in result.extra.items() if isinstance(v, (str, int, float, list, dict, type(None)))},
    }
    paths["json"].write_text(json.dumps(record))
    return paths
