"""Segment Anyword: the method class (prepare / refer / segment)."""

from __future__ import annotations

import re
import time

import numpy as np
import torch

from promptseg.diffusion.attention import attention_pass
from promptseg.diffusion.encode import PreparedImage, prepare_pixels, to_pil
from promptseg.diffusion.evidence import DenoisingEvidence
from promptseg.diffusion.memory import inversion_size, recomputed, working_latents
from promptseg.diffusion.noise import noised_latents
from promptseg.diffusion.readout import minmax, resize_maps
from promptseg.methods.anyword.config import AnywordConfig
from promptseg.methods.anyword.inversion import invert_tokens
from promptseg.methods.anyword.prompts import Region, add_support, find_regions, mask_regions, referent_map, select
from promptseg.methods.base import ReferResult, SegmentationResult, as_labels, register_method
from promptseg.methods.baseline import Baseline, BaselineConfig
from promptseg.models.sam import load_sam_cached
from promptseg.text import input_positions, label_scores, span_positions

_STOPWORDS = {"a", "an", "the", "of", "to", "on", "in", "at", "and", "with", "is", "that", "which", "by", "for"}

@register_method("anyword", AnywordConfig)
class Anyword:
    """Segment Anyword: mask-prompt inversion, linguistic-guided prompts, SAM masks (referring segmentation)."""

    takes_prompt = False  # the expression is the prompt
    one_at_a_time = "it inverts a mask prompt for each image"

    def __init__(self, backbone, config: AnywordConfig | None = None):
        self.backbone = backbone
        self.config = config or AnywordConfig()
        self.on_step = None
        """Optional `on_step(done, total)` after each inversion step (the demo's progress bar)."""
        c = self.config
        self.reader = Baseline(backbone, BaselineConfig(cross_weights=c.cross_weights, self_weights=c.self_weights,
                                                        places=c.places, refine_iterations=c.refine_iterations))
        self.layers = self.reader.layers  # without refinement the reader records cross-attention only
        self.sam = None
        if c.sam:
            try:
                self.sam = load_sam_cached(c.sam, backbone.device, backbone.dtype)
            except (OSError, FileNotFoundError) as err:
                raise type(err)(
                    f"anyword's mask model sam={c.sam!r} cannot be loaded ({err}). Set it to a SAM you have "
                    "(`--set sam=/path/to/sam-folder`, `--set sam=shapes-sam`, or sam=... in the API), or switch SAM off "
                    "with `--set sam=null` (then the attention regions are the masks: `sam_prompt` is unused and "
                    "`proposals` must be 'attention')"
                ) from err
        if c.linguistic:  # the parser loads with the method, not in the first image's call (none installed: no parse)
            from promptseg.text.language import load_parser

            try:
                load_parser()
            except ImportError:
                pass

    def prepare(self, image) -> PreparedImage:
        """Encode `image` (PIL or HxWx3 uint8); keeps the RGB image for SAM."""
        start = time.perf_counter()
        prepared = prepare_pixels(self.backbone, image)
        prepared.extra["image"] = to_pil(image)
        prepared.timings["prepare"] = time.perf_counter() - start
        return prepared

    # -- the steps -------------------------------------------------------------------------------------------

    def condition(self, expression: str, parsed) -> tuple[str, list[tuple[int, int]]]:
        """The prompt the UNet sees and the character spans of the concept words in it."""
        prefix = self.config.template.split("{}")[0]
        if parsed is None:  # no parse: every content word is a concept
            words = [(m.start(), m.end()) for m in re.finditer(r"[A-Za-z0-9']+", expression)
                     if m.group().lower() not in _STOPWORDS]
            text, spans = expression, words
        else:
            text, spans, cursor, pieces = "", [], 0, []
            words_only = self.config.condition == "words"
            for word in parsed.words():
                pieces.append(" " if words_only and pieces else "" if words_only else expression[cursor : word.start])
                written = word.lemma if self.config.lemmatize and word.lemma.isalpha() else word.text
                start = sum(len(p) for p in pieces)
                pieces.append(written)
                spans.append((start, start + len(written)))
                cursor = word.end
            pieces.append("" if words_only else expression[cursor:])
            text = "".join(pieces)
        prompt = self.config.template.format(text)
        shift = len(prefix)
        return prompt, [(a + shift, b + shift) for a, b in spans]

    def word_maps(self, prepared: PreparedImage, text: torch.Tensor, positions: list[list[int]]) -> torch.Tensor:
        """(W, h, w) maps in [0, 1], one per word, averaged over the read-out timesteps."""
        c = self.config
        total = 0
        for t in c.timesteps:
            noisy, _ = noised_latents(self.backbone, prepared.latents, t, c.seed)
            store = attention_pass(self.backbone, noisy, t, text, self.layers,
                                   self_products=self.config.refine_iterations)
            label_cross = {g: label_scores(store.mean("cross", g), [[p] for p in positions]) for g in self.reader.cross_grids}
            total = total + self.reader.scores({g: store.self_attention(g) for g in self.reader.self_grids}, label_cross)[0]
        return minmax((total / len(c.timesteps))[None])[0]

    def evidence_for(self, prepared: PreparedImage, grid: tuple[int, int]):
        """None, or phrase -> its denoising gain on `grid` (`promptseg.diffusion.evidence`; relative error drop) less the reference
        word's, cached per image."""
        c = self.config
        if c.evidence != "denoising":
            return None
        if "evidence" not in prepared.extra:
            prepared.extra["evidence"] = DenoisingEvidence(self.backbone, prepared.latents, c.evidence_timesteps, c.seed)
        source = prepared.extra["evidence"]

        def gain(phrase: str) -> np.ndarray:
            value = source.gain(c.evidence_template.format(phrase))
            if c.evidence_reference:
                value = value - source.gain(c.evidence_template.format(c.evidence_reference))
            return resize_maps(value[None, None].float(), grid)[0, 0].cpu().numpy()

        return gain

    def _grid(self, size: tuple[int, int]) -> tuple[int, int]:
        h, w = size
        scale = min(1.0, self.config.work_size / max(h, w))
        return max(1, round(h * scale)), max(1, round(w * scale))

    def proposals_for(self, prepared: PreparedImage, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
        """None (`proposals="attention"`), or SAM's object proposals for the image: (K, gh, gw) masks on the work grid
        and the (K, H, W) masks they come from; cached per image."""
        c = self.config
        if c.proposals != "sam":
            return None
        if "proposals" not in prepared.extra:
            full, _ = self.sam.propose(prepared.extra["image"], c.points_per_side, c.min_stability,
                                       min_area=c.min_region)
            small = resize_maps(torch.from_numpy(full.astype(np.float32))[:, None], grid)[:, 0].numpy() >= 0.5
            prepared.extra["proposals"] = (small.reshape(-1, *grid), full)
        return prepared.extra["proposals"]

    def candidates(self, referent, maps: dict, evidence=None, proposals=None) -> tuple[np.ndarray, list[Region]]:
        """The referent's map (the geometric mean of its bound words' maps) and its regions (its connected parts, or
        the `proposals` scored by it), each with its support; with `evidence`, a region's score is also weighted by
        its phrase's mean denoising gain inside it (relative to the best region's)."""
        words = sorted(referent.concept_words(), key=lambda w: w.start)
        bound = [maps[(w.start, w.end)] for w in words]
        score = referent_map(bound)
        if proposals is None:
            regions = find_regions(score, self.config.region_threshold, self.config.min_region)
        else:
            regions = mask_regions(proposals[0], score, proposals[1])
        add_support(regions, bound)
        if evidence is not None and regions:
            gain = evidence(" ".join(w.lemma if self.config.lemmatize and w.lemma.isalpha() else w.text for w in words))
            inside = [float(gain[r.mask].mean()) for r in regions]
            best = max(max(inside), 1e-12)
            for region, value in zip(regions, inside):
                region.score *= max(value, 0.0) / best
                region.gain = value
            if self.config.evidence_threshold is not None:
                regions = [r for r, v in zip(regions, inside) if v >= self.config.evidence_threshold]
            regions.sort(key=lambda r: -r.score)
        return score, regions

    def regions_for(self, referent, maps: dict, evidence=None, proposals=None) -> tuple[list[Region], np.ndarray, dict]:
        """The regions that are `referent` (after binding, support, position and relation) and its map."""
        c = self.config
        score, regions = self.candidates(referent, maps, evidence, proposals)
        attributes = [maps[(w.start, w.end)] for w in referent.attributes]
        if attributes:
            attribute = np.mean(attributes, axis=0)
            for region in regions:
                region.score += c.attribute_weight * float(attribute[region.mask].mean())
        anchors, info = None, {}
        if referent.relation is not None:
            _, anchors = self.candidates(referent.relation.other, maps, evidence, proposals)
            anchors = [a for a in anchors if a.support >= c.presence_threshold]
        chosen, anchor = select(regions, referent, c.presence_threshold, c.plural_ratio, anchors)
        if anchor is not None:
            info["anchor"] = list(anchor.box)
        info["candidates"] = [[*r.box, round(r.score, 4), round(r.support, 4)] + ([] if r.gain is None else
                                                                                 [round(r.gain, 4)]) for r in regions]
        return chosen, score, info

    def masks_from(self, prepared: PreparedImage, regions: list[Region], grid: tuple[int, int]) -> np.ndarray:
        """The union mask at the image's size: SAM's masks for the regions' prompts, or the regions themselves."""
        h, w = prepared.size
        if not regions:
            return np.zeros((h, w), bool)
        if all(r.source is not None for r in regions):  # SAM's own proposals
            return np.any([r.source for r in regions], axis=0)
        if self.sam is None:
            union = np.any([r.mask for r in regions], axis=0).astype(np.float32)
            return resize_maps(torch.from_numpy(union)[None, None], (h, w))[0, 0].numpy() >= 0.5
        sx, sy = w / grid[1], h / grid[0]
        boxes = [[r.box[0] * sx, r.box[1] * sy, r.box[2] * sx, r.box[3] * sy] for r in regions]
        points = [[[(r.peak[0] + 0.5) * sx, (r.peak[1] + 0.5) * sy]] for r in regions]
        image = prepared.extra["image"]
        kind = self.config.sam_prompt
        if kind == "point":
            masks, _ = self.sam.predict(image, points=points, labels=[[1]] * len(regions))
        elif kind == "box":
            masks, _ = self.sam.predict(image, boxes=boxes)
        else:
            masks = self.sam.predict(image, boxes=boxes)[0] | self.sam.predict(image, points=points,
                                                                               labels=[[1]] * len(regions))[0]
        return masks.any(axis=0)

    # -- the tasks -------------------------------------------------------------------------------------------

    def learnt_maps(self, prepared: PreparedImage, prompt: str, spans: list[tuple[int, int]]) -> tuple[np.ndarray, dict]:
        """Invert the words at character `spans` of `prompt` on the image, then read their maps: (W, gh, gw) on the
        work grid, and the inversion's log."""
        c = self.config
        positions = span_positions(self.backbone.tokenizer, prompt, spans)
        # the words' input embeddings are learnt (other encoders' rows, SD3's T5, are read, not learnt)
        flat = input_positions(self.backbone.tokenizer, sorted({p for span in positions for p in span}))
        with inversion_size(self.backbone, c.inversion_side) as smaller, recomputed(self.backbone, c.recompute):
            # the image encoded at the inversion size, once per image (nothing to learn: nothing encoded)
            latents = working_latents(self.backbone, prepared) if smaller and c.steps and flat else prepared.latents
            text, log = invert_tokens(self.backbone, latents, prompt, flat, c.steps, c.lr, c.batch,
                                      c.train_timesteps, c.seed, self.on_step, micro_batch=c.micro_batch)
        with torch.no_grad():
            maps = self.word_maps(prepared, text, positions)
        grid = self._grid(prepared.size)
        return resize_maps(maps[None].float(), grid)[0].clamp(0, 1).cpu().numpy(), log

    def _result(self, prepared, expression, regions, score, log, start, extra) -> ReferResult:
        grid = score.shape
        mask = self.masks_from(prepared, regions, grid)
        score_full = resize_maps(torch.from_numpy(score)[None, None], prepared.size)[0, 0].clamp(0, 1).numpy()
        extra["regions"] = [list(r.box) for r in regions]
        extra.update({"inversion_loss": log["loss"], "inversion_change": log["change"]})
        timings = {**prepared.timings, "refer": time.perf_counter() - start}
        return ReferResult(mask=mask, score=score_full.astype(np.float32), expression=expression, timings=timings,
                           warnings=list(log["warnings"]), extra=extra)

    def refer(self, prepared: PreparedImage, expression: str) -> ReferResult:
        """Segment what `expression` refers to in the prepared image (possibly nothing)."""
        from promptseg.text.language import parse_expression

        start = time.perf_counter()
        c = self.config
        parsed = parse_expression(expression) if c.linguistic else None
        prompt, spans = self.condition(expression, parsed)
        grid_maps, log = self.learnt_maps(prepared, prompt, spans)
        extra = {"prompt": prompt, "words": [prompt[a:b] for a, b in spans]}
        if parsed is None:
            score = referent_map([grid_maps.mean(0)])
            regions = find_regions(score, c.region_threshold, c.min_region)
            extra["candidates"] = [[*r.box, round(r.score, 4)] for r in regions]
        else:
            by_word = {(word.start, word.end): grid_maps[k] for k, word in enumerate(parsed.words())}
            grid = grid_maps.shape[1:]
            regions, score, info = self.regions_for(parsed.target, by_word, self.evidence_for(prepared, grid),
                                                    self.proposals_for(prepared, grid))
            extra.update(info)
        return self._result(prepared, expression, regions, score, log, start, extra)

    def segment(self, prepared: PreparedImage, labels) -> SegmentationResult:
        """Semantic segmentation through referring: each label (its first synonym) is a plural referent; a pixel
        takes the label whose mask covers it with the highest referent score (background elsewhere)."""
        from promptseg.methods.base import BACKGROUND

        start = time.perf_counter()
        labels = as_labels(labels)
        h, w = prepared.size
        best = np.zeros((h, w), np.float32)
        label_map = np.zeros((h, w), np.int32)
        scores = [np.zeros((h, w), np.float32)]
        warnings = []
        for k, label in enumerate(labels, start=1):
            result = self.refer_label(prepared, label.synonyms[0])
            covered = np.where(result.mask, result.score + 1.0, 0.0).astype(np.float32)
            take = covered > best
            label_map[take], best[take] = k, covered[take]
            scores.append(np.where(result.mask, result.score, 0.0).astype(np.float32))
            warnings += result.warnings
        names = [BACKGROUND] + [label.name for label in labels]
        timings = {**prepared.timings, "segment": time.perf_counter() - start}
        return SegmentationResult(label_map=label_map, scores=np.stack(scores), labels=names, timings=timings,
                                  warnings=warnings)

    def refer_label(self, prepared: PreparedImage, name: str) -> ReferResult:
        """Every instance of the class `name`: a plural referent whose head is the name (no parse needed)."""
        from promptseg.text.language import Referent, Word

        start = time.perf_counter()
        prompt = self.config.template.format(name)
        shift = len(self.config.template.split("{}")[0])
        grid_maps, log = self.learnt_maps(prepared, prompt, [(shift, shift + len(name))])
        referent = Referent(head=Word(text=name, lemma=name, start=0, end=len(name)), plural=True)
        evidence = self.evidence_for(prepared, grid_maps.shape[1:])
        regions, score, info = self.regions_for(referent, {(0, len(name)): grid_maps[0]}, evidence,
                                                self.proposals_for(prepared, grid_maps.shape[1:]))
        return self._result(prepared, name, regions, score, log, start, {"prompt": prompt, **info})

    def __call__(self, image, labels, prompt: str | None = None):
        """`segment(prepare(image), labels)`."""
        if prompt is not None:
            raise ValueError("anyword builds its prompts from the labels; it takes no prompt or caption")
        return self.segment(self.prepare(image), labels)
