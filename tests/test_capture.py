import math

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from promptseg.diffusion.capture import (
    AttentionStore,
    RecordingProcessor,
    StopForward,
    capture,
    list_attention_layers,
    run_until_captured,
    select_layers,
)


def _inputs(tiny, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn((batch, 4, *tiny.latent_size), generator=g)
    text = tiny.encode_text(["a cat and a dog", "a red person"][:batch] + ["grass"] * max(0, batch - 2))
    return latents, torch.tensor([10] * batch), text


def _all_layers(tiny):
    grids = [(16, 16), (8, 8)]
    return select_layers(tiny.unet, tiny.latent_size, self_grids=grids, cross_grids=grids)


def test_layer_listing_reads_levels_from_the_unet(tiny):
    layers = list_attention_layers(tiny.unet)
    # two levels, cross-attention in every block: down (2), up (2 x 2 layers each), mid (1); self + cross each
    assert {(layer.place, layer.level) for layer in layers} == {("down", 0), ("down", 1), ("mid", 1), ("up", 0), ("up", 1)}
    assert sum(layer.kind == "cross" for layer in layers) == sum(layer.kind == "self" for layer in layers) == 7


def test_select_layers_rejects_missing_grid_and_place(tiny):
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        select_layers(tiny.unet, tiny.latent_size, cross_grids=[(4, 4)])
    with pytest.raises(ValueError, match="sideways"):
        select_layers(tiny.unet, tiny.latent_size, cross_grids=[(8, 8)], places=["sideways"])
    only_mid = select_layers(tiny.unet, tiny.latent_size, cross_grids=[(8, 8)], places=["mid"])
    assert [layer.place for layer in only_mid] == ["mid"]


def test_unet_output_unchanged_under_capture(tiny):
    latents, t, text = _inputs(tiny)
    with torch.no_grad():
        plain = tiny.unet(latents, t, encoder_hidden_states=text).sample
        store = AttentionStore(latent_hw=tiny.latent_size)
        with capture(tiny.unet, _all_layers(tiny), store):
            captured = tiny.unet(latents, t, encoder_hidden_states=text).sample
    assert torch.allclose(plain, captured, atol=1e-5)
    assert store.counts  # something was recorded


def test_only_selected_layers_change_processor_and_all_are_restored(tiny):
    before = {k: type(v) for k, v in tiny.unet.attn_processors.items()}
    layers = select_layers(tiny.unet, tiny.latent_size, cross_grids=[(8, 8)], places=["mid"])
    with capture(tiny.unet, layers, AttentionStore(latent_hw=tiny.latent_size)):
        during = tiny.unet.attn_processors
        recording = {k for k, v in during.items() if isinstance(v, RecordingProcessor)}
        assert recording == {layer.name for layer in layers}
        assert all(isinstance(v, AttnProcessor2_0) for k, v in during.items() if k not in recording)
    assert {k: type(v) for k, v in tiny.unet.attn_processors.items()} == before


def test_restored_after_exception_and_double_capture_refused(tiny):
    before = dict(tiny.unet.attn_processors)
    layers = _all_layers(tiny)
    with pytest.raises(ZeroDivisionError):
        with capture(tiny.unet, layers, AttentionStore(latent_hw=tiny.latent_size)):
            with pytest.raises(RuntimeError, match="already under capture"):
                with capture(tiny.unet, layers, AttentionStore(latent_hw=tiny.latent_size)):
                    pass
            raise ZeroDivisionError("inside the block")
    after = tiny.unet.attn_processors
    assert all(after[k] is before[k] for k in before)
    with capture(tiny.unet, layers, AttentionStore(latent_hw=tiny.latent_size)):  # usable again
        pass


def _naive_maps(tiny, latents, t, text, layers):
    """Hand-computed softmax(QK^T / sqrt(d)) per head, from each attention module's inputs (forward pre-hooks)."""
    modules = dict(tiny.unet.named_modules())
    sums, counts, handles = {}, {}, []

    def hook_for(layer):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            ctx = kwargs.get("encoder_hidden_states")
            ctx = x if ctx is None else ctx
            b, n, _ = x.shape
            h = module.heads
            q = module.to_q(x).view(b, n, h, -1).transpose(1, 2)
            k = module.to_k(ctx).view(b, ctx.shape[1], h, -1).transpose(1, 2)
            probs = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1).mean(1)
            side = int(math.isqrt(n))
            key = (layer.kind, (side, side))
            sums[key] = sums.get(key, 0) + probs
            counts[key] = counts.get(key, 0) + 1

        return hook

    for layer in layers:
        module = modules[layer.name.rsplit(".processor", 1)[0]]
        handles.append(module.register_forward_pre_hook(hook_for(layer), with_kwargs=True))
    try:
        with torch.no_grad():
            tiny.unet(latents, t, encoder_hidden_states=text)
    finally:
        for handle in handles:
            handle.remove()
    return {key: sums[key] / counts[key] for key in sums}


