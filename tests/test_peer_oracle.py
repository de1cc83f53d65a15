"""promptseg's attention capture checked against a peer's: attention-map-diffusers 1.0.0 (MIT, PyPI) captures the
same diffusers models, and is the oracle here (not a by-hand computation of our own).

For reduced random-weight copies of SD-1.5, SD-2.1, SDXL, SD3, SD3.5, FLUX.1-dev, FLUX.1-schnell, FLUX.2-klein-4B and
Z-Image-Turbo, built by
promptseg's own config writers, one denoiser forward at the same latents, timestep and prompt is captured by both;
per layer (UNet) or block (transformer) and per token, promptseg's image->text and image->image maps equal the
peer's. Conventions, and the conversion the test applies where they differ:
- both average the heads' probabilities (after the softmax) and form the logits in float32, on any dtype;
- a UNet's cross- and self-attention are full softmaxes in both;
- a joint block's image->text map is, in both, the image-to-text slice of the joint softmax over [image; text] keys
  (not renormalised); its image->image map is promptseg's softmax over the image keys alone, the peer's slice of
  the joint softmax: the peer's maps are taken per head, each head's rows renormalised over the image keys, then
  averaged (the same number; renormalising the head mean would weigh each head by its image share);
- promptseg names layers by their processor ("down_blocks.0....attn2.processor"), the peer by module path after
  the component ("unet.down_blocks.0....attn2");
- FLUX.1's single-stream blocks are not compared: the peer installs its processor there but records nothing (its
  FLUX processor records only calls with `encoder_hidden_states`, which a single block does not pass). They are
  checked against the block's own attention output in tests/test_flux.py. FLUX.2's single-stream blocks are
  compared (the peer reads their fused projection through the text length it records). Z-Image's 30 main layers are
  compared on the caption's own tokens (the peer's text range also holds the caption's pad tokens, which both
  softmaxes include).
"""

from types import SimpleNamespace

import pytest
import torch
from attention_map_diffusers import AttentionCapture  # the dev install has it (Makefile): never skipped

from promptseg.diffusion.capture import AttentionStore, capture, run_until_captured

PROMPT = "a photograph of a red cat and a dog on the grass"
TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 2e-5}
"""Both sides form float32 logits from the same queries and keys (bf16 ones on a bf16 model), so bf16 agrees as
tightly as fp32: the difference left is float32 summation order. Before promptseg formed its logits in float32, a
bf16 model's maps were off by up to several percent (the test's bf16 cases failed)."""


def _unet(name: str, dtype: torch.dtype):
    from promptseg.models.sd_configs import build_sd
    from promptseg.models.unet import backbone_from_parts

    return backbone_from_parts(name, build_sd(name, reduced=True), device="cpu", dtype=dtype)


def _dit(name: str, dtype: torch.dtype):
    from promptseg.models.dit_configs import build_dit
    from promptseg.models.mmdit import backbone_from_parts

    return backbone_from_parts(name, build_dit(name, reduced=True), device="cpu", dtype=dtype)


def _flux(name: str, dtype: torch.dtype):
    from promptseg.models.flux import backbone_from_parts
    from promptseg.models.flux_configs import build_flux, flux_configs

    defaults = {"sample_size": 16, "max_sequence_length": flux_configs(name, reduced=True)["max_sequence_length"]}
    return backbone_from_parts(name, build_flux(name, reduced=True), device="cpu", dtype=dtype,
                               method_defaults=defaults)


def _flux2(name: str, dtype: torch.dtype):
    from promptseg.models.flux2 import backbone_from_parts
    from promptseg.models.flux2_configs import build_flux2, flux2_configs

    defaults = {"sample_size": 8, "max_sequence_length": flux2_configs(name, reduced=True)["max_sequence_length"]}
    return backbone_from_parts(name, build_flux2(name, reduced=True, dtype=dtype), device="cpu", dtype=dtype,
                               method_defaults=defaults)


def _zimage(name: str, dtype: torch.dtype):
    from promptseg.models.zimage import backbone_from_parts
    from promptseg.models.zimage_configs import build_zimage, zimage_configs

    defaults = {"sample_size": 16, "max_sequence_length": zimage_configs(name, reduced=True)["max_sequence_length"]}
    return backbone_from_parts(name, build_zimage(name, reduced=True, dtype=dtype), device="cpu", dtype=dtype,
                               method_defaults=defaults)


