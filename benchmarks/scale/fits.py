"""What fits which card: each architecture's weights at bf16 and with an int8 denoiser, from exact parameter counts
(the published configs built on the meta device: `promptseg.models.footprint`), and the first loading option whose
resident weights take at most 90% of a 12 / 24 / 48 / 80 GB card.

    python benchmarks/scale/fits.py        # benchmarks/scale/results/fits.md and .json

Weights only: a method adds its activations (the scale tables give each method's peak as a multiple of one bare
forward's process at the native size).
"""

from __future__ import annotations

import json
from pathlib import Path

from promptseg.models.footprint import CARDS_GB, OPTIONS, fits, module_parameters, resident_gb, weights_gb

HERE = Path(__file__).parent


def components(name: str) -> dict[str, int]:
    """{component: parameters} of architecture `name`, from promptseg's config writers."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel

    from promptseg.models.dit_configs import dit_configs
    from promptseg.models.flux_configs import flux_configs
    from promptseg.models.sd_configs import configs

    if name.startswith("sd3"):
        spec = dit_configs(name)
        out = {"transformer": module_parameters(SD3Transformer2DModel, spec["transformer"]),
               "vae": module_parameters(AutoencoderKL, spec["vae"])}
        for i, clip in enumerate(spec["text_encoders"]):
            out["text_encoder" + ("" if i == 0 else f"_{i + 1}")] = module_parameters(CLIPTextModelWithProjection, clip)
        out["text_encoder_3"] = module_parameters(T5EncoderModel, flux_configs("flux1")["t5"])  # T5-XXL
        return out
    if name.startswith("qwen"):
        from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
        from transformers import Qwen2_5_VLForConditionalGeneration

        from promptseg.models.qwenimage_configs import qwenimage_configs

        spec = qwenimage_configs(name)
        return {"transformer": module_parameters(QwenImageTransformer2DModel, spec["transformer"]),
                "vae": module_parameters(AutoencoderKLQwenImage, spec["vae"]),
                "text_encoder": module_parameters(Qwen2_5_VLForConditionalGeneration,
                                                  {"text_config": spec["text"], "vision_config": spec["vision"]})}
    if name.startswith("zimage"):
        from diffusers import ZImageTransformer2DModel
        from transformers import Qwen3Model

        from promptseg.models.zimage_configs import zimage_configs

        spec = zimage_configs(name)
        return {"transformer": module_parameters(ZImageTransformer2DModel, spec["transformer"]),
                "vae": module_parameters(AutoencoderKL, spec["vae"]),
                "text_encoder": module_parameters(Qwen3Model, spec["qwen3"])}
    if name.startswith("flux2"):
        from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
        from transformers import Qwen3ForCausalLM

        from promptseg.models.flux2_configs import flux2_configs

        spec = flux2_configs(name)
        return {"transformer": module_parameters(Flux2Transformer2DModel, spec["transformer"]),
                "vae": module_parameters(AutoencoderKLFlux2, spec["vae"]),
                "text_encoder": module_parameters(Qwen3ForCausalLM, spec["qwen3"])}
    if name.startswith("flux"):
        spec = flux_configs(name)
        return {"transformer": module_parameters(FluxTransformer2DModel, spec["transformer"]),
                "vae": module_parameters(AutoencoderKL, spec["vae"]),
                "text_encoder": module_parameters(CLIPTextModel, spec["clip"]),
                "text_encoder_2": module_parameters(T5EncoderModel, spec["t5"])}
    spec = configs(name)
    out = {"unet": module_parameters(UNet2DConditionModel, spec["unet"]),
           "vae": module_parameters(AutoencoderKL, spec["vae"]),
           "text_encoder": module_parameters(CLIPTextModel, spec["text_encoder"])}
    if "text_encoder_2" in spec:
        out["text_encoder_2"] = module_parameters(CLIPTextModelWithProjection, spec["text_encoder_2"])
    return out


SCALE_RESULTS = {"sd15": ("scale", 512, "sd15"), "sdxl": ("scale_sdxl", 1024, "sdxl"),
                 "sd3": ("scale_sd3", 1024, "sd3-medium"), "flux1": ("scale_flux1", 1024, "flux1")}
"""Architecture -> (its scale table, native side, the architecture profile it measures)."""


def activation_table(results: Path = HERE / "results") -> dict:
    """{profile: {method: {"extra_gb", "ratio", "source"}}}: each method's peak resident memory over the reference
    process's (weights, the image's encode, one bare forward) at the native size, 5 names, fp32 on this CPU, from the
    committed scale tables. `extra_gb` is None where the table's model is reduced in width (FLUX.1): its ratio is
    what transfers, not its gigabytes."""
    out = {}
    for arch, (stem, side, profile) in SCALE_RESULTS.items():
        rows = [r for r in json.loads((results / f"{stem}.json").read_text())["rows"]
                if r["side"] == side and r["labels"] == 5 and r["filter"] == "none" and not r.get("settings")
                and "peak_rss_gb" in r]
        reference = next(r for r in rows if r["method"] == "reference")
        reduced = arch == "flux1"
        out[profile] = {r["method"]: {"extra_gb": None if reduced else
                                      round(max(r["peak_rss_gb"] - reference_memory(reference, r), 0), 2),
                                      "ratio": round(r["peak_rss_gb"] / reference_memory(reference, r), 2),
                                      "source": f"benchmarks/scale/results/{stem}.md"}
                        for r in rows if r["method"] != "reference"}
    return out


def reference_memory(reference: dict, row: dict) -> float:
    """The reference row's peak RSS measured as `row`'s was (`scale.py --memory-pass`): its memory pass's for a row
    with one, its timed run's (the default allocator) for a row without."""
    if "memory_pass" in row:
        return reference["peak_rss_gb"]
    return reference.get("peak_rss_gb_default_allocator", reference["peak_rss_gb"])


