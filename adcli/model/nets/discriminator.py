"""The patch discriminator and adversarial terms of LDM's autoencoder loss (LPIPSWithDiscriminator),
used when DiAD fine-tunes or trains its KL autoencoder (`autoencoder.disc_start`).

PatchGAN (Isola et al. 2017, as in taming-transformers / latent-diffusion): conv4×4 stride 2 →
LeakyReLU(0.2), then `layers − 1` conv4×4 stride 2 → BatchNorm → LeakyReLU with channels doubling up
to 8×, one conv4×4 stride 1 → BatchNorm → LeakyReLU, and a conv4×4 to one logit per patch; convs drawn
from N(0, 0.02), BatchNorm scales from N(1, 0.02). Hinge loss for the discriminator, −mean(logits)
for the generator, weighted adaptively so that its gradient at the decoder's last layer has the
reconstruction loss's norm times `disc_weight`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3):
        super().__init__()
        if layers < 1 or channels < 1:
            raise ValueError("the discriminator needs layers >= 1 and channels >= 1")
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < layers else 1
            blocks += [nn.Conv2d(channels * prev, channels * mult, 4, stride, 1, bias=False),
                       nn.BatchNorm2d(channels * mult), nn.LeakyReLU(0.2)]
        blocks.append(nn.Conv2d(channels * mult, 1, 4, 1, 1))
        self.net = nn.Sequential(*blocks)
        # Optimisation steps taken; the adversarial terms start at the recipe's step (a buffer: a
        # resumed run continues the count from its checkpoint).
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) in [−1, 1] -> patch logits (B, 1, h, w); larger = more real."""
        return self.net(images)


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(reconstruction_loss: torch.Tensor, generator_loss: torch.Tensor, last_layer: torch.Tensor,
                    disc_weight: float) -> torch.Tensor:
    """disc_weight · ‖∇ reconstruction‖ / (‖∇ generator‖ + 1e-4) at `last_layer`, clamped to [0, 1e4],
    detached: the generator term's gradient there gets the reconstruction term's size."""
    rec_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    gen_grad = torch.autograd.grad(generator_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (gen_grad.norm() + 1e-4)
    return weight.clamp(0.0, 1e4).detach() * disc_weight
