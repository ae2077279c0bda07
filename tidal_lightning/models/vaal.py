"""VAAL's β-VAE and discriminator (Sinha, Ebrahimi & Darrell, ICCV 2019), sized to the images.

The architecture is the one of the authors' `model.py` (sinhasam/vaal), written for 32×32
inputs: an encoder of 4×4 stride-2 convolutions with 128, 256, 512, 1024 channels (BatchNorm,
ReLU), linear heads for μ and log σ², and a decoder that maps z back through a linear layer and
stride-2 transposed convolutions with the channels in reverse, ending in a 1×1 transposed
convolution to the image channels. Here it is sized to any `(C, H, W)`:

- the encoder has `depth = min(4, ⌊log2 min(H, W)⌋)` convolutions (4 for 16×16 and larger);
  each halves the side (⌊s/2⌋), so 32 -> 2, 28 -> 1, 64 -> 4, and the μ/log σ² heads read the
  flattened map, whatever its size;
- the decoder starts at `⌈H / 2^(depth-1)⌉ × ⌈W / 2^(depth-1)⌉`, upsamples `depth - 1` times
  and crops to `H × W` (28×28 decodes from 4×4 to 32×32 and is cropped; TA-VAAL's code reaches
  28 with a 3×3 kernel instead);
- `condition_dim` extra inputs are concatenated to z before decoding and to μ before the
  discriminator: TA-VAAL's predicted-loss rank (1); VAAL has none.

Weights are initialised as the authors' code ends up doing: Kaiming-normal for the
convolutions and linear layers inside the encoder, decoder and discriminator stacks, zero
biases; the μ/log σ² heads and the transposed convolutions keep PyTorch's default (the
authors' `weight_init` skips them). Draws come from the global RNG: build these modules
under `torch.random.fork_rng` with a derived seed (the VAAL strategy does).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _kaiming(stack: nn.Sequential) -> None:
    for layer in stack:
        if isinstance(layer, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class VAE(nn.Module):
    """β-VAE over images `[B, C, H, W]` (normalised floats).

    Args:
        image_shape: `(C, H, W)`.
        latent_dim: size of z (32 in VAAL).
        width: channels of the first encoder convolution, doubled per layer (128 in VAAL).
        condition_dim: size of the condition concatenated to z before decoding (0 = none).
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        latent_dim: int = 32,
        width: int = 128,
        condition_dim: int = 0,
    ) -> None:
        super().__init__()
        channels, height, width_px = image_shape
        if min(height, width_px) < 2:
            raise ValueError(f"VAE needs images of at least 2×2 pixels, got {image_shape}")
        self.image_shape = image_shape
        self.depth = min(4, int(math.log2(min(height, width_px))))
        layers: list[nn.Module] = []
        in_channels, side_h, side_w = channels, height, width_px
        for k in range(self.depth):
            out_channels = width * 2**k
            layers += [
                nn.Conv2d(in_channels, out_channels, 4, 2, 1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
            in_channels, side_h, side_w = out_channels, side_h // 2, side_w // 2
        self.encoder = nn.Sequential(*layers, nn.Flatten())
        flat = in_channels * side_h * side_w
        self.fc_mu = nn.Linear(flat, latent_dim)
        self.fc_logvar = nn.Linear(flat, latent_dim)

        top = in_channels  # width · 2^(depth-1)
        scale = 2 ** (self.depth - 1)
        self.start = (math.ceil(height / scale), math.ceil(width_px / scale))
        layers = [
            nn.Linear(latent_dim + condition_dim, top * self.start[0] * self.start[1]),
            nn.Unflatten(1, (top, *self.start)),
        ]
        for _ in range(self.depth - 1):
            layers += [
                nn.ConvTranspose2d(top, top // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(top // 2),
                nn.ReLU(inplace=True),
            ]
            top //= 2
        layers.append(nn.ConvTranspose2d(top, channels, 1))
        self.decoder = nn.Sequential(*layers)
        _kaiming(self.encoder)
        _kaiming(self.decoder)

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """`[B, C, H, W]` -> μ `[B, z]`, log σ² `[B, z]`."""
        hidden = self.encoder(images)
        return self.fc_mu(hidden), self.fc_logvar(hidden)

    def decode(self, latents: Tensor, condition: Tensor | None = None) -> Tensor:
        """z `[B, z]` (and condition `[B, c]`) -> reconstruction `[B, C, H, W]`."""
        if condition is not None:
            latents = torch.cat([latents, condition], dim=1)
        _, height, width = self.image_shape
        return self.decoder(latents)[..., :height, :width]

    def forward(
        self, images: Tensor, generator: torch.Generator, condition: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Reconstruction `[B, C, H, W]`, μ `[B, z]`, log σ² `[B, z]`.

        z = μ + σ·ε with ε drawn from `generator` (on the images' device).
        """
        mu, logvar = self.encode(images)
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        latents = mu + (0.5 * logvar).exp() * noise
        return self.decode(latents, condition), mu, logvar


class Discriminator(nn.Module):
    """Labeled-vs-unlabeled classifier on μ (VAAL: `Linear(z, 512)`, ReLU, `Linear(512, 512)`,
    ReLU, `Linear(512, 1)`).

    Returns logits; p(labeled) = sigmoid(logit). (The authors' network ends in a sigmoid and
    trains with `BCELoss`; the logit form is the same loss, without saturating at 0 or 1.)
    """

    def __init__(self, latent_dim: int = 32, condition_dim: int = 0, hidden: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim + condition_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 1),
        )
        _kaiming(self.net)

    def forward(self, mu: Tensor, condition: Tensor | None = None) -> Tensor:
        """μ `[B, z]` (and condition `[B, c]`) -> logits `[B]`."""
        if condition is not None:
            mu = torch.cat([mu, condition], dim=1)
        return self.net(mu).squeeze(1)


def vae_loss(
    images: Tensor,
    reconstruction: Tensor,
    mu: Tensor,
    logvar: Tensor,
    beta: float,
    kl_reduction: str = "sum",
) -> Tensor:
    """Mean squared reconstruction error + β · KL(N(μ, σ²) ‖ N(0, 1)).

    The MSE is averaged over every element; the KL terms
    `-½ (1 + log σ² - μ² - σ²)` are summed over the batch and the latent dimensions
    (`kl_reduction="sum"`, VAAL's `solver.py`) or averaged (`"mean"`, TA-VAAL's
    `selection_methods.py`).
    """
    mse = F.mse_loss(reconstruction, images)
    kl_terms = -0.5 * (1 + logvar - mu.square() - logvar.exp())
    kl = kl_terms.sum() if kl_reduction == "sum" else kl_terms.mean()
    return mse + beta * kl


def discriminator_loss(labeled_logits: Tensor, unlabeled_logits: Tensor) -> Tensor:
    """BCE(D(labeled), 1) + BCE(D(unlabeled), 0), each averaged over its batch."""
    return F.binary_cross_entropy_with_logits(
        labeled_logits, torch.ones_like(labeled_logits)
    ) + F.binary_cross_entropy_with_logits(unlabeled_logits, torch.zeros_like(unlabeled_logits))


def adversarial_loss(labeled_logits: Tensor, unlabeled_logits: Tensor) -> Tensor:
    """The VAE's adversarial term: BCE(D(labeled), 1) + BCE(D(unlabeled), 1), so the encoder
    learns to make the discriminator call the unlabeled latents labeled."""
    return F.binary_cross_entropy_with_logits(
        labeled_logits, torch.ones_like(labeled_logits)
    ) + F.binary_cross_entropy_with_logits(unlabeled_logits, torch.ones_like(unlabeled_logits))
