"""Lazy self-attention: large grids are kept as query and key, and every product with them equals the product
with the mean matrix formed the slow way."""

import functools

import numpy as np
import torch

import promptseg.diffusion.capture.store as store_module
from promptseg.diffusion.capture import AttentionStore, capture, select_layers
from promptseg.diffusion.capture.selfattn import QKRecord, SelfAttention
from promptseg.diffusion.readout import hierarchical_refine, refine
from promptseg.methods import build_method


def _record(tiny, lazy_tokens):
    g = torch.Generator().manual_seed(0)
    latents = torch.randn((2, 4, *tiny.latent_size), generator=g)
    text = tiny.encode_text(["a cat and a dog", "a red person"])
    layers = select_layers(tiny.unet, tiny.latent_size, self_grids=[(16, 16), (8, 8)], cross_grids=[(16, 16)])
    store = AttentionStore(latent_hw=tiny.latent_size, lazy_self_tokens=lazy_tokens)
    with torch.no_grad(), capture(tiny.unet, layers, store):
        out = tiny.unet(latents, torch.tensor([10, 10]), encoder_hidden_states=text).sample
    return store, out


def test_lazy_records_give_the_dense_maps_and_products(tiny):
    dense, out_dense = _record(tiny, None)
    lazy, out_lazy = _record(tiny, 200)  # 16x16 (256 pixels) lazy, 8x8 not
    assert torch.allclose(out_dense, out_lazy, atol=1e-5)  # the SDPA path computes the same layer output
    assert ("self", (16, 16)) not in lazy.sums and (16, 16) in lazy.lazy and ("self", (8, 8)) in lazy.sums
    assert lazy.grids("self") == dense.grids("self") == [(16, 16), (8, 8)]
    assert torch.allclose(lazy.mean("self", (16, 16)), dense.mean("self", (16, 16)), atol=1e-6)
    values = torch.rand(2, 256, 3)
    expected = torch.bmm(dense.mean("self", (16, 16)), values)
    assert torch.allclose(lazy.self_attention((16, 16)).matmul(values), expected, atol=1e-6)


def test_lazy_store_never_holds_an_n_by_n_tensor(tiny):
    lazy, _ = _record(tiny, 200)
    sizes = [t.numel() for records in lazy.lazy.values() for r in records for t in (r.query, r.key)]
    assert max(sizes) < 2 * 256 * 256  # (B * heads, 256, d), never (B, 256, 256) per call


def _random_record(batch=1, heads=2, n=12, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return QKRecord(torch.randn(batch * heads, n, d, generator=g), torch.randn(batch * heads, n, d, generator=g),
                    heads, 0.5)


def _slow(records):
    mats = []
    for r in records:
        probs = (r.query @ r.key.transpose(1, 2) * r.scale).softmax(-1)
        mats.append(probs.unflatten(0, (-1, r.heads)).mean(1))
    return torch.stack(mats).mean(0)


def test_merging_keeps_the_mean_and_folds_records_past_the_bound():
    records = [_random_record(seed=s) for s in range(5)]
    parts = [SelfAttention(records=[r]) for r in records]
    merged = functools.reduce(SelfAttention.merged, parts)
    assert len(merged.records) == 5 and torch.allclose(merged.dense(), _slow(records), atol=1e-6)
    folded = parts[0]
    for part in parts[1:]:
        folded = folded.merged(part, max_records=2)
    assert len(folded.records) <= 2 and folded.count == 5
    assert torch.allclose(folded.dense(), _slow(records), atol=1e-6)
    values = torch.rand(1, 12, 3)
    assert torch.allclose(folded.matmul(values), _slow(records) @ values, atol=1e-6)


def test_methods_give_the_same_masks_lazy_or_not(tiny, monkeypatch):
    image = (torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(1)) * 255).byte().numpy()
    labels = ["cat", "dog", "grass"]
    for name, settings in (("baseline", {}), ("fastseg", {}), ("fastseg", {"tau": 1})):
        monkeypatch.setattr(store_module, "LAZY_SELF_TOKENS", None)
        dense = build_method(name, tiny, **settings)(image, labels)
        monkeypatch.setattr(store_module, "LAZY_SELF_TOKENS", 200)
        lazy = build_method(name, tiny, **settings)(image, labels)
        if name == "baseline":
            diff = (torch.as_tensor(dense.scores) - torch.as_tensor(lazy.scores)).abs().max()
            assert diff < 1e-4 and (dense.label_map == lazy.label_map).all()
        else:  # the SDPA path's float noise (1e-6 in the kept queries) is magnified by min-max normalising the
            # random tiny UNet's nearly flat raw-mixed maps (scores 0.015 apart at most with tau 2, whether HARD's
            # coarse grids are formed or applied as operators); products with the same store agree to 1e-6 (above)
            assert np.abs(dense.scores - lazy.scores).max() < 0.03
            assert (dense.label_map == lazy.label_map).mean() > 0.95


def test_refinement_with_an_operator_equals_the_matrix_product():
    records = [_random_record(batch=2, n=16, seed=s) for s in range(3)]
    op, matrix = SelfAttention(records=records), _slow(records)
    cross = torch.rand(2, 16, 4)
    for iterations in (1, 2):
        assert torch.allclose(refine(op, cross, iterations), refine(matrix, cross, iterations), atol=1e-6)
    hard = hierarchical_refine({(4, 4): SelfAttention(records=records)}, cross, {(4, 4): 1.0}, (4, 4), power=2)
    assert torch.allclose(hard, hierarchical_refine({(4, 4): matrix}, cross, {(4, 4): 1.0}, (4, 4), power=2), atol=1e-4)  # min-max magnifies float noise


def test_a_record_applied_to_few_or_many_maps_equals_the_matrix_product():
    """Few maps go through the fused kernel in zero-padded blocks as wide as the head dimension; many through one
    plain call: both are the product with the mean matrix."""
    record = _random_record(batch=2, heads=3, n=20, d=4)
    matrix = _slow([record])
    for width in (1, 3, 4, 5, 8, 9, 30):  # under, at and past one block, at and past the fused bound (2 d = 8)
        values = torch.rand(2, 20, width)
        assert torch.allclose(record.apply(values), torch.bmm(matrix, values), atol=1e-6), width


def test_a_resized_self_attention_operator_gives_the_formed_matrix_products():
    """HARD's coarse grids propagate on the fine grid without forming its N x N matrix."""
    from promptseg.diffusion.readout import MixedAttention, ResizedAttention, refine, resize_self_attention

    torch.manual_seed(0)
    coarse = torch.randn(2, 16, 16).softmax(-1)  # a 4x4 grid
    fine = torch.randn(2, 64, 64).softmax(-1)  # an 8x8 grid
    maps = torch.rand(2, 64, 3)
    formed = resize_self_attention(coarse, (4, 4), (8, 8))
    operator = ResizedAttention(coarse, (4, 4), (8, 8))
    assert torch.allclose(refine(operator, maps, 2), refine(formed, maps, 2), atol=1e-6)
    mixed = MixedAttention([(operator, 0.25), (fine, 0.75)])
    assert torch.allclose(refine(mixed, maps, 2), refine(0.25 * formed + 0.75 * fine, maps, 2), atol=1e-6)
