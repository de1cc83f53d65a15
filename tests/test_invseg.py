import itertools
import math

import numpy as np
import pytest
import torch

from promptseg import build_method
from promptseg.methods.invseg.augment import crop_resize, crop_resize_scaled, random_crop_box, uncrop
from promptseg.methods.invseg.losses import (
    LOG_EPS,
    class_distances,
    cluster_loss,
    entropy_loss,
    soft_anchors,
    symmetric_kl,
)

TINY_LOSS = {"loss_cross_weights": {1.0: 1.0}, "loss_self_weights": {1.0: 1.0}}


def _literal_symmetric_kl(attn, eps=LOG_EPS):
    n = attn.shape[0]
    out = torch.zeros(n, n, dtype=torch.float64)
    for i, j in itertools.product(range(n), range(n)):
        p, q = attn[i].double(), attn[j].double()
        kl_pq = (p * (torch.log(p + eps) - torch.log(q + eps))).sum()
        kl_qp = (q * (torch.log(q + eps) - torch.log(p + eps))).sum()
        out[i, j] = kl_pq + kl_qp
    return out


@pytest.mark.parametrize("seed", range(5))
def test_symmetric_kl_equals_the_literal_definition(seed):
    g = torch.Generator().manual_seed(seed)
    attn = torch.softmax(torch.randn(9, 9, generator=g, dtype=torch.float64) * 3, -1)
    attn[0, :4] = 0  # zeros: handled by the epsilon inside the logs
    attn[0] /= attn[0].sum()
    fast = symmetric_kl(attn)
    assert torch.allclose(fast, _literal_symmetric_kl(attn), atol=1e-9)
    assert torch.allclose(fast, fast.T) and torch.allclose(torch.diagonal(fast), torch.zeros(9, dtype=fast.dtype), atol=1e-12)
    assert (fast >= -1e-12).all()


def test_class_distances_and_cluster_loss_by_hand():
    s = torch.tensor([[0.0, 1.0, 4.0], [1.0, 0.0, 2.0], [4.0, 2.0, 0.0]])
    maps = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    anchors = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    # eq. 4: D(pixel, M^0) = (S[p,0]*1 + S[p,1]*0.5) / 1.5; D(pixel, M^1) = (S[p,1]*0.5 + S[p,2]*1) / 1.5
    d_to_0 = torch.tensor([0.5 / 1.5, 1.0 / 1.5, 5.0 / 1.5])
    d_to_1 = torch.tensor([4.5 / 1.5, 2.0 / 1.5, 1.0 / 1.5])
    # eq. 5 with hard anchors: class 0 anchored at pixel 0, class 1 at pixel 2
    expected = torch.tensor([[d_to_0[0], d_to_1[0]], [d_to_0[2], d_to_1[2]]])
    assert torch.allclose(class_distances(s, anchors, maps), expected)
    # eq. 8 with soft anchors sigmoid(4 (M - 0.5))
    soft = soft_anchors(maps)
    assert torch.allclose(soft[1], torch.full((2,), 0.5)) and torch.isclose(soft[0, 0], torch.sigmoid(torch.tensor(2.0)))
    d = class_distances(s, soft, maps)
    assert torch.isclose(cluster_loss(s, maps), (d[0, 0] + d[1, 1]) / 2 - 2 * d[1, 0] / 2)
    assert torch.isclose(cluster_loss(s, maps[:, :1]), d[0, 0])  # C = 1: the intra term alone


def test_entropy_by_hand_and_coverage_weights():
    maps = torch.tensor([[0.5, 1.0], [math.exp(-1), 0.0]])
    per_pixel = torch.tensor([-0.5 * math.log(0.5), math.exp(-1)])
    assert torch.isclose(entropy_loss(maps), per_pixel.mean(), atol=1e-6)
    assert torch.isclose(entropy_loss(maps, weight=torch.tensor([0.0, 1.0])), per_pixel[1], atol=1e-6)


def _block_attention(n_side=6):
    # self-attention of an image whose left half and right half are two objects
    n = n_side * n_side
    cols = torch.arange(n) % n_side
    left = cols < n_side // 2
    same = (left[:, None] == left[None, :]).float() + 0.01
    return same / same.sum(-1, keepdim=True), left


