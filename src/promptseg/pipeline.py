"""The pipeline: a model, a class filter, a method and a refiner, with their settings resolved once.

    from promptseg.pipeline import Pipeline
    pipe = Pipeline("shapes", "fastseg", filter="clip", refine="none")   # settings checked, nothing loaded yet
    pipe.signature                       # what a resumable run compares: model, every stage's name and settings
    result = pipe.segment(image, ["circle", "square", "grass"])
    result.extra["filter"], result.extra["refine"]        # what each stage decided
    answer = Pipeline("shapes", "anyword", task="refer").refer(image, "the red circle left of the square")

An image flows: loading (once) -> class filter (which offered labels are in the image) -> method (scores and label
map, on the diffusion core) -> refiner (edges redrawn). Each stage's settings are its dataclass's defaults, changed
by what the model recommends (`promptseg_settings.json`: `{method: {...}}`, `"filter"`/`"filters"`,
`"refine"`/`"refiners"`), then by the caller's overrides. The image is VAE-encoded once for all stages
(`promptseg.diffusion.encode.shared_encoding`). Every caller (the Python API, `eval`, `label`, the demo) runs images
through this class and resolves nothing itself.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptseg.diffusion.encode import shared_encoding, to_pil
from promptseg.filters.base import FILTERS, FilterDecision
from promptseg.methods.base import (
    METHODS,
    ReferResult,
    SegmentationResult,
    as_labels,
    empty_result,
    recommended_config,
    require_refer,
)
from promptseg.methods.batching import batch_warning, batches
from promptseg.models import DEFAULT_MODEL, load_backbone, model_settings
from promptseg.refiners.base import REFINERS, apply_refiner

TASKS = ("segment", "refer")
NO_FILTER = "none"
NO_REFINER = "none"


BACKBONE_SETTINGS = ("blocks", "cross_readout", "clip_hidden_layer", "load_t5", "max_sequence_length")
"""Model-level settings of a transformer backbone (`promptseg.models.mmdit`), recorded in a run's signature."""


