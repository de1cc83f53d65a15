"""Prompt inversion at a smaller size on a diffusion transformer (`promptseg.diffusion.memory.inversion_size`):
which size each architecture gets, the optimisation's forwards at that size, the read-out at the native one, and
the backbone back at its native size after (also when the inversion fails)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from promptseg.diffusion.memory import INVERSION_SIDE, inversion_latent
from promptseg.methods.base import build_method
from promptseg.models import load_backbone


@pytest.fixture(scope="module")
def flux(reduced_folder):
    return load_backbone(str(reduced_folder("flux1")), device="cpu", dtype="fp32")  # 256 px: 32x32 latents, 16x16 tokens


def _arch(family, latent, vae=8, patch=2):
    return SimpleNamespace(family=family, native_latent_size=latent, vae_scale_factor=vae, patch_size=patch)


@pytest.mark.parametrize("arch, expected", [
    (_arch("flux", (128, 128)), (64, 64)),  # FLUX.1 at 1024 px: 512 px, 32x32 tokens
    (_arch("mmdit", (128, 128)), (64, 64)),  # SD3-medium the same
    (_arch("flux2", (64, 64), vae=16, patch=1), (32, 32)),  # FLUX.2's patchified latents: a token a cell
    (_arch("flux", (128, 96)), (64, 48)),  # 1024 x 768: the aspect ratio kept, whole tokens
    (_arch("flux", (64, 64)), None),  # a transformer at 512 px: its native size
    (_arch("unet", (128, 128), patch=1), None),  # SDXL keeps 1024 px (512 is out of its training)
])
def test_each_architecture_inverts_at_512_px_or_its_native_size(arch, expected):
    assert INVERSION_SIDE == 512
    assert inversion_latent(arch) == expected


def test_a_named_inversion_side_overrides_and_the_native_size_turns_it_off():
    flux = _arch("flux", (128, 128))
    assert inversion_latent(flux, 768) == (96, 96)
    assert inversion_latent(flux, 1024) is None and inversion_latent(flux, 2048) is None
    assert inversion_latent(_arch("unet", (64, 64), patch=1), 256) == (32, 32)  # asked for, a UNet gets it too
    with pytest.raises(ValueError, match="inversion_side must be a positive"):
        inversion_latent(flux, 0)
    with pytest.raises(ValueError, match="inversion_side must be a positive"):
        build_method("invseg", SimpleNamespace(), inversion_side=-1)


def _predict_sizes(backbone, monkeypatch) -> list:
    sizes = []
    real = type(backbone).predict
    monkeypatch.setattr(type(backbone), "predict",
                        lambda self, noisy, *a, **k: sizes.append((torch.is_grad_enabled(), tuple(noisy.shape[-2:])))
                        or real(self, noisy, *a, **k))
    return sizes


def test_invseg_optimises_at_the_inversion_size_and_reads_at_the_native_one(flux, image, monkeypatch):
    sizes = _predict_sizes(flux, monkeypatch)
    invseg = build_method("invseg", flux, steps=2, inversion_side=128)
    assert invseg.loss_grid == (8, 8)  # the native size's plan: 1/4 of the 32x32 latent
    result = invseg(image, ["cat", "dog"])
    assert [s for grad, s in sizes if grad] == [(16, 16)] * 2  # each step: the views at 128 px
    assert {s for grad, s in sizes if not grad} == {(32, 32)}  # the read-out at 256 px
    assert result.label_map.shape == (96, 128) and len(result.extra["loss"]) == 2
    assert flux.latent_size == (32, 32) and invseg.loss_grid == (8, 8) and invseg.pool_grid == (8, 8)
    # the loss grid at 128 px: 1/4 of the 16x16 latent, pooled from 8x8 tokens
    seen = []
    monkeypatch.setattr(type(invseg), "loss", lambda self, maps, *a: seen.append(self.loss_grid) or (maps.mean(), {
        "cluster": 0.0, "entropy": 0.0}))
    invseg(image, ["cat", "dog"])
    assert seen == [(4, 4)] * 2


def test_anyword_inverts_the_image_encoded_at_the_inversion_size(flux, image, monkeypatch):
    sizes = _predict_sizes(flux, monkeypatch)
    encoded = []
    real = type(flux).encode_image
    monkeypatch.setattr(type(flux), "encode_image", lambda self, pixels: encoded.append(tuple(pixels.shape[-2:]))
                        or real(self, pixels))
    anyword = build_method("anyword", flux, sam=None, steps=2, inversion_side=128)
    prepared = anyword.prepare(image)
    answer = anyword.refer(prepared, "the red cat")
    assert encoded == [(256, 256), (128, 128)]  # the image for the read-out, then for the inversion
    assert [s for grad, s in sizes if grad] == [(16, 16)] * 2
    assert {s for grad, s in sizes if not grad} == {(32, 32)}  # the word maps at every read-out timestep
    assert len(answer.extra["inversion_loss"]) == 2 and flux.latent_size == (32, 32)
    anyword.segment(prepared, ["cat", "dog"])  # an inversion a label, the image encoded once
    assert encoded == [(256, 256), (128, 128)] and len([s for grad, s in sizes if grad]) == 6


def test_the_native_size_comes_back_when_the_inversion_fails(flux, image, monkeypatch):
    import promptseg.methods.anyword.method as anyword_method

    invseg = build_method("invseg", flux, steps=1, inversion_side=128)
    anyword = build_method("anyword", flux, sam=None, steps=1, inversion_side=128)

    def fail(*args, **kwargs):
        assert flux.latent_size == (16, 16) and flux.image_size == (128, 128)
        assert flux.transformer.is_gradient_checkpointing
        raise RuntimeError("out of memory")

    monkeypatch.setattr(type(invseg), "_loss_maps", fail)
    monkeypatch.setattr(anyword_method, "invert_tokens", fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        invseg(image, ["cat"])
    with pytest.raises(RuntimeError, match="out of memory"):
        anyword.refer(anyword.prepare(image), "the cat")
    assert flux.latent_size == (32, 32) and flux.image_size == (256, 256) and invseg.loss_grid == (8, 8)
    assert not flux.transformer.is_gradient_checkpointing


@pytest.mark.parametrize("arch", ["sd3", "flux2-klein-4b", "zimage-turbo", "qwen-image"])
def test_every_transformer_family_inverts_at_half_its_side(arch, reduced_folder, image, monkeypatch):
    """Each family's denoiser, capture and text side run at a smaller working size: InvSeg's and Anyword's
    optimisation forwards at half the native latent side, their read-outs at the native one."""
    backbone = load_backbone(str(reduced_folder(arch)), device="cpu", dtype="fp32")
    native = backbone.latent_size
    half = tuple(s // 2 for s in native)
    side = backbone.image_size[0] // 2
    sizes = _predict_sizes(backbone, monkeypatch)
    result = build_method("invseg", backbone, steps=1, inversion_side=side)(image, ["cat", "dog"])
    anyword = build_method("anyword", backbone, sam=None, steps=1, inversion_side=side)
    answer = anyword.refer(anyword.prepare(image), "the red cat")
    assert [s for grad, s in sizes if grad] == [half, half]  # InvSeg's step, then Anyword's
    assert {s for grad, s in sizes if not grad} == {native}
    assert result.label_map.shape == answer.mask.shape == (96, 128)
    assert backbone.latent_size == native


class _AttentionCalls:
    """Counts, inside a backward pass, the fused attention kernels run (a recomputed block's; the kernels' own
    backward is another op) and the biased linear layers' forwards (`addmm`: a recomputed projection's; a linear
    layer's backward is `mm`)."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        from promptseg.diffusion.memory import ATTENTION_OPS

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if torch._C._current_graph_task_id() != -1:
                    counter.n += func in ATTENTION_OPS
                    counter.linear += func is torch.ops.aten.addmm.default
                return func(*args, **(kwargs or {}))

        self.n, self.linear, self.mode = 0, 0, Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)


