import torch
from torch import nn

from adcli.model.nets.features import BackboneConfig, FeatureExtractor, random_backbone_state

CONFIG = BackboneConfig("mobilenet_v2", ("features.3", "features.6"))


def _unfolded(extractor: FeatureExtractor, images: torch.Tensor) -> list[torch.Tensor]:
    out = extractor.body(((images - extractor.mean) / extractor.std).contiguous(memory_format=torch.channels_last))
    return list(out.values())


def _varied_state(seed: int) -> dict:
    """Random weights with BatchNorm statistics far from the identity, so folding them matters."""
    state = random_backbone_state(CONFIG, seed)
    g = torch.Generator().manual_seed(seed)
    for name, t in state.items():
        if name.endswith("running_var"):
            state[name] = torch.rand(t.shape, generator=g) * 2 + 0.1
        elif name.endswith("running_mean") or (name.endswith("bias") and t.dim() == 1):
            state[name] = torch.randn(t.shape, generator=g) * 0.1
    return state


def test_folded_batchnorm_gives_the_same_features_and_keeps_the_saved_names():
    extractor = FeatureExtractor(CONFIG, _varied_state(1))
    images = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        folded, plain = extractor(images), _unfolded(extractor, images)
    for a, b in zip(folded, plain):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in extractor._folded_body().modules())
    names = list(extractor.state_dict())
    assert any(n.endswith("running_var") for n in names) and not any("folded" in n for n in names)


def test_folded_body_follows_loaded_weights():
    extractor = FeatureExtractor(CONFIG, _varied_state(1))
    images = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        before = extractor(images)[1].clone()
    other = FeatureExtractor(CONFIG, _varied_state(2))
    extractor.load_state_dict(other.state_dict())
    with torch.inference_mode():
        after, expected = extractor(images)[1], other(images)[1]
    torch.testing.assert_close(after, expected)
    assert not torch.allclose(after, before)


def test_gradients_reach_the_images_after_a_first_call_under_inference_mode():
    extractor = FeatureExtractor(CONFIG, _varied_state(1))
    images = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        extractor(images)
    images.requires_grad_(True)
    extractor(images)[0].square().sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in extractor._folded_body().parameters())


def test_random_state_fits_the_network_and_is_finite():
    state = random_backbone_state(CONFIG)
    extractor = FeatureExtractor(CONFIG, state)
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    with torch.inference_mode():
        assert all(torch.isfinite(f).all() for f in extractor(torch.rand(1, 3, 32, 32)))