def settings_json(config) -> dict:
    """A settings dataclass as JSON-ready data (tuples become lists), as a run file rereads it."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


@dataclass
class Stage:
    """One stage of the pipeline: its registered name, its settings, and (once loaded) its instance.

    Attributes:
        name (`str`): the registered name ("fastseg", "clip", "none", ...).
        config: its settings dataclass, resolved (defaults, then the model's, then the caller's).
        instance: the built stage, None until `Pipeline.load`.
    """

    name: str
    config: Any
    instance: Any = None

    @property
    def settings(self) -> dict:
        return settings_json(self.config)


class Pipeline:
    """Model + class filter + method + refiner, settings resolved once, loaded on first use.

    Args:
        model (`str`, defaults to SD 1.5's hub id): what `load_backbone` takes.
        method (`str`, defaults to "baseline"): a registered method.
        settings (`dict`, *optional*): overrides of the method's settings (text values parsed as JSON).
        filter (`str`, *optional*): a registered class filter, "none", or None for the one the model recommends
            (with `labels_known`, None means "none").
        filter_settings (`dict`, *optional*): overrides of the filter's settings.
        refine (`str`, *optional*): a registered refiner, "none", or None for the one the model recommends.
        refine_settings (`dict`, *optional*): overrides of the refiner's settings.
        labels_known (`bool`, defaults to `False`): the labels offered are each image's true classes (`eval
            --names oracle`): nothing is left for a filter to decide, so none runs unless `filter` names one.
        task (`str`, defaults to "segment"): "segment" (labels -> label map) or "refer" (a sentence -> a mask; the
            method must answer expressions, and no filter or refiner runs).
        device, dtype, allow_pickle, offload, quantize: as for `load_backbone`.
        backbone (*optional*): an already loaded backbone of `model` (sweeps and the demo reuse one load).
        built (`dict`, *optional*): a cache of built stages shared between pipelines on one backbone (the demo's):
            a stage with the same kind, name and settings is built once.

    Raises:
        ValueError: an unknown method, filter, refiner, setting or task, or a method that does not answer
            expressions for task "refer". Nothing is loaded before these checks.
    """

    def __init__(self, model: str = DEFAULT_MODEL, method: str = "baseline", *, settings: dict | None = None,
                 filter: str | None = None, filter_settings: dict | None = None, refine: str | None = None,
                 refine_settings: dict | None = None, labels_known: bool = False, task: str = "segment",
                 device=None, dtype=None, allow_pickle: bool = False, backbone=None, built: dict | None = None,
                 offload: str | None = None, quantize: str | None = None):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
        self.model, self.task = str(model), task
        self.device, self.dtype, self.allow_pickle = device, dtype, allow_pickle
        self.offload, self.quantize = offload, quantize
        self._backbone = backbone
        self._built = built if built is not None else {}
        recommended = backbone.method_defaults if backbone is not None else model_settings(self.model)
        self.backbone_settings = {k: recommended[k] for k in BACKBONE_SETTINGS if k in recommended}
        if task == "refer":
            require_refer(method)
        self.method = Stage(method, recommended_config(method, recommended, settings or {}))
        if task == "refer":
            self.filter = self.refiner = None
            return
        if filter is None and labels_known:
            filter = NO_FILTER
        self.filter = Stage(*self._resolve(FILTERS, recommended, filter, filter_settings, "filter", "filters"))
        self.refiner = Stage(*self._resolve(REFINERS, recommended, refine, refine_settings, "refine", "refiners"))

    @classmethod
    def from_pipe(cls, pipe, method: str = "baseline", *, settings_from: str | None = None, **kwargs) -> Pipeline:
        """A pipeline on a diffusers pipeline already loaded (StableDiffusion / SDXL / SD3 / FLUX.1): its components,
        device and dtype, nothing loaded twice (`promptseg.models.from_pipe`). The settings are those of
        `pipe.name_or_path` (or `settings_from`: a folder, hub id or bundled name); `kwargs` as for `Pipeline`
        (settings, filter, refine, ...; not device, dtype, offload or quantize, which the pipeline already fixed)."""
        from promptseg.models.from_pipe import backbone_from_pipe

        fixed = sorted(set(kwargs) & {"device", "dtype", "offload", "quantize", "backbone", "allow_pickle"})
        if fixed:
            raise ValueError(f"from_pipe takes the loaded pipeline as it is; {fixed} cannot be set here: move or "
                             "quantize the diffusers pipeline itself first (pipe.to('cuda'), a quantized transformer)")
        backbone = backbone_from_pipe(pipe, settings_from)
        return cls(backbone.name, method, backbone=backbone, **kwargs)

    @staticmethod
    def _resolve(registry, recommended: dict, name, overrides, choice_key: str, settings_key: str):
        chosen, settings = registry.resolve(recommended, name, overrides or {}, choice_key, settings_key)
        return chosen, registry.config(chosen, **settings)

    @property
    def stages(self) -> list[tuple[str, Stage]]:
        """(kind, stage) in the order an image meets them."""
        pairs = [("filter", self.filter), ("method", self.method), ("refine", self.refiner)]
        return [(kind, stage) for kind, stage in pairs if stage is not None]

    @property
    def signature(self) -> dict:
        """What a resumable run compares: the model and every stage's name and settings."""
        out = {"model": self.model, "method": self.method.name, "settings": self.method.settings}
        if self.backbone_settings:  # a transformer's blocks and read-out (absent for UNets: older runs still match)
            out["backbone_settings"] = self.backbone_settings
        if self.quantize:  # int8 weights change the maps; offloading does not
            out["quantize"] = self.quantize
        if self.task == "segment":
            out.update(filter=self.filter.name, filter_settings=self.filter.settings,
                       refine=self.refiner.name, refine_settings=self.refiner.settings)
        return out

    @property
    def backbone(self):
        """The backbone, loaded on first use."""
        if self._backbone is None:
            self._backbone = load_backbone(self.model, device=self.device, dtype=self.dtype,
                                           allow_pickle=self.allow_pickle, offload=self.offload,
                                           quantize=self.quantize)
        return self._backbone

    def load(self) -> Pipeline:
        """Load the backbone and build every stage (once); returns the pipeline."""
        registries = {"filter": FILTERS, "method": METHODS, "refine": REFINERS}
        for kind, stage in self.stages:
            if stage.instance is None:
                key = (kind, stage.name, json.dumps(stage.settings, sort_keys=True))
                if key not in self._built:
                    self._built[key] = registries[kind].build(stage.name, self.backbone, stage.config)
                stage.instance = self._built[key]
        return self

    def segment(self, image, labels, prompt: str | None = None) -> SegmentationResult:
        """Filter `labels` for `image` (PIL or HxWx3 uint8), segment it into the kept ones, refine the label map.

        The result records every stage's decision: `extra["filter"]` (kept, dropped with reasons, scores) and
        `extra["refine"]` (the refiner's name, the regions it redrew, labels it erased); see `run_stages`.
        """
        if self.task != "segment":
            raise ValueError("this pipeline answers referring expressions (task='refer'): call refer()")
        self.load()
        return run_stages(self.method.instance, self.filter.instance, image, labels, prompt=prompt,
                          refiner=self.refiner.instance)

    def predict(self, image, labels, prompt: str | None = None, min_area: int = 1):
        """`segment`, as `supervision.Detections` (`promptseg.integrations.supervision.to_detections`): a detection
        per region of a thing class, one per stuff class; `class_id` indexes `labels` as given. Needs the extra
        `supervision`."""
        from promptseg.extras import require
        from promptseg.io.detections import to_detections
        from promptseg.text import parse_labels

        require("supervision", "supervision", "Pipeline.predict")  # before the model runs
        classes = [label.name for label in parse_labels(labels)]
        return to_detections(self.segment(image, labels, prompt), classes=classes, min_area=min_area)

    def segment_batch(self, images, labels, prompts=None) -> list[SegmentationResult]:
        """`segment` of several images, batched where the method allows (`promptseg.methods.batching`): the VAE,
        the CLIP filter's image tower and the method's recording forward see the images together, each image with
        the labels its filter kept and its own prompt; the refiner runs image by image. Results equal `segment` of
        each image to float rounding.

        Args:
            images: PIL images or HxWx3 uint8 arrays.
            labels: one label list for every image, or one list per image (a list of lists: a list whose items are
                all lists or tuples is read so, so give synonyms as "person, people", not as a list).
            prompts (*optional*): one caption for every image, or one per image (None entries allowed).

        Raises:
            ValueError: as many label lists or prompts as there are not images; bad labels (as `segment`).
        """
        if self.task != "segment":
            raise ValueError("this pipeline answers referring expressions (task='refer'): call refer()")
        images, lists, prompts = self._batch_inputs(images, labels, prompts)
        if not images:
            return []
        results = run_batch(self.method.instance, self.filter.instance, images, [as_labels(kept) for kept in lists],
                            prompts, refiner=self.refiner.instance)
        note = batch_warning(self.method.name, self.method.instance) if len(images) > 1 else None
        for result in results if note else []:
            result.warnings.append(note)
        return results

    def segment_each(self, images, labels, prompts=None) -> list:
        """`segment_batch`, except that an image that fails has its exception in its place: when the batch fails
        it is run image by image (a warning on each result says why), so each error is its own image's and the
        others' results still come back (what `eval`, `label` and `segment` record). A method that runs one image
        at a time is run so from the start."""
        images, lists, prompts = self._batch_inputs(images, labels, prompts)
        if not images:
            return []
        note = None
        if len(images) > 1 and batches(self.method.instance):
            try:
                return self.segment_batch(images, lists, prompts)
            except Exception as err:  # each image alone below, so an error is its own image's
                note = f"the batch failed ({type(err).__name__}: {err}); its images ran one at a time"
        out = []
        for image, kept, prompt in zip(images, lists, prompts):
            try:
                result = self.segment(image, kept, prompt=prompt)
            except Exception as err:
                out.append(err)
                continue
            result.warnings += [note] if note else []
            out.append(result)
        return out

    def _batch_inputs(self, images, labels, prompts) -> tuple[list, list, list]:
        """(images, one label list per image, one prompt per image), checked (`batch_inputs`; prompts given to a
        method that builds its own, `takes_prompt = False`, are refused for the whole call before anything runs);
        the pipeline loaded when there are images."""
        images = list(images)
        lists, prompts = batch_inputs(labels, prompts, len(images))
        if any(p is not None for p in prompts) and not getattr(METHODS.get(self.method.name)[0], "takes_prompt", True):
            raise ValueError(f"{self.method.name} builds its prompt from the labels; it takes no prompt or caption")
        if images:
            self.load()
        return images, lists, prompts

    def attention_maps(self, image, words, *, places=None, timestep: int | None = None, per_layer: bool = False,
                       seed: int = 0):
        """Each word's attention heat map over `image` (`promptseg.diffusion.wordmaps.word_maps`): a `WordMaps`
        whose `maps` is (len(words), H, W) float32 at the image's size; the model's read-out by default."""
        from promptseg.diffusion.wordmaps import word_maps

        if self.method.name == "baseline":
            readout = self.method.config
        else:
            recommended = self._backbone.method_defaults if self._backbone is not None else model_settings(self.model)
            readout = recommended_config("baseline", recommended, {})
        return word_maps(self.backbone, image, words, cross_weights=readout.cross_weights,
                         places=readout.places if places is None else places,
                         timestep=readout.timestep if timestep is None else timestep, per_layer=per_layer, seed=seed)

    def refer(self, image, expression: str) -> ReferResult:
        """What `expression` refers to in `image`: the method's `refer` (built with task="refer")."""
        if self.task != "refer":
            raise ValueError("this pipeline segments labels (task='segment'): build it with task='refer' to refer")
        check_expression(expression)
        self.load()
        method = self.method.instance
        with shared_encoding():
            return method.refer(method.prepare(image), expression)


def check_expression(expression: str) -> None:
    """Raise a ValueError for an empty referring expression (before any model loads)."""
    if not expression or not expression.strip():
        raise ValueError("the referring expression is empty; pass a phrase such as 'the red circle'")


def batch_inputs(labels, prompts, count: int) -> tuple[list, list]:
    """(one label list per image, one prompt per image) for `count` images, from one label list or a list of lists
    and one prompt (or None) or a list of prompts; the labels are not parsed yet (an image's bad list is its error).

    Raises:
        TypeError: labels given as one string.
        ValueError: as many label lists or prompts as there are not images.
    """
    if isinstance(labels, str):
        raise TypeError(f"labels must be a list of labels (or one list per image), not the string {labels!r}: "
                        f"pass [{labels!r}]")
    labels = list(labels)
    if labels and all(isinstance(item, (list, tuple)) for item in labels):
        if len(labels) != count:
            raise ValueError(f"{len(labels)} label lists for {count} images: give one list for every image, or one "
                             "list per image")
        lists = labels
    else:
        lists = [labels] * count
    prompts = [prompts] * count if prompts is None or isinstance(prompts, str) else list(prompts)
    if len(prompts) != count:
        raise ValueError(f"{len(prompts)} prompts for {count} images: give one prompt, or one per image")
    return lists, prompts


def run_batch(method, label_filter, images, labels: list, prompts: list, refiner=None) -> list[SegmentationResult]:
    """`run_stages` of several images: each image's filter decision, then the method on every image with kept
    labels at once (`promptseg.methods.batching`), then the refiner image by image. The images are encoded once
    for all stages, the VAE seeing them together."""
    pils = [to_pil(image) for image in images]
    with shared_encoding():
        if hasattr(label_filter, "decide_many") and len(pils) > 1:  # the filter's model sees the images together
            decided = label_filter.decide_many(pils, labels)
            decisions, captions = zip(*[_filtered(method, None, pil, kept, prompt, decision)
                                        for pil, kept, prompt, decision in zip(pils, labels, prompts, decided)])
        else:
            decisions, captions = zip(*[_filtered(method, label_filter, pil, kept, prompt)
                                        for pil, kept, prompt in zip(pils, labels, prompts)])
        rows = [i for i, decision in enumerate(decisions) if decision.kept]
        if batches(method) and len(rows) > 1:
            prepared = method.prepare_many([pils[i] for i in rows])
            found = method.segment_many(prepared, [decisions[i].kept for i in rows], [captions[i] for i in rows])
            results = dict(zip(rows, found))
        else:
            results = {i: _method_result(method, pils[i], decisions[i].kept, captions[i]) for i in rows}
        return [_finished(results.get(i), decisions[i], pils[i], refiner) for i in range(len(pils))]


def _filtered(method, label_filter, pil, labels, prompt, decision=None):
    """(the filter's decision on `labels` for `pil` (`decision` when already made), the method's caption:
    `prompt`, else the filter's caption unless the method learns its own)."""
    if decision is None:
        decision = label_filter(pil, labels) if label_filter is not None else FilterDecision(kept=list(labels))
    if prompt is None and getattr(method, "takes_prompt", True):
        prompt = decision.caption
    return decision, prompt


def _method_result(method, pil, kept, prompt) -> SegmentationResult:
    return method(pil, kept, prompt=prompt) if prompt is not None else method(pil, kept)


def _finished(result, decision, pil, refiner) -> SegmentationResult:
    """The method's `result` (None: every label dropped) with the filter's decision recorded, then refined."""
    if result is None:
        result = empty_result((pil.height, pil.width))
    result.warnings = list(decision.warnings) + result.warnings
    if decision.dropped:
        result.warnings.append(f"filter dropped {sorted(decision.dropped)}: see extra['filter']['dropped']")
    result.extra["filter"] = decision.as_dict()
    result.timings["filter"] = decision.seconds
    if refiner is None:
        return result
    if decision.kept:
        return apply_refiner(refiner, pil, result)
    result.extra["refine"] = {"name": refiner.name, "regions": [], "erased": [], "seconds": 0.0}
    return result


def run_stages(method, label_filter, image, labels, prompt: str | None = None, refiner=None) -> SegmentationResult:
    """Filter `labels` for `image`, segment it into the kept ones, then refine the label map with `refiner`.

    `label_filter` and `refiner` are built stages or None (no filter: every label is kept; no refiner: nothing is
    recorded under `extra["refine"]`). The result's `extra["filter"]` holds the filter's decision and its warnings
    join the result's. A filter caption, if any, becomes the method's prompt unless `prompt` is given or the method
    learns its own (`takes_prompt = False`, InvSeg). When every label is dropped (only possible with `min_keep=0`)
    the result is all background, with a warning, and the refiner is recorded with nothing redrawn. The image is
    encoded once for all stages.
    """
    pil = to_pil(image)
    with shared_encoding():
        decision, prompt = _filtered(method, label_filter, pil, as_labels(labels), prompt)
        result = _method_result(method, pil, decision.kept, prompt) if decision.kept else None
        return _finished(result, decision, pil, refiner)


@dataclass
class SettingOrigin:
    """One setting a method runs with on a model, and where its value comes from."""

    method: str
    setting: str
    value: object
    origin: str
    """"default" (the method's dataclass; its docstring names the paper), "profile <name>: <source>" (the model's
    architecture, `promptseg.models.profiles`) or "model folder" (its `promptseg_settings.json`)."""


def explain_settings(model: str = DEFAULT_MODEL, methods: Sequence[str] | None = None) -> list[SettingOrigin]:
    """What each method (all registered ones by default) runs with on `model`, without loading it, and the origin of
    every value: what `promptseg settings MODEL` prints.

    Raises:
        ValueError: an unknown method.
    """
    from promptseg.methods import list_methods, method_config
    from promptseg.models.profiles import architecture_profile
    from promptseg.models.zoo import BUNDLED

    folder = BUNDLED[model].folder if model in BUNDLED else Path(model).expanduser()
    profile = architecture_profile(folder if model in BUNDLED else model)
    settings = model_settings(model)
    own_file = Path(folder) / "promptseg_settings.json"
    own = json.loads(own_file.read_text()) if own_file.is_file() else {}
    rows = []
    for name in methods or sorted(list_methods()):
        config = method_config(name, **settings.get(name, {}))
        for item in dataclasses.fields(config):
            if item.name in own.get(name, {}):
                origin = "model folder"
            elif profile is not None and item.name in profile.settings.get(name, {}):
                origin = f"profile {profile.name}: {profile.sources.get(f'{name}.{item.name}', '')}".rstrip(": ")
            else:
                origin = "default"
            rows.append(SettingOrigin(name, item.name, getattr(config, item.name), origin))
    for key in ("blocks", "clip_hidden_layer", "cross_readout", "load_t5", "max_sequence_length", "filter", "refine"):
        if key in settings:
            if key in own:
                origin = "model folder"
            else:
                origin = f"profile {profile.name}: {profile.sources.get(key, '')}" if profile else "default"
            rows.append(SettingOrigin("(model)", key, settings[key], origin))
    chosen = settings.get("filter")
    for key, value in (settings.get("filters") or {}).get(chosen, {}).items():
        if key in ((own.get("filters") or {}).get(chosen) or {}):
            origin = "model folder"
        else:
            origin = f"profile {profile.name}: {profile.sources.get(f'filters.{chosen}.{key}', '')}".rstrip(": ")
        rows.append(SettingOrigin(f"(filter {chosen})", key, value, origin))
    return rows + memory_rows(folder, settings, profile.name if profile else None, methods)


def memory_rows(folder: Path, settings: dict, profile: str | None = None,
                methods: Sequence[str] | None = None) -> list[SettingOrigin]:
    """What the model's weights take (`promptseg.models.footprint`: exact parameter counts from a diffusers folder's
    configs, none read from the weights), the loading option that fits each card, and the memory each of `methods`
    (all by default) was measured to take on top on the `profile` architecture (`footprint.method_activations`);
    nothing for a folder that is not a diffusers folder (a hub id not in the local cache, a single file)."""
    from promptseg.models.footprint import denoiser_of, fits, folder_parameters, method_activations, weights_gb

    if not (Path(folder) / "model_index.json").is_file():
        return []
    params = folder_parameters(folder)
    if settings.get("load_t5") is False:  # the profile leaves T5 unloaded (SD3's)
        params.pop("text_encoder_3", None)
    denoiser = denoiser_of(params)
    origin = "parameter counts from the folder's configs; weights only (a method's activations come on top)"
    rows = [SettingOrigin("(memory)", "parameters_b", round(sum(params.values()) / 1e9, 3), origin),
            SettingOrigin("(memory)", "weights_bf16_gb", round(weights_gb(params), 2), origin)]
    if denoiser is not None:
        rows.append(SettingOrigin("(memory)", "weights_int8_gb", round(weights_gb(params, denoiser, int8=True), 2),
                                  "with --quantize int8 (the denoiser at a byte a parameter)"))
        for card, option in fits(params, denoiser).items():
            rows.append(SettingOrigin("(memory)", f"fits_{card}gb", option or "no",
                                      f"the first of bf16, --quantize int8, --offload model (+ int8), --offload "
                                      f"sequential whose resident weights take at most 90% of {card} GB"))
    for method, cell in sorted(method_activations(profile or "").items()):
        if methods is None or method in methods:
            value = (f"x{cell['ratio']}" if cell["extra_gb"] is None else f"+{cell['extra_gb']} GB")
            rows.append(SettingOrigin("(memory)", f"{method}_activations", value,
                                      f"measured on {profile}'s architecture: peak over weights and one forward at "
                                      f"the native size, fp32 on a CPU, x the reference where the width was reduced "
                                      f"({cell['source']})"))
    return rows
