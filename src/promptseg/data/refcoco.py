"""RefCOCO, RefCOCO+, RefCOCOg and gRefCOCO in the refer API's layout, one sample per sentence.

    ROOT/refcoco/refs(unc).p      + ROOT/refcoco/instances.json        (splits val, testA, testB)
    ROOT/refcoco+/refs(unc).p     + ROOT/refcoco+/instances.json       (val, testA, testB)
    ROOT/refcocog/refs(umd).p     + ROOT/refcocog/instances.json       (val, test; refs(google).p also read)
    ROOT/grefcoco/grefs(unc).json + ROOT/grefcoco/instances.json       (val, testA, testB)
    images: ROOT/images/mscoco/images/train2014/, ROOT/images/train2014/ or ROOT/train2014/ (COCO train2014)

A sample's mask is the union of the referred annotations' masks (gRefCOCO refers to several, or to none: `ann_id`
`[-1]` or `no_target`, an empty mask). Masks are decoded with pycocotools (`pip install 'promptseg[eval]'`).
`refs(...).p` files are Python pickles, as the refer API distributes them: read only files you downloaded yourself.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from promptseg.data.shapes_ref import RefSample

REFER_DATASETS = {
    "refcoco": ("refcoco", ("refs(unc).p",), ("val", "testA", "testB")),
    "refcoco+": ("refcoco+", ("refs(unc).p",), ("val", "testA", "testB")),
    "refcocog": ("refcocog", ("refs(umd).p", "refs(google).p"), ("val", "test")),
    "grefcoco": ("grefcoco", ("grefs(unc).json",), ("val", "testA", "testB")),
}
"""name -> (folder under ROOT, refs files tried in order, splits)."""

IMAGE_FOLDERS = ("images/mscoco/images/train2014", "images/train2014", "train2014", "coco/train2014")


class RefCOCODataset:
    """One referring dataset of the RefCOCO family, one sample per sentence (the field's evaluation unit).

    Args:
        name (`str`): "refcoco", "refcoco+", "refcocog" or "grefcoco".
        root (`str`): the folder holding the dataset folders and the COCO images (module docstring).
        split (`str`, defaults to "val").

    Raises:
        FileNotFoundError: a missing refs file, instances.json or image folder (the message names the paths tried).
        ValueError: an unknown name or split.
    """

    def __init__(self, name: str, root: str, split: str = "val"):
        if name not in REFER_DATASETS:
            raise ValueError(f"unknown referring dataset {name!r}; choose from {sorted(REFER_DATASETS)}")
        folder, refs_files, splits = REFER_DATASETS[name]
        if split not in splits:
            raise ValueError(f"{name} has splits {list(splits)}, not {split!r}")
        self.name, self.split = name, split
        base = Path(root) / folder
        refs_path = next((base / f for f in refs_files if (base / f).exists()), None)
        if refs_path is None:
            raise FileNotFoundError(f"no {' or '.join(refs_files)} in {base} (download the refer annotations there)")
        instances = base / "instances.json"
        if not instances.exists():
            raise FileNotFoundError(f"{instances} is missing (the refer API's COCO instances file for {name})")
        self.image_dir = next((Path(root) / f for f in IMAGE_FOLDERS if (Path(root) / f).is_dir()), None)
        if self.image_dir is None:
            raise FileNotFoundError(f"no COCO train2014 image folder under {root}; tried {list(IMAGE_FOLDERS)}")
        refs = json.loads(refs_path.read_text()) if refs_path.suffix == ".json" else _load_pickle(refs_path)
        coco = json.loads(instances.read_text())
        self.images = {im["id"]: im for im in coco["images"]}
        self.annotations = {ann["id"]: ann for ann in coco["annotations"]}
        self.samples: list[tuple[dict, dict]] = []
        for ref in refs:
            if ref.get("split") != split:
                continue
            for sentence in ref["sentences"]:
                self.samples.append((ref, sentence))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, k: int) -> RefSample:
        ref, sentence = self.samples[k]
        info = self.images[ref["image_id"]]
        image = Image.open(self.image_dir / info["file_name"]).convert("RGB")
        ann_ids = ref["ann_id"] if isinstance(ref["ann_id"], list) else [ref["ann_id"]]
        mask = np.zeros((info["height"], info["width"]), bool)
        if not ref.get("no_target", False):
            for ann_id in ann_ids:
                if ann_id is not None and ann_id >= 0:
                    mask |= decode_segmentation(self.annotations[ann_id]["segmentation"], info["height"], info["width"])
        text = sentence.get("sent") or sentence.get("raw", "")
        return RefSample(image=image, expression=text, mask=mask, id=f"{ref['ref_id']}_{sentence.get('sent_id', 0)}")


def _load_pickle(path: Path):
    with open(path, "rb") as handle:
        return pickle.load(handle)  # noqa: S301 - the refer API ships pickles; see the module docstring


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygons, RLE or uncompressed RLE) as an HxW bool mask.

    Raises:
        ImportError: pycocotools is not installed.
    """
    try:
        from pycocotools import mask as mask_utils
    except ImportError as error:
        raise ImportError("the RefCOCO readers need pycocotools: pip install 'promptseg[eval]'") from error
    if isinstance(segmentation, list):
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)
