"""runtime.place: on the CPU, convolution weights channels-last, the same outputs, contiguous when saved."""

import copy

import torch
from torch import nn

from adcli.core.io import load_tensors, save_tensors
from adcli.core.device import place


def test_place_lays_convolutions_out_channels_last_and_changes_no_output(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.SiLU(), nn.Conv2d(8, 2, 1)).eval()
    plain = copy.deepcopy(model)
    placed = place(model, torch.device("cpu"))
    assert placed[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not placed[0].weight.is_contiguous()  # really a different layout (3×3 kernels, 3 channels)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(placed(x), plain(x), rtol=1e-5, atol=1e-6)
    save_tensors(tmp_path / "w.safetensors", placed.state_dict())  # the format needs contiguous tensors
    loaded = load_tensors(tmp_path / "w.safetensors")
    torch.testing.assert_close(loaded["0.weight"], plain[0].weight)
