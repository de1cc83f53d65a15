"""What a model's weights take (`promptseg.models.footprint`): exact parameter counts from configs on the meta
device, and the loading option that fits each card."""

import json

from diffusers import UNet2DConditionModel

from promptseg.models.footprint import fits, folder_parameters, module_parameters, resident_gb
from promptseg.models.sd_configs import configs


def test_counts_from_configs_are_the_published_and_the_loaded_ones(reduced_folder):
    # SD 1.5's UNet has 859,520,964 parameters (its published checkpoint), counted without allocating them
    assert module_parameters(UNet2DConditionModel, configs("sd15")["unet"]) == 859_520_964
    from promptseg.models import load_backbone

    folder = reduced_folder("sd3")
    counts = folder_parameters(folder)
    loaded = load_backbone(str(folder), device="cpu", dtype="fp32")
    assert counts["transformer"] == sum(p.numel() for p in loaded.transformer.parameters())
    assert counts["text_encoder_2"] == sum(p.numel() for p in loaded.text_encoders[1].parameters())
    assert set(counts) == {"transformer", "vae", "text_encoder", "text_encoder_2"}


def test_the_first_option_that_fits_each_card_is_chosen():
    params = {"transformer": 12e9, "text_encoder": 0.1e9, "text_encoder_2": 4.8e9, "vae": 0.08e9}  # FLUX-like
    assert resident_gb(params, "transformer", "bf16") == (12e9 + 0.1e9 + 4.8e9 + 0.08e9) * 2 / 1e9
    assert resident_gb(params, "transformer", "offload model") == 24.0  # the transformer alone
    assert resident_gb(params, "transformer", "offload model + int8") == 12.0
    assert resident_gb(params, "transformer", "offload sequential") == 9.6  # T5, the largest text encoder
    assert fits(params, "transformer") == {12: "offload sequential", 24: "offload model + int8", 48: "bf16",
                                           80: "bf16"}


def test_settings_prints_the_memory_rows(tmp_path, capsys):
    from promptseg.cli import main
    from promptseg.models.sd_configs import save_sd

    folder = save_sd("sd15", tmp_path / "sd15", reduced=True)
    assert main(["settings", str(folder), "--method", "baseline"]) == 0
    rows = {line.split()[1]: line for line in capsys.readouterr().out.splitlines() if line.startswith("(memory)")}
    total = sum(folder_parameters(folder).values())
    assert json.loads(rows["parameters_b"].split()[2]) == round(total / 1e9, 3)
    assert set(rows) >= {"weights_bf16_gb", "weights_int8_gb", "fits_12gb", "fits_80gb"}


def test_settings_prints_a_methods_measured_activations_for_a_known_architecture(tmp_path, capsys):
    """SD-1.5's published UNet config (no weights: `settings` reads configs only) picks its measured row."""
    from promptseg.cli import main
    from promptseg.models.footprint import method_activations
    from promptseg.models.sd_configs import save_sd

    folder = save_sd("sd15", tmp_path / "sd15", reduced=True)
    (folder / "unet" / "config.json").write_text(json.dumps(configs("sd15")["unet"]))
    assert main(["settings", str(folder), "--method", "fastseg"]) == 0
    rows = {line.split()[1]: line for line in capsys.readouterr().out.splitlines() if line.startswith("(memory)")}
    measured = method_activations("sd15")
    assert set(measured) >= {"baseline", "fastseg", "invseg", "anyword"}
    assert f"+{measured['fastseg']['extra_gb']} GB" in rows["fastseg_activations"]
    assert "baseline_activations" not in rows  # only the method asked for


def test_the_packaged_activations_are_the_committed_scale_tables():
    """`benchmarks/scale/fits.py` writes them from `benchmarks/scale/results/scale*.json`; neither may drift from the other."""
    import importlib.util
    from pathlib import Path

    from promptseg.models.footprint import method_activations

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "scale" / "fits.py"
    spec = importlib.util.spec_from_file_location("fits_benchmark", path)
    fits_benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fits_benchmark)
    table = fits_benchmark.activation_table()
    assert {profile: method_activations(profile) for profile in table} == table
    assert table["flux1"]["invseg"]["extra_gb"] is None and table["flux1"]["invseg"]["ratio"] > 1
