"""DiAD's networks: diffusers models built from recipe sections, the SG network and the SFF block."""

import pytest
import torch

from adcli.core.errors import AdcliError
from adcli.model.nets import ldm

AE = ldm.AutoencoderArch(block_out_channels=(8, 16), layers_per_block=1, norm_groups=4, mid_attention=False)
UNET = ldm.DenoiserArch(block_out_channels=(16, 32, 32), layers_per_block=1, cross_attention=(False, True, True),
                        heads=2, context_dim=8, norm_groups=4)


def test_autoencoder_shapes_and_kl_term():
    torch.manual_seed(0)
    vae = ldm.build_autoencoder(AE, 32)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    posterior = vae.encode(x).latent_dist
    assert posterior.mean.shape == (2, 4, 16, 16) and AE.downsampling == 2
    assert vae.decode(posterior.mean).sample.shape == (2, 3, 32, 32)
    mean, var = posterior.mean, posterior.std ** 2
    by_hand = 0.5 * (mean ** 2 + var - 1 - var.log()).sum(dim=(1, 2, 3))  # KL(N(μ, σ²) ‖ N(0, I))
    assert torch.allclose(posterior.kl(), by_hand, rtol=1e-4)


def test_sg_outputs_have_the_channels_sff_expects():
    torch.manual_seed(0)
    unet = ldm.build_denoiser(UNET, 4, 16)
    sg = ldm.build_semantic_guided(unet, (8, 16))
    with torch.no_grad():
        down, mid = sg(torch.randn(2, 4, 16, 16), torch.tensor([3, 900]), encoder_hidden_states=torch.zeros(2, 1, 8),
                       controlnet_cond=torch.rand(2, 3, 32, 32), return_dict=False)
    assert [d.shape[1] for d in down] == ldm.sg_output_channels(UNET)
    assert all(float(d.abs().max()) == 0 for d in down) and float(mid.abs().max()) == 0  # zero convolutions
    # the copy is the denoiser's encoder
    assert torch.equal(sg.down_blocks[1].resnets[0].conv1.weight, unet.down_blocks[1].resnets[0].conv1.weight)


def test_sff_fuses_the_next_higher_scale_into_the_lowest():
    channels = ldm.sg_output_channels(UNET)  # conv_in, level 0, down, level 1, down, level 2
    assert channels == [16, 16, 16, 32, 32, 32]
    sizes = [16, 16, 8, 8, 4, 4]
    sff = ldm.SpatialFeatureFusion(channels, UNET.layers_per_block).requires_grad_(False)
    assert (sff.high, sff.low) == ([2, 3], [4, 5])
    outs = [torch.randn(2, c, s, s) for c, s in zip(channels, sizes)]
    fused = sff(outs)
    assert [f.shape for f in fused] == [o.shape for o in outs]
    assert all(torch.equal(f, o) for f, o in zip(fused[:4], outs[:4]))  # higher scales pass through
    # zero-initialised: the lowest scale is SiLU of itself, so zero SG outputs stay zero
    assert torch.allclose(fused[4], torch.nn.functional.silu(outs[4]))
    assert float(sff([torch.zeros_like(o) for o in outs])[5].abs().max()) == 0
    torch.nn.init.normal_(sff.fuse[1][0][0].weight)  # high output 2 into low output 5
    changed = sff(outs)
    assert not torch.allclose(changed[5], fused[5]) and torch.equal(changed[4], fused[4])


def test_pretrained_folders_load_and_must_match_the_recipe(tmp_path, monkeypatch):
    torch.manual_seed(0)
    ldm.build_autoencoder(AE, 32).save_pretrained(tmp_path / "sd" / "vae")
    saved = ldm.build_denoiser(UNET, 4, 16)
    saved.save_pretrained(tmp_path / "sd" / "unet")
    unet = ldm.build_denoiser(UNET, 4, 16, pretrained=str(tmp_path / "sd"))  # a checkout's unet/ subfolder
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), saved.state_dict().values()))
    monkeypatch.setenv("ADCLI_WEIGHTS_DIR", str(tmp_path))
    ldm.build_autoencoder(AE, 32, pretrained="sd")  # a name inside $ADCLI_WEIGHTS_DIR
    with pytest.raises(AdcliError, match="block_out_channels: recipe \\[8, 32\\]"):
        ldm.build_autoencoder(ldm.AutoencoderArch(block_out_channels=(8, 32), layers_per_block=1, norm_groups=4,
                                                  mid_attention=False), 32, pretrained="sd")
    with pytest.raises(AdcliError, match="no diffusers model 'missing' at .*missing.*ADCLI_WEIGHTS_DIR"):
        ldm.build_denoiser(UNET, 4, 16, pretrained="missing")


def test_pretrained_folders_are_found_in_the_hugging_face_cache_and_must_be_safetensors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("ADCLI_WEIGHTS_DIR", raising=False)
    snapshot = tmp_path / "hub" / "models--someorg--tiny-sd" / "snapshots" / "0123abc"
    torch.manual_seed(0)
    saved = ldm.build_denoiser(UNET, 4, 16)
    saved.save_pretrained(snapshot / "unet")
    for name in ("someorg/tiny-sd", "tiny-sd"):  # as on the Hub, or by its name alone
        assert ldm.model_folder(name, "unet") == snapshot / "unet"
        unet = ldm.build_denoiser(UNET, 4, 16, pretrained=name)
        assert torch.equal(unet.conv_out.weight, saved.conv_out.weight)
    with pytest.raises(AdcliError, match="or the Hugging Face cache"):
        ldm.model_folder("otherorg/tiny-sd", "unet")
    (snapshot / "unet" / "diffusion_pytorch_model.safetensors").rename(snapshot / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(AdcliError, match="safetensors only, never pickled"):
        ldm.model_folder("tiny-sd", "unet")
