import pytest
import torch

from adcli.model.nets.tpn import TimestepPerceptiveNet
from adcli.model.nets.unet import UNet, UNetConfig

DENOISER = UNetConfig(base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1, attention_resolutions=(8,), num_heads=2)
TPN = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(), num_heads=2)


def _nets(tpn_config=TPN, size=16):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        denoiser = UNet(DENOISER, size, num_classes=2)
        for p in denoiser.parameters():  # zero-initialised branches would hide the injected features
            torch.nn.init.normal_(p, std=0.1)
        tpn = TimestepPerceptiveNet(tpn_config, size, 2, denoiser.emb_dim, len(DENOISER.channel_mults), initial_t=0.83)
    return denoiser, tpn


def test_outputs_shapes_and_ranges():
    denoiser, tpn = _nets()
    g = torch.Generator().manual_seed(0)  # not the global RNG: other tests must not change the draw
    for p in tpn.parameters():
        torch.nn.init.normal_(p, std=1.0, generator=g)  # large weights: T must still stay inside [0, 1]
    x, y = torch.randn(3, 3, 16, 16, generator=g), torch.tensor([0, 1, 1])
    t_map, emb_maps = tpn(x, y)
    # [0, 1], not (0, 1): a float32 sigmoid of a large logit rounds to exactly 1 (no update there)
    assert t_map.shape == (3, 1, 16, 16) and bool(((t_map >= 0) & (t_map <= 1) & torch.isfinite(t_map)).all())
    # One map per denoiser level, at its size, with its embedding width; the TPN here has one level
    # fewer than the denoiser: its smallest level is pooled down to the denoiser's 4 px level.
    assert {side: tuple(m.shape) for side, m in emb_maps.items()} == {16: (3, 32, 16, 16), 8: (3, 32, 8, 8), 4: (3, 32, 4, 4)}
    assert tpn.sources == {16: 16, 8: 8, 4: 8}


def test_untrained_tpn_changes_nothing_and_trained_features_reach_the_denoiser():
    denoiser, tpn = _nets()
    x, y, t = torch.randn(2, 3, 16, 16), torch.tensor([0, 1]), torch.full((2,), 830.0)
    t_map, emb_maps = tpn(x, y)
    assert torch.allclose(t_map, torch.full_like(t_map, 0.83))  # T starts at the initial timestep
    plain = denoiser(x, t, y)
    assert torch.allclose(denoiser(x, t, y, emb_maps=emb_maps), plain, atol=1e-6)  # zero-initialised adapters
    for adapter in tpn.adapters.values():
        torch.nn.init.normal_(adapter.conv.weight, std=0.5)
    steered = denoiser(x, t, y, emb_maps=tpn(x, y)[1])
    assert (steered - plain).abs().max() > 1e-3
    steered.square().mean().backward()  # gradients reach the TPN's body through the adapters
    assert tpn.body.input_blocks[0][0].conv.weight.grad.abs().sum() > 0


def test_class_condition_changes_the_t_map():
    _, tpn = _nets()
    for p in tpn.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(1, 3, 16, 16)
    assert (tpn(x, torch.tensor([0]))[0] - tpn(x, torch.tensor([1]))[0]).abs().max() > 1e-4


def test_needs_a_timestep_inside_the_unit_interval():
    with pytest.raises(ValueError, match="initial timestep"):
        TimestepPerceptiveNet(TPN, 16, 2, 32, 3, initial_t=1.0)
