"""Int8 denoisers (`load_backbone(..., quantize="int8")`, torchao through diffusers' `TorchAoConfig`): the label maps
agree with float32's, the weights take a byte a parameter, and transformers segment with them."""

import numpy as np
import pytest
import torch

from promptseg.data.shapes import ShapesDataset
from promptseg.methods.base import build_method
from promptseg.models import load_backbone
from promptseg.models.quantize import weight_bytes


def test_an_int8_shapes_unet_labels_as_float32_does():
    plain = load_backbone("shapes", device="cpu", dtype="fp32")
    int8 = load_backbone("shapes", device="cpu", dtype="fp32", quantize="int8")
    # the linear layers' weights are int8 (with per-row scales); convolutions and norms keep float32 (torchao's
    # weight-only int8 quantizes linear layers): on this small, convolution-heavy UNet 0.75 of the bytes
    linears = [m for m in int8.unet.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m.weight).__name__ != "Parameter" for m in linears)
    assert weight_bytes(int8.unet) < 0.8 * weight_bytes(plain.unet)
    data = ShapesDataset(split="test", n=6)
    names = list(data.class_names)
    agree = []
    for sample in data:
        maps = [build_method("baseline", b)(sample.image, names).label_map for b in (int8, plain)]
        agree.append(np.mean(maps[0] == maps[1]))
    assert np.mean(agree) >= 0.95, agree


@pytest.mark.parametrize("family", ["sd3", "flux1"])
def test_int8_transformers_segment(family, tmp_path):
    from PIL import Image

    from promptseg.models.dit_configs import save_dit
    from promptseg.models.flux_configs import save_flux

    folder = (save_dit if family == "sd3" else save_flux)(family, tmp_path / family, reduced=True)
    backbone = load_backbone(str(folder), device="cpu", dtype="fp32", quantize="int8")
    assert type(backbone.transformer.transformer_blocks[0].attn.to_q.weight).__name__ != "Parameter"
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    result = build_method("fastseg", backbone)(image, ["cat", "dog"])
    assert result.label_map.shape == (48, 64)
    # on a GPU the bf16 backbone is moved with its int8 weights: moved, never cast (diffusers refuses a cast)
    from promptseg.models.flux import FluxBackbone
    from promptseg.models.mmdit import backbone_from_parts

    fields = ("transformer", "vae", "text_encoders", "tokenizers", "scheduler", "t5_encoder", "t5_tokenizer")
    parts = {f: getattr(backbone, f) for f in fields}
    cls = FluxBackbone if family == "flux1" else type(backbone)
    moved = backbone_from_parts(family, parts, device="cpu", dtype="bf16", method_defaults=backbone.method_defaults,
                                cls=cls)
    assert moved.transformer.is_quantized and moved.vae.dtype == torch.bfloat16


def test_an_unknown_quantization_is_named():
    with pytest.raises(ValueError, match="quantize must be one of"):
        load_backbone("shapes", device="cpu", quantize="int3")


def test_a_gguf_denoiser_labels_as_float32_does(tmp_path):
    """The denoiser from a GGUF file (Q8_0 here, written by `write_gguf` from the float32 weights), the rest of the
    model from its folder: quantized weights in the module, label maps as float32's."""
    from promptseg.models.quantize import write_gguf

    plain = load_backbone("shapes", device="cpu", dtype="fp32")
    path = write_gguf(plain.unet, tmp_path / "unet-Q8_0.gguf", "Q8_0")
    quantized = load_backbone("shapes", device="cpu", dtype="fp32", quantize=path)
    weight = quantized.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q.weight
    assert type(weight).__name__ == "GGUFParameter" and weight.dtype == torch.uint8
    assert weight_bytes(quantized.unet) < weight_bytes(plain.unet)
    data = ShapesDataset(split="test", n=6)
    names = list(data.class_names)
    agree = [np.mean(build_method("baseline", quantized)(s.image, names).label_map
                     == build_method("baseline", plain)(s.image, names).label_map) for s in data]
    assert np.mean(agree) >= 0.95, agree
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        load_backbone("shapes", device="cpu", quantize=str(tmp_path / "missing.gguf"))


def test_a_q4_flux_transformer_segments(tmp_path, reduced_folder):
    from PIL import Image

    from promptseg.models.quantize import write_gguf

    folder = reduced_folder("flux1")
    plain = load_backbone(str(folder), device="cpu", dtype="fp32")
    path = write_gguf(plain.transformer, tmp_path / "transformer-Q4_0.gguf", "Q4_0")
    backbone = load_backbone(str(folder), device="cpu", dtype="fp32", quantize=path)
    assert type(backbone.transformer.transformer_blocks[0].attn.to_k.weight).__name__ == "GGUFParameter"
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    assert build_method("baseline", backbone)(image, ["cat", "dog"]).label_map.shape == (48, 64)