ARCHITECTURES = {  # name -> (builder, latent shape); small latents: the maps, not the size, are under test
    "sd15": (_unet, (1, 4, 32, 32)),
    "sd21": (_unet, (1, 4, 32, 32)),
    "sdxl": (_unet, (1, 4, 32, 32)),
    "sd3": (_dit, (1, 16, 16, 16)),
    "sd35": (_dit, (1, 16, 16, 16)),
    "flux1": (_flux, (1, 16, 16, 16)),
    "flux1-schnell": (_flux, (1, 16, 16, 16)),
    "flux2-klein-4b": (_flux2, (1, 128, 8, 8)),
    "zimage-turbo": (_zimage, (1, 16, 16, 16)),
}
CASES = [(name, torch.float32) for name in ARCHITECTURES] + [
    pytest.param(name, torch.bfloat16, id=f"{name}-bf16") for name in ARCHITECTURES]


def peer_maps(backbone, latents, t, text) -> dict[tuple[str, str], torch.Tensor]:
    """{(peer layer id, relation): (B, heads, Q, K) float32} from one forward under the peer's capture."""
    component = "unet" if backbone.family == "unet" else "transformer"
    holder = SimpleNamespace(**{component: backbone.denoiser})
    peer = AttentionCapture(holder, relations=["image->text", "image->image"], timesteps="all", heads="all",
                            mode="fast", offload=None, dtype="float32", max_capture_bytes=None, allow_large_maps=True)
    with peer, torch.no_grad():
        backbone.predict(latents, t, text)
    return {(r.layer_id, r.relation): r.data.float() for r in peer.compute()}


def promptseg_maps(backbone, layers, latents, t, text) -> dict[str, torch.Tensor]:
    """{kind: (B, N, K)} of one layer (or joint block), captured by promptseg."""
    store = AttentionStore(latent_hw=tuple(latents.shape[-2:]), lazy_self_tokens=None)
    with torch.no_grad(), capture(backbone.denoiser, layers, store, stop_after_last=True):
        run_until_captured(backbone.predict, latents, t, text)
    return {layer.kind: store.mean(layer.kind, store.grids(layer.kind)[0]) for layer in layers}


@pytest.mark.parametrize("name,dtype", CASES)
def test_captured_maps_equal_attention_map_diffusers(name, dtype):
    build, shape = ARCHITECTURES[name]
    backbone = build(name, dtype)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(shape, generator=generator).to(dtype)
    t = torch.tensor([400] if backbone.family == "unet" else [600])
    text = backbone.encode_text(PROMPT)
    peer = peer_maps(backbone, latents, t, text)

    by_name: dict[str, list] = {}
    for layer in backbone.attention_layers():
        by_name.setdefault(layer.name, []).append(layer)
    compared = 0
    for name_, layers in by_name.items():
        if layers[0].place == "single" and backbone.family == "flux":
            continue  # the peer records nothing in FLUX.1's single-stream blocks (module docstring)
        module = name_.removesuffix(".processor")
        ours = promptseg_maps(backbone, layers, latents, t, text)
        component = "unet" if backbone.family == "unet" else "transformer"
        for kind, relation in (("cross", "image->text"), ("self", "image->image")):
            if kind not in ours:
                continue
            theirs = peer[(f"{component}.{module}", relation)]  # (B, heads, Q, K)
            if backbone.family != "unet" and kind == "self":  # the joint softmax's image slice, renormalised
                theirs = theirs / theirs.sum(dim=-1, keepdim=True)
            theirs = theirs.mean(dim=1)[..., :ours[kind].shape[-1]]  # Z-Image: the peer's text range has the pads
            assert ours[kind].shape == theirs.shape, (module, kind)
            difference = (ours[kind] - theirs).abs().max().item()
            assert difference <= TOLERANCE[dtype], f"{module} {relation}: max difference {difference:.2e}"
            compared += 1
    # every attention layer (UNet) or double/joint block (transformer; FLUX.2's single blocks too) had both relations
    assert compared == len([layer for layer in backbone.attention_layers()
                            if layer.place != "single" or backbone.family != "flux"]) > 0
