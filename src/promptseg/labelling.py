"""Label a folder of images with a vocabulary into a dataset training tools read: resumable and sharded.

    promptseg label photos/ --labels-file classes.txt --model shapes --out dataset
    accelerate launch -m promptseg.cli label photos/ --labels-file classes.txt --out dataset   # several GPUs

What `DATASET` holds at the end:
- `annotations.json`: COCO instances format (`promptseg.io.coco`): one category per vocabulary line (synonyms of a line
  are one category), `images` with `file_name` relative to the input root (the folder given, or the folders' common
  parent), width and height, and compressed-RLE annotations with `area`, `bbox`, `iscrowd` and `score`;
- `semantic/NAME.png`: the label map of each image as `segment` draws it (palette PNG, VOC colours; 16-bit
  grey when the vocabulary has over 255 classes), value = category id, 0 = background; NAME is the image's path
  under the root with the suffix replaced;
- `classes.txt`: line i names the value i of the semantic maps (line 0: background);
- `skipped.json`: the files that could not be read, with the reason (every other file is still labelled);
- `failed.json`: the images the pipeline failed on, with the error (the others are still labelled; `promptseg label`
  then exits 1, and rerunning the same command tries them again).

Each image's record is written to `DATASET/records/` as soon as it is done, so rerunning the same command after a
kill labels only the rest; the final files are merged from the records in a fixed order (images sorted by their
relative path, ids 1.. in that order), so a killed-and-resumed run and a run over several processes write the same
`annotations.json` as one uninterrupted run. `DATASET/run.json` records the settings; a run with other settings
into the same folder is refused. Under `accelerate launch` each process labels a contiguous share of the images and
the main process merges.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from promptseg import __version__
from promptseg.eval.runs import Shard, atomic_write, check_run_file
from promptseg.io.files import collect_images
from promptseg.io.layouts import FORMATS, VOC_MAX_CATEGORIES, check_class_files, val_split
from promptseg.methods.batching import check_batch_size
from promptseg.models import DEFAULT_MODEL


def semantic_names(relative: list[str]) -> list[str]:
    """`semantic/` file names for images at `relative` paths: the path with its suffix replaced by .png, or with
    .png appended where two images would share a name (a.jpg and a.png)."""
    plain = [str(Path(r).with_suffix(".png").as_posix()) for r in relative]
    counts = Counter(plain)
    return [p if counts[p] == 1 else f"{r}.png" for p, r in zip(plain, relative)]


def _record_path(out: Path, relative: str) -> Path:
    return out / "records" / (hashlib.sha1(relative.encode()).hexdigest()[:20] + ".json")


def write_semantic(path: Path, values: np.ndarray, num_categories: int) -> None:
    """A palette PNG of category ids (VOC colours), or a 16-bit grey PNG when there are over 255 categories."""
    from promptseg.io import label_png

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.png")
    if num_categories <= 255:
        label_png(values).save(tmp)
    else:
        Image.fromarray(values.astype(np.uint16)).save(tmp)
    os.replace(tmp, path)


@dataclass
class LabelRun:
    """What to label and how. `vocabulary`: class lines (commas separate synonyms); the method, filter and refiner
    settings are those of `segment` (None: what the model recommends)."""

    inputs: list
    vocabulary: list
    out: str = "dataset"
    method: str = "baseline"
    model: str = DEFAULT_MODEL
    settings: dict = field(default_factory=dict)
    prompt: str | None = None
    filter: str | None = None
    filter_settings: dict = field(default_factory=dict)
    refine: str | None = None
    refine_settings: dict = field(default_factory=dict)
    min_area: int = 16
    """Thing regions (and stuff unions) smaller than this many pixels get no annotation (they stay in the
    semantic map)."""
    device: str | None = None
    dtype: str | None = None
    allow_pickle: bool = False
    shared_synonyms: bool = False
    """The vocabulary is a dataset's class list, whose lines may share words (ADE20K-847 has "screen" in five lines):
    each class keeps the words no earlier class took (`parse_labels`); False: a word used twice is an error."""
    offload: str | None = None
    """"model" or "sequential": weights in CPU memory, run on `device` (`promptseg.models.offload`)."""
    quantize: str | None = None
    """"int8": the denoiser's weights in int8 (`promptseg.models.quantize`)."""
    batch_size: int = 1
    """Images segmented together (`Pipeline.segment_batch`); the labels equal one image at a time's."""
    formats: tuple[str, ...] = ("coco",)
    """Layouts written (`promptseg.io.layouts`): "coco" (annotations.json), "yolo-seg" (yolo/), "masks" (masks/),
    "voc" (voc/). All are made from the same per-image records, so a rerun with other formats labels nothing
    again."""
    polygons: bool = False
    """COCO segmentations as polygons (a polygon per part, holes joined in) instead of compressed RLE."""
    val_fraction: float = 0.2
    """Share of the images held out as val in the YOLO and VOC layouts (autodistill's and Roboflow's 0.2; 0: all
    train)."""


