"""High-level calls behind the command line: segment image files, read label files.

    from promptseg.api import segment_files
    outcomes = segment_files(["a.jpg", "b.png"], ["cat", "dog"], method="baseline", model="shapes", out_dir="out")
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from promptseg.io import ImageLoadError, load_image, save_refer, save_result
from promptseg.methods.batching import check_batch_size
from promptseg.models import DEFAULT_MODEL
from promptseg.pipeline import Pipeline, check_expression
from promptseg.text import parse_labels


@dataclass
class FileOutcome:
    """What happened to one input file: `outputs` (kind -> path) on success, else `error`."""

    path: Path
    outputs: dict[str, Path] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0


def split_cli_labels(text: str) -> list[str]:
    """`--labels "cat,person|people"` -> ["cat", "person, people"]: commas separate labels, `|` synonyms."""
    return [", ".join(s.strip() for s in item.split("|")) for item in text.split(",")]


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        stem = path.stem
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return stems


def image_paths(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given (one that cannot be read is reported beside the others' outputs), folders walked recursively
    and glob patterns expanded as `promptseg label` does (`promptseg.io.files.collect_images`), in order, each
    once.

    Raises:
        FileNotFoundError: a pattern that matches nothing.
        ValueError: a folder or pattern with no image in it.
    """
    from promptseg.io.files import collect_images

    out = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir() or (not path.exists() and any(c in str(item) for c in "*?[")):
            out += collect_images([item])[1]
        else:
            out.append(path)
    return list(dict.fromkeys(out))


def _each_file(paths: list[Path], work, on_progress, batch_size: int = 1, work_batch=None) -> list[FileOutcome]:
    """Run `work(image, stem) -> outputs` on each readable file, or `work_batch([(image, stem), ...]) -> [outputs or
    an exception]` on `batch_size` files at a time; a file that cannot be read or segmented gets its error and the
    rest go on. Each file's seconds are its share of its batch's."""
    import time

    check_batch_size(batch_size)
    if work_batch is None:
        work_batch = lambda items: [work(image, stem) for image, stem in items]  # noqa: E731
    outcomes = []
    named = list(zip(paths, _unique_stems(paths)))
    for first in range(0, len(named), int(batch_size)):
        start = time.perf_counter()
        chunk, readable = [], []
        for path, stem in named[first:first + int(batch_size)]:
            outcome = FileOutcome(path=path)
            try:
                readable.append((load_image(path), stem, outcome))
            except ImageLoadError as err:
                outcome.error = str(err)
            chunk.append(outcome)
        if readable:
            for (_, _, outcome), outputs in zip(readable, work_batch([(image, stem) for image, stem, _ in readable])):
                if isinstance(outputs, Exception):
                    outcome.error = f"{outcome.path}: {type(outputs).__name__}: {outputs}"
                else:
                    outcome.outputs = outputs
        for outcome in chunk:
            outcome.seconds = (time.perf_counter() - start) / len(chunk)
            outcomes.append(outcome)
            if on_progress is not None:
                on_progress(outcome)
    return outcomes