def test_aggregated_maps_equal_a_naive_reference(tiny):
    latents, t, text = _inputs(tiny)
    layers = _all_layers(tiny)
    naive = _naive_maps(tiny, latents, t, text, layers)
    store = AttentionStore(latent_hw=tiny.latent_size)
    with torch.no_grad(), capture(tiny.unet, layers, store):
        tiny.unet(latents, t, encoder_hidden_states=text)
    assert set(naive) == {(k, g) for k, g in store.sums}
    for (kind, grid), expected in naive.items():
        got = store.mean(kind, grid)
        n = grid[0] * grid[1]
        assert got.shape == (2, n, n if kind == "self" else text.shape[1])
        assert torch.allclose(got, expected, atol=1e-5), (kind, grid)
        assert torch.allclose(got.sum(-1), torch.ones(2, n), atol=1e-4)  # rows are distributions
    # batch items stay apart: the two prompts give different cross-attention
    cross = store.mean("cross", (16, 16))
    assert not torch.allclose(cross[0], cross[1], atol=1e-3)


def test_several_calls_are_averaged(tiny):
    latents, t, text = _inputs(tiny, batch=1)
    layers = select_layers(tiny.unet, tiny.latent_size, cross_grids=[(16, 16)])
    single = []
    for step in (10, 500):
        store = AttentionStore(latent_hw=tiny.latent_size)
        with torch.no_grad(), capture(tiny.unet, layers, store):
            tiny.unet(latents, torch.tensor([step]), encoder_hidden_states=text)
        single.append(store.mean("cross", (16, 16)))
    both = AttentionStore(latent_hw=tiny.latent_size)
    with torch.no_grad(), capture(tiny.unet, layers, both):
        for step in (10, 500):
            tiny.unet(latents, torch.tensor([step]), encoder_hidden_states=text)
    assert torch.allclose(both.mean("cross", (16, 16)), (single[0] + single[1]) / 2, atol=1e-6)


def test_cross_attention_for_other_text(tiny):
    latents, t, text = _inputs(tiny)
    layers = select_layers(tiny.unet, tiny.latent_size, cross_grids=[(16, 16), (8, 8)])
    store = AttentionStore(latent_hw=tiny.latent_size, keep_queries=True)
    with torch.no_grad(), capture(tiny.unet, layers, store):
        tiny.unet(latents, t, encoder_hidden_states=text)
        for grid in [(16, 16), (8, 8)]:
            # against the conditioning text itself: the recorded maps
            assert torch.allclose(store.cross_attention_for(text, grid), store.mean("cross", grid), atol=1e-5)
    other = tiny.encode_text(["a dog"])  # one text for the whole batch
    got = store.cross_attention_for(other, (8, 8))
    # naive: the layer's queries (kept) against keys of `other`, softmax, mean over heads and layers
    expected = 0
    records = [r for r in store.queries if r.grid == (8, 8)]
    for r in records:
        k = r.attn.to_k(other)[0].view(other.shape[1], r.attn.heads, -1).transpose(0, 1)  # (heads, T, d)
        q = r.query.view(2, r.attn.heads, 64, -1)
        expected = expected + (q @ k.transpose(-1, -2).unsqueeze(0) * r.attn.scale).softmax(-1).mean(1)
    assert torch.allclose(got, expected / len(records), atol=1e-5)
    with pytest.raises(KeyError, match="keep_queries"):
        AttentionStore(latent_hw=tiny.latent_size).cross_attention_for(other, (8, 8))


