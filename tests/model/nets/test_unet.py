import pytest
import torch

from adcli.model.nets.segnet import SegNet, SegNetConfig
from adcli.model.nets.unet import UNet, UNetConfig

SMALL = UNetConfig(base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1, attention_resolutions=(8,), num_heads=2)


@pytest.mark.parametrize("updown", [True, False])
def test_unet_keeps_shape_and_learns(updown):
    cfg = UNetConfig(**{**SMALL.__dict__, "resblock_updown": updown})
    net = UNet(cfg, image_size=32, in_channels=3, out_channels=5)
    x = torch.randn(2, 3, 32, 32)
    out = net(x, torch.tensor([3, 700]))
    assert out.shape == (2, 5, 32, 32)
    out.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_attention_only_where_asked():
    net = UNet(SMALL, image_size=32)
    n_attn = sum(type(m).__name__ == "AttentionBlock" for m in net.modules())
    # encoder level at 8 px (1 block) + middle + decoder level at 8 px (2 blocks)
    assert n_attn == 4


def test_paper_unet_size():
    net = UNet(UNetConfig(), image_size=256)
    n = sum(p.numel() for p in net.parameters())
    assert 125e6 < n < 140e6  # METHODS.md: ≈ 132 M


@pytest.mark.parametrize("scale_shift", [True, False])
def test_time_and_class_reach_the_output_even_in_narrow_nets(scale_shift):
    cfg = UNetConfig(**{**SMALL.__dict__, "scale_shift_norm": scale_shift})
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = UNet(cfg, image_size=16, num_classes=3)
        for p in net.parameters():  # residual branches and the output conv start at zero
            torch.nn.init.normal_(p, std=0.1)
        x = torch.randn(1, 3, 16, 16)
    t, y = torch.tensor([10]), torch.tensor([0])
    base = net(x, t, y)
    assert (base - net(x, t, torch.tensor([1]))).abs().max() > 1e-3
    assert (base - net(x, torch.tensor([900]), y)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="class-conditional"):
        net(x, t)


def test_group_norm_keeps_several_channels_per_group():
    from adcli.model.nets.blocks import group_norm

    assert [group_norm(c).num_groups for c in (8, 16, 32, 64, 128, 512)] == [2, 4, 8, 16, 32, 32]


def test_image_size_must_divide():
    with pytest.raises(ValueError, match="not divisible"):
        UNet(SMALL, image_size=30)


def test_segnet_shape():
    net = SegNet(SegNetConfig(widths=(4, 8, 16)), in_channels=6)
    assert net(torch.randn(2, 6, 32, 32)).shape == (2, 1, 32, 32)


def test_unet_without_time_input_is_driven_by_class():
    with pytest.raises(ValueError, match="needs classes"):
        UNet(SMALL, image_size=16, time_input=False)
    net = UNet(SMALL, image_size=16, num_classes=2, time_input=False)
    assert net.time_embed is None
    assert net(torch.randn(1, 3, 16, 16), None, torch.tensor([1])).shape == (1, 3, 16, 16)


def test_spatial_embedding_maps_act_where_they_are_nonzero():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = UNet(SMALL, image_size=16, num_classes=2)
        for p in net.parameters():
            torch.nn.init.normal_(p, std=0.1)
    x, t, y = torch.randn(1, 3, 16, 16), torch.tensor([500]), torch.tensor([0])
    base, features = net(x, t, y, return_features=True)
    assert sorted(features) == [4, 8, 16] and features[16].shape == (1, 8, 16, 16)
    zero = {16: torch.zeros(1, net.emb_dim, 16, 16)}
    assert torch.allclose(net(x, t, y, emb_maps=zero), base, atol=1e-6)
    bump = torch.zeros(1, net.emb_dim, 16, 16)
    bump[..., :4, :4] = 1.0  # top-left corner only, at the full-resolution level
    changed = (net(x, t, y, emb_maps={16: bump}) - base).abs()[0].sum(dim=0)
    assert changed[:4, :4].mean() > 10 * changed[12:, 12:].mean()


def test_segnet_decoder_of_the_authors_narrows_after_each_upsampling():
    """models/Seg_subnetwork.py: upsample -> conv3×3-BN-ReLU to the next shallower width -> concat -> 2 convs; 3×3 head."""
    import torch

    widths = (4, 8, 16, 16)
    authors = SegNet(SegNetConfig(widths=widths, up_conv=True, head_kernel=3), in_channels=6)
    outs = [seq[0].out_channels for seq in authors.up_convs]
    assert outs == [8, 4, 4]  # levels of skips 16, 8, 4: the next shallower width; the shallowest keeps 4
    assert [d[0].in_channels for d in authors.decoders] == [8 + 16, 4 + 8, 4 + 4]  # (narrowed ‖ skip)
    assert authors.head.kernel_size == (3, 3)
    light = SegNet(SegNetConfig(widths=widths), in_channels=6)  # bundles before the key: no up-convs, 1×1 head
    assert all(isinstance(m, torch.nn.Identity) for m in light.up_convs) and light.head.kernel_size == (1, 1)
    x = torch.randn(2, 6, 32, 32)
    assert authors(x).shape == light(x).shape == (2, 1, 32, 32)


@pytest.mark.parametrize("scale_shift", [True, False])
@pytest.mark.parametrize("per_pixel", [False, True])
def test_resblock_scores_without_autograd_as_with_it_and_leaves_its_input(scale_shift, per_pixel):
    from adcli.model.nets.unet import ResBlock

    torch.manual_seed(0)
    block = ResBlock(8, 16, 12, 0.0, None, scale_shift).eval()
    torch.nn.init.normal_(block.out_conv.weight, 0, 0.1)  # zero-initialised: the residual branch would vanish
    x = torch.randn(2, 8, 16, 16)
    emb = torch.randn(2, 12, 16, 16) if per_pixel else torch.randn(2, 12)
    kept = x.clone()
    with_autograd = block(x, emb)
    with torch.inference_mode():
        without = block(x, emb)  # in-place SiLU / sum and one addcmul
    torch.testing.assert_close(without, with_autograd, rtol=1e-5, atol=1e-6)
    assert torch.equal(x, kept)
