"""The patch discriminator and LDM's adversarial terms."""

import torch

from adcli.model.nets.discriminator import PatchDiscriminator, adaptive_weight, hinge_discriminator_loss


def test_patchgan_is_the_70px_receptive_field_design():
    disc = PatchDiscriminator(3, 64, 3)
    assert disc(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)  # pix2pix's 30x30 patches at 256 px
    # 3·64·16+64 | 64·128·16 + BN | 128·256·16 + BN | 256·512·16 + BN | 512·16+1: biases only where no BatchNorm follows
    assert sum(p.numel() for p in disc.parameters()) == 3136 + 131072 + 256 + 524288 + 512 + 2097152 + 1024 + 8193
    assert int(disc.steps) == 0 and "steps" in disc.state_dict()


def test_hinge_loss_is_zero_only_for_confident_correct_logits():
    assert float(hinge_discriminator_loss(torch.full((4,), 1.0), torch.full((4,), -1.0))) == 0.0
    assert float(hinge_discriminator_loss(torch.zeros(4), torch.zeros(4))) == 1.0
    assert float(hinge_discriminator_loss(torch.full((4,), -1.0), torch.full((4,), 1.0))) == 2.0


def test_adaptive_weight_matches_the_gradient_norm_ratio():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    rec, gen = (w ** 2).sum(), 3 * w.sum()  # gradients (2, 4) and (3, 3)
    expected = 0.5 * (20 ** 0.5) / (18 ** 0.5 + 1e-4)
    assert abs(float(adaptive_weight(rec, gen, w, 0.5)) - expected) < 1e-6
    assert not adaptive_weight(rec, gen, w, 0.5).requires_grad