def _setup(run: LabelRun, backbone=None):
    """Check everything before a model loads: (pipeline, labels, categories, signature)."""
    from promptseg.io.coco import category_table
    from promptseg.pipeline import Pipeline
    from promptseg.text import parse_labels

    if int(run.min_area) < 0:
        raise ValueError(f"min_area must be >= 0 pixels, got {run.min_area}")
    unknown = [f for f in run.formats if f not in FORMATS]
    if unknown or not run.formats:
        raise ValueError(f"unknown dataset format(s) {unknown or list(run.formats)}: choose from {', '.join(FORMATS)}")
    val_split([], run.val_fraction)  # checks the fraction
    if run.polygons and "coco" not in run.formats:
        raise ValueError("polygons=True (--polygons) shapes the COCO annotations, but 'coco' is not among the formats "
                         f"{list(run.formats)}: add it, or drop --polygons")
    labels = parse_labels(run.vocabulary, shared_synonyms=run.shared_synonyms)
    if "voc" in run.formats and len(labels) > VOC_MAX_CATEGORIES:
        raise ValueError(f"VOC's class PNGs hold at most {VOC_MAX_CATEGORIES} categories, this vocabulary has "
                         f"{len(labels)}: choose --format masks, coco or yolo-seg")
    pipe = Pipeline(run.model, run.method, settings=run.settings, filter=run.filter, filter_settings=run.filter_settings,
                    refine=run.refine, refine_settings=run.refine_settings, device=run.device, dtype=run.dtype,
                    allow_pickle=run.allow_pickle, backbone=backbone, offload=run.offload,
                    quantize=run.quantize)
    signature = {**pipe.signature, "prompt": run.prompt, "vocabulary": [", ".join(label.synonyms) for label in labels],
                 "min_area": int(run.min_area)}
    categories = category_table(labels)
    if "masks" in run.formats:
        check_class_files(categories)
    return pipe, labels, categories, signature


def label_images(run: LabelRun, progress: bool = True, backbone=None) -> dict | None:
    """Label (or finish labelling) `run.inputs` into `run.out`; returns the summary on the main process (None on
    the others): images labelled, skipped, annotations per category, seconds per image, and the files written.

    `backbone`, if given, is used instead of loading `run.model` (it must be that model).

    Raises:
        ValueError: bad labels or settings, no images, or `run.out` holding a run with other settings.
        FileNotFoundError: an input that does not exist.
    """
    from promptseg.io import ImageLoadError, load_image
    from promptseg.io.coco import image_annotations, semantic_map

    pipe, labels, categories, signature = _setup(run, backbone)
    root, files = collect_images(run.inputs)
    relative = [p.relative_to(root).as_posix() for p in files]
    semantic = semantic_names(relative)
    out = Path(run.out)
    shard = Shard()
    if shard.is_main:
        (out / "records").mkdir(parents=True, exist_ok=True)
        check_run_file(out, signature)
    shard.barrier()

    mine = [i for i in shard.indices(len(files)) if _to_do(_record_path(out, relative[i]))]
    bar = None
    if progress and shard.is_main:
        from tqdm import tqdm

        bar = tqdm(total=len(mine), unit="image", desc="labelling", dynamic_ncols=True)
    check_batch_size(run.batch_size)
    for first in range(0, len(mine), int(run.batch_size)):
        chunk = mine[first:first + int(run.batch_size)]
        start = time.perf_counter()
        records, images = {}, {}
        for i in chunk:
            records[i] = {"file_name": relative[i]}
            try:
                images[i] = load_image(files[i])
            except ImageLoadError as err:
                records[i]["error"] = str(err).replace(str(files[i]), relative[i])
        if images and pipe.method.instance is None:
            pipe.load()
            start = time.perf_counter()  # the model's loading is not the first images' cost
        for i, result in zip(images, pipe.segment_each(list(images.values()), labels, run.prompt)):
            if isinstance(result, Exception):  # one image's failure must not end the run: recorded, reported, retried
                records[i]["failed"] = f"{type(result).__name__}: {result}"
                continue
            image = images[i]
            write_semantic(out / "semantic" / semantic[i], semantic_map(result, categories), len(categories))
            records[i].update(width=image.width, height=image.height, semantic_file=f"semantic/{semantic[i]}",
                              annotations=image_annotations(result, categories, int(run.min_area)),
                              warnings=result.warnings)
        for i in chunk:
            records[i]["seconds"] = (time.perf_counter() - start) / len(chunk)
            atomic_write(_record_path(out, relative[i]), json.dumps(records[i]))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    shard.barrier()
    if not shard.is_main:
        return None
    return _merge(out, root, relative, categories, signature, run)