ARCHITECTURES = {"sd15": "SD 1.5", "sd21": "SD 2.1", "sdxl": "SDXL", "sd3": "SD3-medium", "sd35-large": "SD3.5-large",
                 "flux1": "FLUX.1-dev / schnell", "flux2-klein-4b": "FLUX.2-klein-4B", "flux2-klein-9b": "FLUX.2-klein-9B",
                 "zimage-turbo": "Z-Image-Turbo", "qwen-image": "Qwen-Image"}


def main() -> None:
    rows = []
    for name, title in ARCHITECTURES.items():
        params = components(name)
        denoiser = "unet" if "unet" in params else "transformer"
        rows.append({"architecture": title, "parameters": params, "denoiser": denoiser,
                     "bf16_gb": weights_gb(params), "int8_gb": weights_gb(params, denoiser, int8=True),
                     "resident_gb": {o: resident_gb(params, denoiser, o) for o in OPTIONS},
                     "fits": fits(params, denoiser)})
        print(rows[-1]["architecture"], rows[-1]["fits"], flush=True)
        if name == "sd3":  # SD3-medium's profile loads no T5 (Seg4Diff's way)
            params = {k: v for k, v in params.items() if k != "text_encoder_3"}
            rows.append({"architecture": f"{title} without T5 (its profile)", "parameters": params,
                         "denoiser": denoiser, "bf16_gb": weights_gb(params),
                         "int8_gb": weights_gb(params, denoiser, int8=True),
                         "resident_gb": {o: resident_gb(params, denoiser, o) for o in OPTIONS},
                         "fits": fits(params, denoiser)})
    out = HERE / "results" / "fits"
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    lines = ["# What fits which card (weights only, from exact parameter counts)", "",
             "Made by `python benchmarks/scale/fits.py`. Parameters in billions (denoiser / text encoders / VAE); weights "
             "in GB at 2 bytes a parameter (bf16), and with the denoiser's at one (int8, `--quantize int8`); each card "
             "column is the first loading option whose resident weights take at most 90% of it (offload model: one "
             "component resident at a time; sequential: one denoiser layer and the largest text encoder). A method's "
             "activations come on top.", "",
             "| architecture | denoiser | text encoders | VAE | bf16 | int8 denoiser | "
             + " | ".join(f"{c} GB" for c in CARDS_GB) + " |",
             "| --- | --- | --- | --- | --- | --- | " + " | ".join("---" for _ in CARDS_GB) + " |"]
    for row in rows:
        p = row["parameters"]
        texts = sum(v for k, v in p.items() if k.startswith("text_encoder"))
        lines.append(f"| {row['architecture']} | {p[row['denoiser']] / 1e9:.2f} | {texts / 1e9:.2f} | "
                     f"{p['vae'] / 1e9:.3f} | {row['bf16_gb']:.1f} | {row['int8_gb']:.1f} | "
                     + " | ".join(row["fits"][c] or "no" for c in CARDS_GB) + " |")
    activations = activation_table()
    (HERE.parents[1] / "src" / "promptseg" / "models" / "activations.json").write_text(json.dumps(activations, indent=1))
    methods = sorted({m for table in activations.values() for m in table})
    lines += ["", "A method's memory on top of the weights, measured (`python benchmarks/scale/scale.py --arch ...`): its "
              "process's peak over the reference process's (weights, the image's encode, one bare forward) at the "
              "native size with 5 names, fp32 on this CPU (about half at bf16), as extra GB (x the reference). FLUX.1 "
              "ran at reduced width: its ratio, not its gigabytes, transfers. `promptseg settings MODEL --method M` "
              "prints the model's row.", "",
              "| architecture (profile) | " + " | ".join(methods) + " |", "| --- | " + " | ".join("---" for _ in methods)
              + " |"]
    for profile, table in activations.items():
        cells = []
        for method in methods:
            cell = table.get(method)
            if cell is None:
                cells.append("-")
            elif cell["extra_gb"] is None:
                cells.append(f"x{cell['ratio']:.2f}")
            else:
                cells.append(f"+{cell['extra_gb']:.2f} (x{cell['ratio']:.2f})")
        lines.append(f"| {profile} | " + " | ".join(cells) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