def test_cluster_loss_prefers_masks_that_follow_the_structure():
    attn, left = _block_attention()
    distance = symmetric_kl(attn)
    follow = torch.stack([left.float(), (~left).float()], -1)
    rows = torch.arange(36) // 6
    across = torch.stack([(rows < 3).float(), (rows >= 3).float()], -1)  # top/bottom: cuts both objects
    assert cluster_loss(distance, follow) < cluster_loss(distance, across)


def test_random_crop_boxes_respect_scale_and_bounds():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        top, left, h, w = random_crop_box(g, 40, 60, (0.6, 1.0))
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 60
        assert 0.6 * 2400 * 0.9 <= h * w <= 2400


def test_uncrop_inverts_a_known_crop():
    h, w = 8, 8
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    image = torch.stack([xs, ys])  # a "map" equal to the pixel's own coordinates
    box = (2, 4, 4, 4)  # top, left, height, width
    view = crop_resize(image[None], box, (4, 4))[0]  # 1:1 crop
    values, inside = uncrop(view, box, (h, w), (8, 8))
    assert inside.sum() == 16 and inside[2:6, 4:8].all() and inside[:2].sum() == 0
    assert torch.allclose(values[:, 2:6, 4:8], image[:, 2:6, 4:8], atol=1e-5)
    assert (values[:, inside == 0] == 0).all()
    # a zoomed view (crop resized to a 2x finer grid) maps back to the same coordinates
    zoom = crop_resize(image[None], box, (8, 8))[0]
    values, inside = uncrop(zoom, box, (h, w), (8, 8))
    assert torch.allclose(values[:, 2:6, 4:8], image[:, 2:6, 4:8], atol=0.3)


def test_crop_of_a_coarser_grid_samples_the_box():
    # a grid over a 40x40 image whose values are the image x coordinate of each cell centre
    xs = (torch.arange(8, dtype=torch.float32) + 0.5) * 5
    grid = xs.expand(8, 8)[None, None].repeat(1, 2, 1, 1)
    out = crop_resize_scaled(grid, (0, 10, 40, 20), (40, 40))  # the box spans x in [10, 30)
    expected = 10 + (torch.arange(8, dtype=torch.float32) + 0.5) * 20 / 8
    assert out.shape == grid.shape and torch.allclose(out[0, 0, 3], expected, atol=1e-5)
    assert torch.allclose(crop_resize_scaled(grid, (0, 0, 40, 40), (40, 40)), grid, atol=1e-5)  # whole image: identity


def test_views_from_latents_encode_only_once(tiny, image, monkeypatch):
    encoded = []
    real = tiny.encode_image
    monkeypatch.setattr(tiny, "encode_image", lambda pixels: encoded.append(len(pixels)) or real(pixels))
    result = build_method("invseg", tiny, steps=3, views_from="latents", **TINY_LOSS)(image, ["cat", "dog"])
    assert encoded == [1] and len(result.extra["loss"]) == 3  # the image's own encode; no view is encoded
    encoded.clear()
    build_method("invseg", tiny, steps=3, **TINY_LOSS)(image, ["cat", "dog"])
    assert encoded == [1, 2]  # the default: the paper's two augmented views, encoded once, the batch of every step
    encoded.clear()
    build_method("invseg", tiny, steps=3, view_pool=0, **TINY_LOSS)(image, ["cat", "dog"])
    assert encoded == [1, 2, 2, 2]  # view_pool=0: two fresh views encoded every step
    with pytest.raises(ValueError, match="views_from"):
        build_method("invseg", tiny, views_from="pixel")
    with pytest.raises(ValueError, match="view_pool=1"):
        build_method("invseg", tiny, view_pool=1)


@pytest.fixture(scope="module")
def image():
    return (np.random.default_rng(0).random((30, 40, 3)) * 255).astype(np.uint8)


def test_gradients_reach_the_class_embeddings_and_nothing_else(tiny, image, monkeypatch):
    method = build_method("invseg", tiny, steps=1, **TINY_LOSS)
    seen = {}
    original_step = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        params = [p for group in self.param_groups for p in group["params"]]
        seen["params"] = params
        seen["grads"] = [p.grad.clone() for p in params]
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    result = method(image, ["cat", "dog"])
    assert len(seen["params"]) == 1
    learn = seen["params"][0]
    assert learn.shape == (2, tiny.text_encoder.config.hidden_size)  # "cat" and "dog": one token each
    assert seen["grads"][0].abs().sum() > 0
    for module in (tiny.unet, tiny.vae, tiny.text_encoder):
        assert all(p.grad is None and not p.requires_grad for p in module.parameters())
    assert len(result.extra["loss"]) == 1


