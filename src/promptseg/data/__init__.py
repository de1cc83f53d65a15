"""Evaluation datasets by name (`get_dataset`), each yielding (image, label map, id) with its class names."""

from __future__ import annotations

from promptseg.data.base import IGNORE_INDEX, Sample, SegDataset, read_class_names

DATASETS = ("voc21", "voc20", "context60", "context59", "coco_object", "shapes", "scenes", "ade150", "ade847",
            "context459", "coco_stuff")


def get_dataset(name: str, root: str | None = None, class_names_file: str | None = None, **kwargs) -> SegDataset:
    """The dataset `name` (one of `DATASETS`) read from `root` (not needed for the rendered "shapes" and "scenes").

    Raises:
        ValueError: an unknown name, or no `root` for a dataset on disk.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")
    if name == "shapes":
        from promptseg.data.shapes import ShapesDataset

        return ShapesDataset(class_names_file=class_names_file, **kwargs)
    if name == "scenes":
        from promptseg.data.shapes import ScenesDataset

        return ScenesDataset(class_names_file=class_names_file, **kwargs)
    if root is None:
        raise ValueError(f"dataset {name!r} needs --root, the folder that holds it")
    if name in ("ade150", "ade847", "context459", "coco_stuff"):
        from promptseg.data.openvocab import FolderSegDataset

        return FolderSegDataset(name, root, class_names_file=class_names_file, **kwargs)
    if name.startswith("voc"):
        from promptseg.data.voc import VOCDataset

        return VOCDataset(root, variant=name, class_names_file=class_names_file, **kwargs)
    if name.startswith("context"):
        from promptseg.data.context import ContextDataset

        return ContextDataset(root, variant=name, class_names_file=class_names_file, **kwargs)
    from promptseg.data.coco_object import COCOObjectDataset

    return COCOObjectDataset(root, class_names_file=class_names_file, **kwargs)





REFER_DATASETS = ("shapes_ref", "scenes_ref", "refcoco", "refcoco+", "refcocog", "grefcoco")


def get_refer_dataset(name: str, root: str | None = None, split: str | None = None, limit: int | None = None):
    """The referring dataset `name` (one of `REFER_DATASETS`): samples with `image`, `expression`, `mask`, `id`.

    shapes_ref and scenes_ref need no `root` (split "test" by default; `limit` expressions are generated, 300 when
    None).

    Raises:
        ValueError: an unknown name, or no `root` for a dataset on disk.
    """
    if name not in REFER_DATASETS:
        raise ValueError(f"unknown referring dataset {name!r}; choose from {REFER_DATASETS}")
    if name == "shapes_ref":
        from promptseg.data.shapes_ref import ShapesRefDataset

        return ShapesRefDataset(split or "test", n=limit or 300)
    if name == "scenes_ref":
        from promptseg.data.scenes_ref import ScenesRefDataset

        return ScenesRefDataset(split or "test", n=limit or 300)
    if root is None:
        raise ValueError(f"dataset {name!r} needs --root, the folder holding {name}/ and the COCO train2014 images")
    from promptseg.data.refcoco import RefCOCODataset

    return RefCOCODataset(name, root, split or "val")
__all__ = ["DATASETS", "IGNORE_INDEX", "REFER_DATASETS", "Sample", "SegDataset", "get_dataset", "get_refer_dataset", "read_class_names"]
