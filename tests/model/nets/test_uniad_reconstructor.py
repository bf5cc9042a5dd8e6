"""UniAD's reconstructor (adcli/model/nets/uniad.py): the neighbour mask, masked attention's reach, feature jitter."""

import pytest
import torch

from torch import nn

from adcli.model.nets.uniad import FeatureReconstructor, ReconstructorArch, attend, feature_jitter, neighbour_mask


def _authors_window(h, w, k):
    """The authors' generate_mask as a loop: cell (y, x) may see the k×k window around it, clipped."""
    allowed = torch.zeros(h, w, h, w, dtype=torch.bool)
    for y in range(h):
        for x in range(w):
            allowed[y, x, max(y - k // 2, 0):min(y + k // 2 + 1, h), max(x - k // 2, 0):min(x + k // 2 + 1, w)] = True
    return ~allowed.reshape(h * w, h * w)


@pytest.mark.parametrize("h, w, k", [(14, 14, 7), (5, 7, 3), (4, 4, 9)])
def test_neighbour_mask_is_the_clipped_window(h, w, k):
    mask = neighbour_mask(h, w, k)
    assert mask.shape == (h * w, h * w) and torch.equal(mask, _authors_window(h, w, k))
    assert not mask.diagonal().any() and torch.equal(mask, mask.T)


def test_neighbour_mask_sizes_at_centre_and_corner():
    mask = neighbour_mask(14, 14, 7)
    assert int((~mask[7 * 14 + 7]).sum()) == 49 and int((~mask[0]).sum()) == 16  # full window; 4x4 in a corner


@pytest.mark.parametrize("masked", [False, True])
def test_attend_equals_multihead_attention_in_eval(masked):
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(32, 4, dropout=0.5, batch_first=True).eval()
    nn.init.normal_(attn.in_proj_bias)  # nonzero biases, so each projection's bias is checked
    q, k, v = torch.randn(3, 2, 25, 32).unbind(0)  # query, key and value all differ, as in the decoder
    mask = neighbour_mask(5, 5, 3) if masked else None
    expected = attn(q, k, v, attn_mask=mask, need_weights=False)[0]
    assert torch.allclose(attend(attn, q, k, v, mask), expected, atol=1e-5)


def test_attend_trains_through_the_module_and_its_dropout():
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(16, 2, dropout=0.5, batch_first=True).train()
    q = torch.randn(1, 9, 16)
    torch.manual_seed(1)
    expected = attn(q, q, q, need_weights=False)[0]
    torch.manual_seed(1)
    got = attend(attn, q, q, q, None)
    assert torch.equal(got, expected)
    assert not torch.allclose(got, attend(attn.eval(), q, q, q, None))  # dropout was applied


def test_masked_attention_cannot_see_far_cells():
    arch = ReconstructorArch(hidden_dim=16, heads=2, encoder_layers=1, decoder_layers=1, feedforward=32, neighbour=3)
    net = FeatureReconstructor(6, 8, arch).eval()
    x = torch.randn(1, 6, 8, 8)
    far = x.clone()
    far[..., 7, 7] += 5.0  # one layer each: cell (0, 0) sees at most 2 cells away
    near = x.clone()
    near[..., 1, 1] += 5.0
    out, out_far, out_near = net(x), net(far), net(near)
    assert out.shape == x.shape
    assert torch.allclose(out[..., 0, 0], out_far[..., 0, 0], atol=1e-6)
    assert not torch.allclose(out[..., 0, 0], out_near[..., 0, 0], atol=1e-4)
    unmasked = FeatureReconstructor(6, 8, ReconstructorArch(hidden_dim=16, heads=2, encoder_layers=1, decoder_layers=1,
                                                            feedforward=32, neighbour=0)).eval()
    assert not torch.allclose(unmasked(x)[..., 0, 0], unmasked(far)[..., 0, 0], atol=1e-4)


def test_feature_jitter_scale_and_probability():
    f = torch.randn(4, 64, 6, 6)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(feature_jitter(f, 20.0, 0.0, g), f)
    noise = feature_jitter(f, 20.0, 1.0, torch.Generator().manual_seed(1)) - f
    expected = 20.0 * f.norm(dim=1, keepdim=True) / 64
    ratio = (noise / expected).std()
    assert 0.9 < float(ratio) < 1.1  # N(0, 1) scaled per token
    assert torch.equal(feature_jitter(f, 20.0, 1.0, torch.Generator().manual_seed(1)) - f, noise)


def test_bad_architecture_is_named():
    with pytest.raises(ValueError, match="odd"):
        ReconstructorArch(neighbour=6)
    with pytest.raises(ValueError, match="multiple of heads"):
        ReconstructorArch(hidden_dim=30, heads=4)
