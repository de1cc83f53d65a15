"""Files in and out: images read safely, results written (label PNG, overlay, score maps, COCO RLE masks), COCO
datasets assembled, and the mask geometry they need.

    images.py   `load_image`, `save_result`, `save_refer`, `overlay`, `palette`, `label_png`
    rle.py      COCO compressed RLE
    coco.py     a result -> COCO instance annotations; a labelled folder -> `annotations.json`
    regions.py  connected regions and bounding boxes of masks
"""

from promptseg.io.images import ImageLoadError, label_png, load_image, overlay, palette, save_refer, save_result, to_rgb

__all__ = ["ImageLoadError", "label_png", "load_image", "overlay", "palette", "save_refer", "save_result", "to_rgb"]
