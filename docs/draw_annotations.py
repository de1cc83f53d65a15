"""Draw a `promptseg label` dataset's annotations back onto its images (docs/label_annotations.png in the README).

    promptseg label examples/ --labels-file src/promptseg/data/classnames/shapes.txt --model shapes --out ds
    python docs/draw_annotations.py ds --out docs/label_annotations.png

Reads `ds/annotations.json` with pycocotools (as a training tool would), decodes every annotation's RLE, and draws
each image with its masks tinted in their category's VOC colour (stuff lightly), their outlines, their boxes and "name score";
the images sit side by side. Images are found under the dataset's recorded input root (`info.root`) or `--root`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools.coco import COCO

from promptseg.io import palette


def draw(coco: COCO, image_id: int, root: Path, scale: int = 2) -> Image.Image:
    info = coco.loadImgs(image_id)[0]
    image = Image.open(root / info["file_name"]).convert("RGB")
    base = np.asarray(image, np.float32)
    colours = palette(max(coco.getCatIds()) + 1)
    annotations = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
    for annotation in annotations:  # tint, then outline: the pixels on the mask's edge
        mask = coco.annToMask(annotation).astype(bool)
        colour = colours[annotation["category_id"]].astype(np.float32)
        alpha = 0.15 if coco.loadCats(annotation["category_id"])[0]["supercategory"] == "stuff" else 0.45
        base[mask] = (1 - alpha) * base[mask] + alpha * colour
        edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
        base[edge] = colour
    picture = Image.fromarray(base.round().astype(np.uint8)).resize((image.width * scale, image.height * scale),
                                                                    Image.NEAREST)
    pen = ImageDraw.Draw(picture)
    for annotation in annotations:
        name = coco.loadCats(annotation["category_id"])[0]["name"]
        x, y, w, h = (v * scale for v in annotation["bbox"])
        colour = tuple(int(v) for v in colours[annotation["category_id"]])
        pen.rectangle([x, y, x + w - 1, y + h - 1], outline=colour, width=2)
        label = f"{name} {annotation['score']:.2f}"
        pen.rectangle([x, y, x + 7 * len(label), y + 12], fill=(255, 255, 255))
        pen.text((x + 2, y), label, fill=(0, 0, 0))
    return picture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--out", default="docs/label_annotations.png")
    parser.add_argument("--root", default=None, help="where the images are (default: the dataset's recorded root)")
    parser.add_argument("--images", type=int, default=3)
    args = parser.parse_args()
    coco = COCO(str(Path(args.dataset) / "annotations.json"))
    root = Path(args.root or coco.dataset["info"]["root"])
    pictures = [draw(coco, i, root) for i in coco.getImgIds()[: args.images]]
    sheet = Image.new("RGB", (sum(p.width for p in pictures) + 8 * (len(pictures) - 1), max(p.height for p in pictures)),
                      (255, 255, 255))
    x = 0
    for picture in pictures:
        sheet.paste(picture, (x, 0))
        x += picture.width + 8
    sheet.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