def test_recomputed_blocks_keep_their_attention_and_rerun_the_rest(flux, image, monkeypatch):
    """The backward pass re-runs a block's projections and MLP but none of its fused attention calls (selective
    checkpointing keeps their outputs), and the optimisation is the one with kept activations; plain checkpointing
    would run them again."""
    import promptseg.diffusion.memory as memory

    def run(recompute):
        with _AttentionCalls() as calls:
            result = build_method("invseg", flux, steps=2, recompute=recompute)(image, ["cat", "dog"])
            anyword = build_method("anyword", flux, sam=None, steps=2, recompute=recompute)
            answer = anyword.refer(anyword.prepare(image), "the red cat")
        assert (calls.linear > 0) == bool(recompute)  # the projections run again only when recomputed
        return calls.n, result, answer

    _, kept, kept_answer = run(False)
    selective_n, selective, selective_answer = run(True)
    assert selective_n == 0
    # with the global early stop off, a block the capture stopped inside is still re-run only up to its stop
    with torch.utils.checkpoint.set_checkpoint_early_stop(False):
        assert run(True)[0] == 0
    assert np.allclose(selective.extra["loss"], kept.extra["loss"], rtol=1e-5)
    assert np.allclose(selective.extra["grad_norm"], kept.extra["grad_norm"], rtol=1e-4)
    assert np.allclose(selective_answer.extra["inversion_loss"], kept_answer.extra["inversion_loss"], rtol=1e-5)
    monkeypatch.setattr(memory, "keep_attention", lambda module, *args: torch.utils.checkpoint.checkpoint(
        module.__call__, *args, use_reentrant=False))
    plain_n, _, _ = run(True)
    assert plain_n > selective_n
