"""Settings profiles of real architectures, recognised from a model's configs (not its name, so a local copy or a
fine-tune of the same architecture gets them), each value with its source.

A profile holds settings in the shape of a model folder's `promptseg_settings.json` ({method: {setting: value}} and
backbone-level keys such as "blocks"); `promptseg.models.zoo.model_settings` starts from the profile of the model's
architecture and lets the folder's own file override it. Only values a paper or its published code gives are here;
everything else stays at the method's dataclass default (whose docstrings name their sources).

    architecture_profile(Path("/models/sd3-medium"))    # Profile("sd3-medium", ...) or None
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Profile:
    """One architecture's settings.

    Attributes:
        name (`str`): the architecture ("sd3-medium").
        denoiser (`str`): the subfolder whose `config.json` identifies it ("transformer" or "unet").
        signature (`dict`): config values that identify it (all must match).
        settings (`dict`): what it runs with, as a `promptseg_settings.json`.
        sources (`dict`): "method.setting" (or a backbone-level key) -> where the value comes from.
    """

    name: str
    denoiser: str
    signature: dict
    settings: dict
    sources: dict = field(default_factory=dict)

    def matches(self, config: dict) -> bool:
        return all(config.get(key) == value for key, value in self.signature.items())


_SEG4DIFF = "Seg4Diff (arXiv 2509.18096), configs/eval_ovss.yaml of cvlab-kaist/Seg4Diff"
_CONCEPT_ATTENTION = "ConceptAttention (arXiv 2502.04320), experiments/pascal_voc_segmentation of helblazer811/ConceptAttention"
_PAPERS_FILTER = {
    "filter": "clip",
    "filters": {"clip": {"model": "openai/clip-vit-large-patch14",
                         "captioner": "Salesforce/blip-image-captioning-large"}},
}
"""The papers' class filter: a BLIP caption and CLIP presence choose each image's classes (DiffSegmenter's
protocol, which InvSeg follows; FA-Seg conditions on the same BLIP caption). The caption also reaches FastSeg as
its conditioning prompt's first half."""
_FILTER_SOURCES = {
    "filter": "DiffSegmenter's protocol, followed by InvSeg (Method): BLIP caption + CLIP scores choose the classes",
    "filters.clip.captioner": "FA-Seg (main_voc.py): BLIP caption + ' ; ' + classes is FastSeg's conditioning prompt",
}


def _unet_profile(name: str, signature: dict) -> Profile:
    return Profile(name=name, denoiser="unet", signature=signature, settings=_PAPERS_FILTER, sources=_FILTER_SOURCES)


_CONCEPT_ATTENTION_SD3 = ("ConceptAttention (arXiv 2502.04320), concept_attention/sd3/concept_attention_pipeline.py of "
                          "helblazer811/ConceptAttention")
_GOCA_FLUX = "GoCA (arXiv 2603.06178), src-main/configs/config-model/config_model_flux.py of Darkbblue/goca"


def _flux_profile(name: str, guidance_embeds: bool) -> Profile:
    """FLUX.1-dev (guidance embedded) or -schnell at their real width (19 double + 38 single blocks of 24 x 128
    channels): the baseline as GoCA's FLUX config reads it (published for dev; schnell gets the same, there being
    none for it), ConceptAttention as its VOC experiment, schnell's T5 length as BFL's and ConceptAttention's code."""
    settings = {
        "baseline": {"aggregation": "goca", "places": ["joint", "single"], "goca_reference": "single8.attn",
                     "timestep": 407, "refine_iterations": 2},
        "conceptattention": {"blocks": [14, 15, 16, 17], "softmax": False},
        **_PAPERS_FILTER,
    }
    sources = {
        **_FILTER_SOURCES,
        "baseline.aggregation": f"{_GOCA_FLUX}: layer_method 'dot-product similarity', rescale_method 'sum-1 "
                                "rescaling + per-token renorm+'",
        "baseline.places": f"{_GOCA_FLUX}: layer vit-block0..56-cross-map, every double and single block",
        "baseline.goca_reference": f"{_GOCA_FLUX}: ref_layer 'vit-block27-attn-out' (block 27 = single block 8, "
                                   "its attention output's image rows)",
        "baseline.timestep": f"{_GOCA_FLUX}: t 150, run as FluxImg2ImgPipeline strength 0.15 of 28 steps with mu "
                             "1.15: sigma = timesteps[23] = 0.407",
        "baseline.refine_iterations": f"{_GOCA_FLUX}: postprocess 'affinity', order 2",
        "conceptattention.blocks": f"{_CONCEPT_ATTENTION}: run_multi_class_seg_experiment.py, --layers default "
                                   "range(14, 18) of the 19 double blocks",
        "conceptattention.softmax": f"{_CONCEPT_ATTENTION}: segmentation.py, the VOC experiment sums the blocks' raw "
                                    "dot products (its softmax argument commented out) before the argmax",
    }
    if not guidance_embeds:
        settings["max_sequence_length"] = 256
        sources["max_sequence_length"] = ("ConceptAttention's image_generator.py and BFL's flux code: T5 "
                                          "max_length 256 for schnell (512 for dev, diffusers' default)")
    return Profile(name=name, denoiser="transformer",
                   signature={"num_layers": 19, "num_single_layers": 38, "in_channels": 64, "attention_head_dim": 128,
                              "guidance_embeds": guidance_embeds},
                   settings=settings, sources=sources)