def _to_do(path: Path) -> bool:
    """Whether an image still needs labelling: no record yet, or one whose segmentation failed."""
    return not path.exists() or "failed" in json.loads(path.read_text())


def _merge(out: Path, root: Path, relative: list[str], categories: list[dict], signature: dict, run: LabelRun) -> dict:
    """Write classes.txt, skipped.json, failed.json and each of `run.formats` from the records of `relative`; the
    summary."""
    from promptseg.io import layouts
    from promptseg.io.coco import assemble

    images, annotations, skipped, failed, entries = [], [], [], [], []
    seconds = 0.0
    for name in relative:
        record = json.loads(_record_path(out, name).read_text())
        seconds += record["seconds"]
        if "error" in record:
            skipped.append({"file_name": name, "reason": record["error"]})
            continue
        if "failed" in record:
            failed.append({"file_name": name, "error": record["failed"]})
            continue
        images.append({"file_name": name, "width": record["width"], "height": record["height"],
                       "semantic_file": record["semantic_file"]})
        annotations.append(record["annotations"])
        entries.append(record)
    info = {"description": f"labelled by promptseg {__version__} ({signature['method']} on {signature['model']})",
            "root": str(root), "promptseg": signature}
    if run.polygons:
        annotations = [[layouts.coco_polygons(a) for a in found] for found in annotations]
    dataset = assemble(images, annotations, categories, info)
    atomic_write(out / "classes.txt", "\n".join(["background"] + [c["name"] for c in categories]) + "\n")
    atomic_write(out / "skipped.json", json.dumps(skipped, indent=1))
    atomic_write(out / "failed.json", json.dumps(failed, indent=1))
    written = {}
    if "coco" in run.formats:
        atomic_write(out / "annotations.json", json.dumps(dataset))
        written["coco"] = str(out / "annotations.json")
    val = layouts.val_split(relative, run.val_fraction)
    writers = {"yolo-seg": ("yolo", lambda d: layouts.write_yolo(d, root, entries, categories, val)),
               "voc": ("voc", lambda d: layouts.write_voc(d, root, entries, categories, val, out)),
               "masks": ("masks", lambda d: layouts.write_masks(d, out, entries, categories))}
    for name, (folder, write) in writers.items():
        if name in run.formats:
            layouts.fresh(out / folder, write)
            written[name] = str(out / folder / ("data.yaml" if name == "yolo-seg" else ""))
    per_category = Counter(a["category_id"] for a in dataset["annotations"])
    return {
        "images": len(images),
        "skipped": skipped,
        "failed": failed,
        "annotations": len(dataset["annotations"]),
        "per_category": {c["name"]: per_category.get(c["id"], 0) for c in categories},
        "seconds_per_image": seconds / max(len(relative), 1),
        "out": str(out),
        "written": written,
    }
