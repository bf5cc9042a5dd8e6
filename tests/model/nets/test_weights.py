import hashlib

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from adcli.model.nets import weights as W
from adcli.model.nets.features import BackboneConfig, FeatureExtractor


@pytest.fixture
def isolated(no_weights):
    return no_weights


def _put(path, content=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_resolution_order(isolated, monkeypatch):
    hub = _put(isolated / "torch" / "hub" / "checkpoints" / "resnet18.pth")
    assert W.resolve_weights("resnet18") == hub
    mine = _put(isolated / "mine" / "resnet18-f37072fd.pth")
    monkeypatch.setenv("ADCLI_WEIGHTS_DIR", str(isolated / "mine"))
    assert W.resolve_weights("resnet18") == mine  # the weights folder beats the cache
    explicit = _put(isolated / "elsewhere.safetensors")
    assert W.resolve_weights("resnet18", explicit) == explicit  # an explicit file beats everything
    with pytest.raises(W.WeightsNotFound, match="not found"):
        W.resolve_weights("resnet18", isolated / "missing.pth")


def test_weights_list_shows_diffusers_folders(isolated, monkeypatch):
    vae = _put(isolated / "mine" / "stable-diffusion-v1-5" / "vae" / "diffusion_pytorch_model.safetensors")
    plain = _put(isolated / "mine" / "resnet50.pth")
    monkeypatch.setenv("ADCLI_WEIGHTS_DIR", str(isolated / "mine"))
    assert W.local_weights() == [("ADCLI_WEIGHTS_DIR", plain), ("ADCLI_WEIGHTS_DIR (diffusers)", vae)]


def test_hf_cache_and_packaged(isolated, monkeypatch):
    hf = _put(isolated / "hf" / "models--timm--tiny_net" / "snapshots" / "abc" / "model.safetensors")
    assert W.resolve_weights("tiny_net") == hf
    pkg = _put(isolated / "site" / "fakepkg" / "weights" / "tiny.pth")
    (isolated / "site" / "fakepkg" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(isolated / "site"))
    monkeypatch.setattr(W, "OFFLINE_PACKAGES", {"other_net": ("fakepkg", "weights/tiny.pth")})
    assert W.resolve_weights("other_net") == pkg


def test_missing_weights_error_says_what_to_do(isolated):
    with pytest.raises(W.WeightsNotFound) as exc:
        W.resolve_weights("mobilenet_v2")
    msg = str(exc.value)
    assert "mobilenet_v2-b0353104.pth" in msg and "ADCLI_WEIGHTS_DIR" in msg and "adcli weights pull" in msg
    assert "\n" not in msg


def test_checksum_in_file_name_is_verified(tmp_path):
    content = b"some weights"
    prefix = hashlib.sha256(content).hexdigest()[:8]
    W.verify_checksum(_put(tmp_path / f"net-{prefix}.pth", content))
    with pytest.raises(W.ChecksumMismatch, match="damaged"):
        W.verify_checksum(_put(tmp_path / "net-00000000.pth", content))


def test_extractor_loads_pth_and_safetensors(tmp_path):
    net = torchvision.models.mobilenet_v2()
    state = net.state_dict()
    pth = tmp_path / "mnv2.pth"
    torch.save(state, pth)
    st = tmp_path / "mnv2.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, st)
    x = torch.rand(1, 3, 64, 64)
    outs = []
    for path in (pth, st):
        fx = FeatureExtractor(BackboneConfig("mobilenet_v2", ("features.3", "features.6"), str(path)))
        feats = fx(x)
        assert [f.shape[1:] for f in feats] == [(24, 16, 16), (32, 8, 8)]
        outs.append(feats[1])
    assert torch.equal(outs[0], outs[1])
    bad = FeatureExtractor.__init__
    with pytest.raises(Exception, match="has no layer 'layer9'"):
        bad(FeatureExtractor.__new__(FeatureExtractor), BackboneConfig("mobilenet_v2", ("layer9",), str(pth)))