PROFILES = (
    # Stable Diffusion's UNets at their real widths (fine-tunes of them too; the reduced test copies are not these)
    _unet_profile("sd15", {"cross_attention_dim": 768, "block_out_channels": [320, 640, 1280, 1280]}),
    _unet_profile("sd21-base", {"cross_attention_dim": 1024, "block_out_channels": [320, 640, 1280, 1280],
                                "sample_size": 64}),
    _unet_profile("sd21", {"cross_attention_dim": 1024, "block_out_channels": [320, 640, 1280, 1280],
                           "sample_size": 96}),
    _unet_profile("sdxl", {"cross_attention_dim": 2048, "block_out_channels": [320, 640, 1280],
                           "addition_embed_type": "text_time"}),
    Profile(
        name="sd3-medium",
        denoiser="transformer",
        # SD3-medium and SD3.5-medium share this topology (24 joint blocks, 2x2 patches, 16 latent channels)
        signature={"num_layers": 24, "patch_size": 2, "in_channels": 16},
        settings={"blocks": [9], "load_t5": False, "max_sequence_length": 77,
                  "baseline": {"timestep": 515, "readout": "seg4diff", "template": "{}", "joiner": " ",
                               "refine_iterations": 0, "background_threshold": None},
                  "conceptattention": {"normalize_concepts": "l2", "timestep": 602},
                  **_PAPERS_FILTER},
        sources={
            **_FILTER_SOURCES,
            "blocks": f"{_SEG4DIFF}: ATTENTION_LAYERS [9], the 'semantic grounding expert' block",
            "load_t5": f"{_SEG4DIFF}: sd3_backbone.py / sd35_backbone.py load the pipeline with text_encoder_3=None",
            "max_sequence_length": f"{_SEG4DIFF}: sd3_backbone.py encode_prompt(max_sequence_length=77): 77 CLIP "
                                   "rows + 77 zero T5 rows, the 154 text tokens its read-out assumes",
            "baseline.timestep": f"{_SEG4DIFF}: NOISE_STEPS 8 of NUM_INFERENCE_STEPS 28 with SD3's shift 3, i.e. "
                                 "the scheduler's timesteps[-8] = 515 (sigma 0.515)",
            "baseline.readout": f"{_SEG4DIFF}: seg4diff_model_ovss.py, the joint softmax's image-to-text shares, "
                                "token mean, NORM_BEFORE/AFTER_MERGE False in eval_ovss.yaml, argmax",
            "baseline.template": f"{_SEG4DIFF}: seg4diff_model_ovss.py, prompt = ' '.join(classnames)",
            "baseline.joiner": f"{_SEG4DIFF}: seg4diff_model_ovss.py, prompt = ' '.join(classnames)",
            "baseline.refine_iterations": f"{_SEG4DIFF}: seg4diff_model_ovss.py, no self-attention refinement",
            "baseline.background_threshold": f"{_SEG4DIFF}: no threshold; 'background' is a class name where the "
                                             "benchmark has one",
            "conceptattention.normalize_concepts": f"{_CONCEPT_ATTENTION_SD3}: _compute_heatmaps, concept vectors "
                                                   "L2-normalised over their channels",
            "conceptattention.timestep": f"{_CONCEPT_ATTENTION_SD3}: encode_image(num_inference_steps=4, "
                                         "timestep_index=-2) with shift 3: timesteps[-2] = 602 (sigma 0.602)",
        },
    ),
    Profile(
        name="sd35-large",
        denoiser="transformer",
        # SD3.5-large (and -large-turbo): 38 joint blocks of 38 heads, no published grounding block
        signature={"num_layers": 38, "patch_size": 2, "in_channels": 16},
        settings={"conceptattention": {"normalize_concepts": "l2", "timestep": 602}, **_PAPERS_FILTER},
        sources={
            **_FILTER_SOURCES,
            "conceptattention.normalize_concepts": f"{_CONCEPT_ATTENTION_SD3} (built for SD3.5-large-turbo): "
                                                   "_compute_heatmaps, concept vectors L2-normalised",
            "conceptattention.timestep": f"{_CONCEPT_ATTENTION_SD3}: encode_image(num_inference_steps=4, "
                                         "timestep_index=-2) with the scheduler's shift 3: timesteps[-2] = 602",
        },
    ),
    _flux_profile("flux1", guidance_embeds=True),
    _flux_profile("flux1-schnell", guidance_embeds=False),
)
"""Every profile, first match wins."""


def _config(source: str | Path, subfolder: str) -> dict | None:
    """`subfolder/config.json` of a local folder, or of a hub id from the local Hugging Face cache (never the
    network); None when there is none."""
    path = Path(str(source)).expanduser() / subfolder / "config.json"
    if not path.is_file():
        if str(source).count("/") != 1 or Path(str(source)).exists():
            return None
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(str(source), f"{subfolder}/config.json")
        except Exception:  # a malformed id: no profile
            return None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def architecture_profile(source: str | Path) -> Profile | None:
    """The profile of the model at `source` (a folder, or a hub id in the local cache), recognised from its
    denoiser's config; None when no profile matches or no config can be read."""
    configs: dict[str, dict | None] = {}
    for profile in PROFILES:
        if profile.denoiser not in configs:
            configs[profile.denoiser] = _config(source, profile.denoiser)
        config = configs[profile.denoiser]
        if config is not None and profile.matches(config):
            return profile
    return None
