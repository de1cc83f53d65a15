"""Settings of Segment Anyword."""

from __future__ import annotations

from dataclasses import dataclass, field

from promptseg.diffusion.memory import check_inversion_side


@dataclass
class AnywordConfig:
    """Settings of Segment Anyword. Resolutions are fractions of the latent side (SD 1.5: 0.25 = 16x16).

    The paper gives the outline (learn the concept words' token embeddings with the denoising loss, average
    cross-attention over timesteps, bind prompts by the parse, refine with SAM) but not these numbers; the defaults
    are ours, and a model folder's `promptseg_settings.json` may recommend others (the bundled `shapes` model's were
    chosen on shapes_ref val).
    """

    steps: int = 10
    """Mask-prompt inversion steps (0 = no inversion: the ablation "without inversion")."""
    lr: float = 5e-3
    """Adam learning rate of the concept words' input token embeddings."""
    batch: int = 1
    """Noise draws (timestep, noise) per inversion step. The paper gives no number; 1 halves the inversion's cost
    against 2 (at SD-1.5's size the inversion is most of the method's cost) and scored as 2 did on shapes_ref val
    (cIoU 64.0 against 64.2 without SAM, 88.2 against 88.6 with SAM proposals: `benchmarks/referring/results/anyword_val.md`);
    the shapes model keeps the 2 its settings were chosen with."""
    micro_batch: int | None = 1
    """Noise draws per UNet pass of the inversion, their gradients accumulated over `batch` (the same gradient):
    1 keeps the activation memory of one draw (half of a batch of 2: issue 22's memory bound); None: all `batch`
    draws in one pass (faster on a GPU with memory to spare)."""
    inversion_side: int | None = None
    """Longest image side, in pixels, of the mask-prompt inversion (the image VAE-encoded at that size for the
    denoising loss); the word maps are read at the model's native size. None: 512 px on a diffusion transformer whose
    native size is larger (FLUX.1, SD3 at 1024 px: the paper's SD-1.5 size, a quarter of the image tokens), the
    native size on a UNet and on smaller models (`promptseg.diffusion.memory.inversion_size`); the native size or
    more: the native size."""
    recompute: bool | None = None
    """Recompute the denoiser's blocks in the backward pass of the inversion instead of keeping their activations
    (gradient checkpointing, `promptseg.diffusion.memory`): about one more forward a step for the memory of one
    block. None: on a transformer, off on a UNet."""
    train_timesteps: tuple[int, int] = (50, 500)
    """Range of the timesteps drawn for the denoising loss."""
    timesteps: tuple[int, ...] = (100, 300, 500)
    """Timesteps at which the cross-attention is read with the learnt embeddings; the maps are averaged."""
    cross_weights: dict[float, float] = field(default_factory=lambda: {0.125: 0.3, 0.25: 0.5, 0.5: 0.1, 1.0: 0.1})
    """Weight of each cross-attention resolution (DiffSegmenter's)."""
    self_weights: dict[float, float] = field(default_factory=lambda: {1.0: 1.0})
    """Self-attention resolutions that refine the word maps; the finest sets the map grid."""
    places: tuple[str, ...] = ("down", "mid", "up")
    """UNet parts whose attention layers are read."""
    refine_iterations: int = 1
    """Times the word maps are propagated by self-attention."""
    template: str = "{}"
    """Generation condition; `{}` becomes the expression (the paper conditions on the expression itself)."""
    condition: str = "expression"
    """"expression": the UNet sees the expression as written (the paper); "words": only its concept words, in order
    ("the red circle left of the square" -> "red circle square"), for models that read articles and relation words
    poorly."""
    lemmatize: bool = False
    """Condition on the parse's lemmas of the concept words ("the circles" -> "the circle") rather than the words
    as written; for text encoders that never saw plurals (the bundled `shapes` model's tokenizer)."""
    linguistic: bool = True
    """Linguistic-guided regularisation: bind modifiers to their head, filter regions by position and relation, one
    region for a singular referent. False (the ablation): every content word's map is averaged and every region is
    kept."""
    evidence: str = "attention"
    """What ranks and shapes a referent's regions: "attention" (its bound words' cross-attention maps, the paper) or
    "denoising" (those maps and the phrase's denoising gain, `promptseg.diffusion.evidence`; ours, costs two UNet batches of
    `evidence_timesteps`)."""
    evidence_timesteps: tuple[int, ...] = (100, 200, 300, 400, 500, 600, 700, 800)
    """Timesteps of the denoising evidence, one noise draw each (one UNet batch)."""
    evidence_template: str = "{}"
    """How a phrase is written when its denoising gain is read (`{}` becomes "red circle"; "a {}" for a model trained
    on captions like "a red circle and a blue square"); the reference word is written the same way."""
    evidence_reference: str | None = "object"
    """A generic word whose gain is subtracted from the phrase's: a salient object lowers every prompt's error, and
    the difference keeps what the phrase itself explains (None: the phrase's gain alone)."""
    evidence_threshold: float | None = None
    """With "denoising" evidence: a region is kept only if the phrase's mean gain inside it (the relative drop of the
    noise-prediction error, unnormalised) is at least this; None: no such test. The no-target decision on models
    whose normalised attention cannot say "absent" (chosen on val for the shapes model)."""
    proposals: str = "attention"
    """Where candidate regions come from: "attention" (the paper: connected parts of the referent's map above
    `region_threshold`, each then prompting SAM with its box) or "sam" (ours: every object SAM finds from a point
    grid, `SamPredictor.propose`, each scored by the referent's map and evidence inside it and, when chosen, kept as
    SAM drew it). Needs `sam`. Without the parse (`linguistic=False`) the map's own regions are kept, as in the
    paper's ablation."""
    points_per_side: int = 8
    """With "sam" proposals: the point grid's side (8: 64 point prompts, one SAM image encoding)."""
    min_stability: float = 0.7
    """With "sam" proposals: the lowest stability score of a kept proposal (segment-anything: 0.95; with the bundled
    `shapes-sam` 0.7 covers val objects best, `benchmarks/referring/results/sam_proposals.md`)."""
    region_threshold: float = 0.5
    """A region is a connected part of the referent map (min-max normalised) at or above this value."""
    min_region: float = 0.005
    """Regions smaller than this fraction of the image are noise and dropped."""
    plural_ratio: float = 0.6
    """A plural referent keeps every region whose score is at least this fraction of the best region's."""
    presence_threshold: float = 0.0
    """A region is kept only when every word bound to the referent has at least this mean score inside it (0: never
    empty). The no-target decision: "the green triangle" over a green square and a red triangle finds no region."""
    attribute_weight: float = 0.5
    """Weight of attribute nouns ("in a red shirt") when regions are ranked."""
    sam: str | None = "facebook/sam-vit-base"
    """Promptable mask model (hub id, folder or bundled name) that turns region prompts into masks; None: the
    regions themselves are the masks (the ablation "without SAM")."""
    sam_prompt: str = "box"
    """What each region gives SAM: "box" (its bounding box), "point" (its peak) or "box+point"."""
    work_size: int = 128
    """Longest side of the grid where regions are found (the maps are upsampled to it)."""
    seed: int = 0
    """Seed of the noise draws (inversion and read-out)."""

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        check_inversion_side(self.inversion_side)
        if self.micro_batch is not None and self.micro_batch < 1:
            raise ValueError(f"micro_batch must be >= 1 or None, got {self.micro_batch}")
        if not self.timesteps:
            raise ValueError("timesteps must name at least one timestep for the read-out, e.g. (100, 300, 500)")
        if self.condition not in ("expression", "words"):
            raise ValueError(f"condition must be 'expression' or 'words', got {self.condition!r}")
        if self.evidence not in ("attention", "denoising"):
            raise ValueError(f"evidence must be 'attention' or 'denoising', got {self.evidence!r}")
        if self.sam_prompt not in ("box", "point", "box+point"):
            raise ValueError(f"sam_prompt must be 'box', 'point' or 'box+point', got {self.sam_prompt!r}")
        if self.proposals not in ("attention", "sam"):
            raise ValueError(f"proposals must be 'attention' or 'sam', got {self.proposals!r}")
        if self.evidence_template.count("{}") != 1:
            raise ValueError(f"evidence_template must contain '{{}}' exactly once, got {self.evidence_template!r}")
        if self.template.count("{}") != 1:
            raise ValueError(f"template must contain '{{}}' exactly once, got {self.template!r}")
        if isinstance(self.sam, str) and self.sam.lower() in ("", "none"):
            self.sam = None
        if self.proposals == "sam" and self.sam is None:
            raise ValueError("proposals='sam' needs a SAM (sam=...); without one use proposals='attention'")
        self.timesteps = tuple(int(t) for t in self.timesteps)
        self.train_timesteps = tuple(int(t) for t in self.train_timesteps)
        self.evidence_timesteps = tuple(int(t) for t in self.evidence_timesteps)