def segment_files(
    paths: Sequence[str | Path],
    labels: Sequence[str],
    *,
    method: str = "baseline",
    model: str = DEFAULT_MODEL,
    out_dir: str | Path = "promptseg_out",
    device: str | None = None,
    dtype: str | None = None,
    settings: dict | None = None,
    prompt: str | None = None,
    allow_pickle: bool = False,
    filter: str | None = None,
    filter_settings: dict | None = None,
    refine: str | None = None,
    refine_settings: dict | None = None,
    on_progress: Callable[[FileOutcome], None] | None = None,
    shared_synonyms: bool = False,
    offload: str | None = None,
    quantize: str | None = None,
    batch_size: int = 1,
) -> list[FileOutcome]:
    """Segment each image file (folders walked, glob patterns expanded: `image_paths`) into `labels` and write its
    four outputs to `out_dir`; `batch_size` images at a time (`Pipeline.segment_batch`).

    `shared_synonyms=True` reads `labels` as a dataset's class list, whose lines may share words (ADE20K-847's
    "screen"): each class keeps the words no earlier class took; otherwise a word used twice is an error.

    Labels and settings are checked before the model loads. A file that cannot be read is reported in its
    `FileOutcome.error` and the other files are still processed. `filter` names the class filter run first
    ("none" to switch it off; None: the one the model recommends); what it kept and dropped is written into each
    image's masks JSON. `refine` names the refiner run on the label map ("none" to switch it off; None: the one the
    model recommends); what it redrew is written there too.
    """

    labels = parse_labels(labels, shared_synonyms=shared_synonyms)
    pipe = Pipeline(model, method, settings=settings, filter=filter, filter_settings=filter_settings, refine=refine,
                    refine_settings=refine_settings, device=device, dtype=dtype, allow_pickle=allow_pickle,
                    offload=offload, quantize=quantize)
    paths = image_paths(paths)
    if not paths:
        raise ValueError("no image files given")
    check_batch_size(batch_size)
    pipe.load()

    def work_batch(items):
        results = pipe.segment_each([image for image, _ in items], labels, prompts=prompt)
        return [result if isinstance(result, Exception) else save_result(result, image, out_dir, stem)
                for result, (image, stem) in zip(results, items)]

    return _each_file(paths, None, on_progress, batch_size, work_batch)


def refer_files(
    paths: Sequence[str | Path],
    expression: str,
    *,
    method: str = "anyword",
    model: str = DEFAULT_MODEL,
    out_dir: str | Path = "promptseg_out",
    device: str | None = None,
    dtype: str | None = None,
    settings: dict | None = None,
    allow_pickle: bool = False,
    on_progress: Callable[[FileOutcome], None] | None = None,
    offload: str | None = None,
    quantize: str | None = None,
) -> list[FileOutcome]:
    """Segment what `expression` refers to in each image file; write its mask PNG, overlay and RLE JSON to
    `out_dir` (`io.save_refer`). The method must answer expressions (`anyword`, `baseline`). Settings are checked
    before the model loads; an unreadable file is reported in its `FileOutcome.error` and the others still run."""

    check_expression(expression)
    pipe = Pipeline(model, method, settings=settings, task="refer", device=device, dtype=dtype,
                    allow_pickle=allow_pickle, offload=offload, quantize=quantize)
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no image files given")
    pipe.load()
    return _each_file(paths, lambda image, stem: save_refer(pipe.refer(image, expression), image, out_dir, stem),
                      on_progress)


def map_files(
    paths: Sequence[str | Path],
    words: Sequence[str],
    *,
    model: str = DEFAULT_MODEL,
    out_dir: str | Path = "promptseg_maps",
    device: str | None = None,
    dtype: str | None = None,
    places: Sequence[str] | None = None,
    timestep: int | None = None,
    per_layer: bool = False,
    seed: int = 0,
    allow_pickle: bool = False,
    on_progress: Callable[[FileOutcome], None] | None = None,
    offload: str | None = None,
    quantize: str | None = None,
) -> list[FileOutcome]:
    """Write each image file's word heat maps to `out_dir` (`promptseg.io.heatmaps.save_word_maps`); an unreadable
    file is reported in its outcome and the others go on."""
    from promptseg.io.heatmaps import save_word_maps

    words = [w.strip() for w in words]
    if not words or any(not w for w in words):
        raise ValueError(f"give the words to map, e.g. --words 'cat,red car'; got {list(words)!r}")
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no image files given")
    pipe = Pipeline(model, "baseline", device=device, dtype=dtype, allow_pickle=allow_pickle, offload=offload,
                    quantize=quantize)
    return _each_file(paths, lambda image, stem: save_word_maps(
        pipe.attention_maps(image, words, places=places, timestep=timestep, per_layer=per_layer, seed=seed),
        image, out_dir, stem), on_progress)
