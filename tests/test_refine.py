import torch

from promptseg.diffusion.readout import (
    maps_to_tokens,
    minmax,
    refine,
    resize_self_attention,
    tokens_to_maps,
    weighted_sum,
)


def test_refine_is_self_attention_times_cross_attention():
    self_attn = torch.tensor([[[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.2, 0.0, 0.8]]])
    cross = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]])
    expected = torch.tensor([[[0.5, 0.5], [0.0, 1.0], [0.6, 0.4]]])
    assert torch.allclose(refine(self_attn, cross), expected)
    assert torch.allclose(refine(self_attn, cross, 2), self_attn @ expected)
    assert torch.equal(refine(self_attn, cross, 0), cross)


def test_minmax_per_map():
    maps = torch.tensor([[[[1.0, 3.0], [2.0, 5.0]], [[7.0, 7.0], [7.0, 7.0]]]])
    out = minmax(maps)
    assert torch.allclose(out[0, 0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert torch.equal(out[0, 1], torch.zeros(2, 2))  # flat map -> 0, no NaN


def test_token_map_round_trip_keeps_row_major_pixels():
    cross = torch.arange(12.0).view(1, 6, 2)  # N = 2 x 3 grid, K = 2
    maps = tokens_to_maps(cross, (2, 3))
    assert maps[0, 1, 1, 0] == cross[0, 3, 1]  # pixel (row 1, col 0) is index 3
    assert torch.equal(maps_to_tokens(maps), cross)


def test_resize_self_attention_stays_stochastic_and_identity_is_kept():
    attn = torch.softmax(torch.randn(1, 16, 16), -1)
    big = resize_self_attention(attn, (4, 4), (8, 8))
    assert big.shape == (1, 64, 64)
    assert torch.allclose(big.sum(-1), torch.ones(1, 64), atol=1e-5)
    assert resize_self_attention(attn, (4, 4), (4, 4)) is attn
    # a pixel attending only to itself stays local after upsampling
    eye = torch.eye(16)[None]
    up = resize_self_attention(eye, (4, 4), (8, 8)).view(8, 8, 8, 8)
    assert up[0, 0].argmax() == 0


def test_weighted_sum_normalises_each_grid():
    coarse = torch.zeros(1, 1, 2, 2)
    coarse[..., 0, 0] = 10.0
    fine = torch.zeros(1, 1, 4, 4)
    fine[..., 3, 3] = 0.1
    out = weighted_sum({(2, 2): coarse, (4, 4): fine}, {(2, 2): 1.0, (4, 4): 3.0}, (4, 4))
    assert torch.isclose(out[0, 0, 3, 3], torch.tensor(0.75))  # fine map at full weight 3/4 despite its scale
    assert out.max() <= 1.0