def test_optimisation_changes_the_prompt_and_lowers_the_loss(tiny, image):
    steps = build_method("invseg", tiny, steps=12, lr=0.05, view_pool=2, num_views=2, **TINY_LOSS)(image, ["cat", "dog"])
    losses = steps.extra["loss"]
    assert len(losses) == 12 and min(losses[-3:]) < losses[0]
    none = build_method("invseg", tiny, steps=0, **TINY_LOSS)(image, ["cat", "dog"])
    base = build_method("baseline", tiny, timestep=50)(image, ["cat", "dog"])
    assert np.allclose(none.scores, base.scores, atol=1e-5)  # zero steps = the baseline read-out at t=50
    assert not np.allclose(steps.scores, base.scores, atol=1e-3)


def test_early_stopped_forward_gives_the_same_optimisation(tiny, image):
    early = build_method("invseg", tiny, steps=3, stop_forward_early=True, **TINY_LOSS)(image, ["cat", "dog"])
    full = build_method("invseg", tiny, steps=3, stop_forward_early=False, **TINY_LOSS)(image, ["cat", "dog"])
    assert np.allclose(early.extra["loss"], full.extra["loss"], atol=1e-5)
    assert np.allclose(early.scores, full.scores, atol=1e-4)


def test_non_finite_loss_keeps_the_last_finite_prompt(tiny, image, monkeypatch):
    method = build_method("invseg", tiny, steps=5, **TINY_LOSS)
    calls = {"n": 0}
    real_loss = method.loss

    def flaky(*args, **kwargs):
        calls["n"] += 1
        loss, parts = real_loss(*args, **kwargs)
        return (loss * float("nan"), parts) if calls["n"] == 3 else (loss, parts)

    monkeypatch.setattr(method, "loss", flaky)
    result = method(image, ["cat", "dog"])
    assert len(result.extra["loss"]) == 2 and calls["n"] == 3
    assert any("non-finite" in w for w in result.warnings)
    assert np.isfinite(result.scores).all()
    # the kept prompt is the last one whose loss was finite: the one step 2 evaluated, i.e. after one update
    one = build_method("invseg", tiny, steps=1, **TINY_LOSS)(image, ["cat", "dog"])
    assert np.allclose(result.scores, one.scores, atol=1e-5)


def test_small_updates_survive_a_bf16_backbone(tiny_folder, image):
    from promptseg.diffusion.precision import loss_scaler
    from promptseg.models import load_backbone

    half = load_backbone(str(tiny_folder), device="cpu", dtype="bf16")
    method = build_method("invseg", half, steps=3, lr=1e-4, **TINY_LOSS)
    seen = {}
    real_step = torch.optim.Adam.step

    def record(self, *args, **kwargs):
        seen["dtype"] = self.param_groups[0]["params"][0].dtype
        return real_step(self, *args, **kwargs)

    torch.optim.Adam.step = record
    try:
        result = method(image, ["cat", "dog"])
    finally:
        torch.optim.Adam.step = real_step
    assert seen["dtype"] == torch.float32  # the learnt embeddings are float32 on a bf16 backbone
    # three Adam steps of 1e-4 each moved the float32 embeddings; in bf16 each would round away
    assert 0 < result.extra["change"][-1] < 1e-2
    rows = torch.linspace(0.5, 2.0, 100)
    assert torch.equal((rows.bfloat16() + 1e-4).float(), rows.bfloat16().float())
    assert not loss_scaler(half).is_enabled()  # bf16: no loss scaling; fp16 would scale


def test_fp16_backbones_get_loss_scaling(tiny):
    from types import SimpleNamespace

    from promptseg.diffusion.precision import loss_scaler

    fp16 = SimpleNamespace(device=torch.device("cpu"), dtype=torch.float16)
    assert loss_scaler(fp16).is_enabled() and not loss_scaler(tiny).is_enabled()