def test_gradients_flow_to_text_embeddings_only_when_asked(tiny):
    latents, t, text = _inputs(tiny, batch=1)
    text = text.detach().clone().requires_grad_(True)
    layers = select_layers(tiny.unet, tiny.latent_size, self_grids=[(16, 16)], cross_grids=[(16, 16)])
    store = AttentionStore(latent_hw=tiny.latent_size, keep_graph=True)
    with capture(tiny.unet, layers, store):
        tiny.unet(latents, t, encoder_hidden_states=text)
    store.mean("cross", (16, 16))[..., 2].sum().backward()
    assert text.grad is not None and text.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny.unet.parameters())  # the UNet is frozen
    detached = AttentionStore(latent_hw=tiny.latent_size)
    with capture(tiny.unet, layers, detached):
        tiny.unet(latents, t, encoder_hidden_states=text)
    assert not detached.mean("cross", (16, 16)).requires_grad


def test_stop_after_last_skips_the_rest_of_the_unet(tiny):
    latents, t, text = _inputs(tiny, batch=1)
    layers = select_layers(tiny.unet, tiny.latent_size, self_grids=[(16, 16)], cross_grids=[(16, 16)], places=["down"])
    ran = []
    handle = tiny.unet.conv_out.register_forward_hook(lambda *a: ran.append(1))
    try:
        full = AttentionStore(latent_hw=tiny.latent_size)
        with torch.no_grad(), capture(tiny.unet, layers, full):
            tiny.unet(latents, t, encoder_hidden_states=text)
        assert ran == [1]
        early = AttentionStore(latent_hw=tiny.latent_size)
        with torch.no_grad(), capture(tiny.unet, layers, early, stop_after_last=True):
            run_until_captured(tiny.unet, latents, t, encoder_hidden_states=text)
            run_until_captured(tiny.unet, latents, t, encoder_hidden_states=text)  # reusable
        assert ran == [1]  # conv_out never ran again
        assert torch.allclose(early.mean("cross", (16, 16)), full.mean("cross", (16, 16)), atol=1e-6)
        assert early.counts[("cross", (16, 16))] == 2 * full.counts[("cross", (16, 16))]
    finally:
        handle.remove()
    assert issubclass(StopForward, Exception)


def test_kept_graph_maps_are_head_means_recomputed_in_the_backward_pass():
    """With the graph kept (prompt inversion), a joint block's maps are head means under activation checkpointing:
    the same values and gradients as the plain computation, without keeping the per-head probabilities."""
    from promptseg.diffusion.capture.core import _head_mean, _softmax_logits

    torch.manual_seed(0)
    q, k = torch.randn(6, 10, 4, requires_grad=True), torch.randn(6, 12, 4, requires_grad=True)
    weights = torch.randn(2, 10, 12)
    plain, heads = _head_mean(lambda a, b: _softmax_logits(a, b, 0.5), 3, False, q, k)
    assert heads == 3 and plain.shape == (6, 10, 12)
    plain_mean = plain.unflatten(0, (-1, 3)).mean(1)
    (plain_mean * weights).sum().backward()
    expected = q.grad.clone(), k.grad.clone()
    q.grad = k.grad = None
    kept, heads = _head_mean(lambda a, b: _softmax_logits(a, b, 0.5), 3, True, q, k)
    assert heads == 1 and torch.allclose(kept, plain_mean)
    (kept * weights).sum().backward()
    assert torch.allclose(q.grad, expected[0], atol=1e-6) and torch.allclose(k.grad, expected[1], atol=1e-6)


@pytest.mark.parametrize("window", [1, 4])
def test_the_text_share_of_the_joint_softmax_equals_its_explicit_normalisers(window):
    """One fused attention call gives what summing exp(q k^T) over every image key gives, gradients included."""
    from promptseg.diffusion.capture.core import text_share

    torch.manual_seed(0)
    query = (torch.randn(6, 50, 8) * 2).requires_grad_()
    key, text_key = torch.randn(6, 40, 8) * 2, torch.randn(6, 7, 8) * 2
    image = (query @ key.transpose(1, 2) * 0.35).logsumexp(-1) + math.log(window)
    text = (query @ text_key.transpose(1, 2) * 0.35).logsumexp(-1)
    expected = (text - torch.logaddexp(image, text)).exp()
    got = text_share(query, key, text_key, 0.35, window)
    assert torch.allclose(got, expected, atol=1e-6)
    (grad,) = torch.autograd.grad(got.sum(), query)
    (reference,) = torch.autograd.grad(expected.sum(), query)
    assert torch.allclose(grad, reference, atol=1e-5)
