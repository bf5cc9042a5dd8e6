import pytest
import torch
import torchvision

from adcli.model.nets import weights as W
from adcli.model.nets.features import BackboneConfig
from adcli.model.nets.perceptual import FeaturePerceptualLoss, LPIPSLoss, perceptual_loss


def test_lpips_loads_backbone_from_the_weights_folder(no_weights, monkeypatch):
    folder = no_weights / "weights"
    folder.mkdir()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        torch.save(torchvision.models.alexnet().state_dict(), folder / "alexnet.pth")
    monkeypatch.setenv("ADCLI_WEIGHTS_DIR", str(folder))
    loss = LPIPSLoss("alex")
    x = torch.rand(2, 3, 64, 64)
    y = torch.rand(2, 3, 64, 64)
    assert torch.allclose(loss(x, x), torch.zeros(2), atol=1e-6)
    d = loss(x, y)
    assert d.shape == (2,) and (d > 0).all() and torch.isfinite(d).all()
    conv = torchvision.models.alexnet()
    conv.load_state_dict(torch.load(folder / "alexnet.pth", weights_only=True))
    assert torch.equal(loss.model.net.slice1[0].weight, conv.features[0].weight)  # mapped, not random


def test_missing_lpips_weights_error_or_documented_fallback(no_weights):
    with pytest.raises(W.WeightsNotFound, match="alexnet"):
        perceptual_loss("alex")
    mnv2 = no_weights / "mnv2.pth"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), mnv2)
    loss = perceptual_loss("alex", fallback=BackboneConfig("mobilenet_v2", ("features.3", "features.6"), str(mnv2)))
    assert isinstance(loss, FeaturePerceptualLoss) and "feature-space" in loss.description
    x = torch.rand(1, 3, 32, 32)
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-6) and loss(x, torch.rand(1, 3, 32, 32)).item() > 0
