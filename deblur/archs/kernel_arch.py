"""Blur-kernel estimator: grey crops of a blurred frame -> a normalised, non-negative blur kernel.

A width-reduced MobileNetV2 trunk (DeblurGANv2's backbone family, random init, one grey input channel)
looks at full-resolution crops, so the blur is not shrunk away. Global pooling and a small head give
``kernel_size**2`` logits; a softmax makes them a kernel (non-negative, sums to 1). The kernel is a
true convolution kernel centred on its middle pixel (``deblur.data.blur_synth`` convention).

``kernel_moments`` gives the kernel's second moments (orientation and extent): the same numbers for a
predicted and a true kernel, used as a training loss and to report angle errors.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models import mobilenet_v2

__all__ = ["KernelEstimator", "angle_error", "kernel_extent", "kernel_moments", "moment_angle", "moment_features"]


class KernelEstimator(nn.Module):
    """(B,1,S,S) grey float in [0,1] (S >= 32, any multiple of 16 is exact) -> (B,k,k) kernels.

    Args:
        kernel_size: side of the predicted kernel (odd).
        width_mult: MobileNetV2 width multiplier.
        depth: how many MobileNetV2 feature blocks to keep (14 = up to stride 16, 96 x width channels).
        hidden: width of the head.
    """

    def __init__(self, kernel_size: int = 41, width_mult: float = 0.5, depth: int = 14, hidden: int = 256):
        super().__init__()
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd int >= 3, got {kernel_size}")
        features = mobilenet_v2(weights=None, width_mult=width_mult).features[:depth]
        stem = features[0][0]
        features[0][0] = nn.Conv2d(1, stem.out_channels, 3, stride=2, padding=1, bias=False)
        self.trunk = features
        channels = features[-1].out_channels
        self.head = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
        )
        self.to_kernel = nn.Linear(hidden, kernel_size * kernel_size)
        # the kernel's orientation and extent as 3 numbers (moment_features): a direct, low-dimensional target
        # that teaches the trunk orientation far faster than the k*k kernel alone
        self.to_motion = nn.Linear(hidden, 3)
        self.kernel_size = kernel_size
        with torch.no_grad():  # start near a flat kernel, but let gradients reach the trunk from step one
            self.to_kernel.weight.mul_(0.1)
            self.to_kernel.bias.zero_()

    def features(self, crops: Tensor) -> Tensor:
        """(B,1,S,S) grey in [0,1] -> (B, hidden) pooled features."""
        if crops.ndim != 4 or crops.shape[1] != 1:
            raise ValueError(f"KernelEstimator expects (B,1,S,S) grey crops, got shape {tuple(crops.shape)}")
        return self.head(self.trunk(crops * 2.0 - 1.0))

    def logits(self, crops: Tensor) -> Tensor:
        """(B,1,S,S) grey in [0,1] -> (B, k*k) unnormalised log-kernel."""
        return self.to_kernel(self.features(crops))

    def outputs(self, crops: Tensor) -> tuple[Tensor, Tensor]:
        """-> (kernel logits (B, k*k), motion features (B,3)) in one pass (training)."""
        h = self.features(crops)
        return self.to_kernel(h), self.to_motion(h)

    def forward(self, crops: Tensor) -> Tensor:
        k = self.kernel_size
        return torch.softmax(self.logits(crops).float(), dim=1).view(-1, k, k)


def _grid(k: int, device: torch.device) -> tuple[Tensor, Tensor]:
    r = torch.arange(k, device=device, dtype=torch.float32) - (k - 1) / 2
    return r.view(1, k, 1).expand(1, k, k), r.view(1, 1, k).expand(1, k, k)  # (y, x) offsets from the centre


def kernel_moments(kernel: Tensor) -> Tensor:
    """(B,k,k) kernels summing to 1 -> (B,5): mean x, mean y, var x, var y, cov xy (pixels, y down)."""
    y, x = _grid(kernel.shape[-1], kernel.device)
    kernel = kernel.float()
    mx = (kernel * x).sum((1, 2))
    my = (kernel * y).sum((1, 2))
    dx, dy = x - mx.view(-1, 1, 1), y - my.view(-1, 1, 1)
    vxx = (kernel * dx * dx).sum((1, 2))
    vyy = (kernel * dy * dy).sum((1, 2))
    vxy = (kernel * dx * dy).sum((1, 2))
    return torch.stack([mx, my, vxx, vyy, vxy], dim=1)


def moment_angle(moments: Tensor) -> Tensor:
    """(B,5) moments -> (B,) angle of the kernel's long axis in degrees, [0, 180), counter-clockwise on screen."""
    vxx, vyy, vxy = moments[:, 2], moments[:, 3], moments[:, 4]
    theta = 0.5 * torch.atan2(-2.0 * vxy, vxx - vyy)  # y grows downwards: flip the sign of the cross term
    return torch.remainder(torch.rad2deg(theta), 180.0)


def kernel_extent(moments: Tensor) -> Tensor:
    """(B,5) moments -> (B,) length of the long axis in pixels, as a uniform segment of the same variance.

    A uniform segment of length L has variance L^2 / 12 along it, so L = sqrt(12 * largest eigenvalue).
    """
    vxx, vyy, vxy = moments[:, 2], moments[:, 3], moments[:, 4]
    half_diff = torch.sqrt(((vxx - vyy) / 2) ** 2 + vxy**2)
    return torch.sqrt(12.0 * ((vxx + vyy) / 2 + half_diff).clamp_min(0.0))


def angle_error(a_deg: Tensor, b_deg: Tensor) -> Tensor:
    """Smallest absolute difference of two axis angles (mod 180), degrees, in [0, 90]."""
    d = torch.remainder(a_deg - b_deg, 180.0)
    return torch.minimum(d, 180.0 - d)


def moment_features(moments: Tensor, eps: float = 0.25) -> Tensor:
    """(B,5) -> (B,3): anisotropy-weighted (cos 2a, sin 2a) and log of the total variance.

    The first two are (vxx - vyy, -2 vxy) / (vxx + vyy + eps): the orientation, weighted by how elongated
    the kernel is (a round kernel has no angle to get wrong). Used as the training loss on orientation.
    """
    vxx, vyy, vxy = moments[:, 2], moments[:, 3], moments[:, 4]
    total = vxx + vyy + eps
    return torch.stack([(vxx - vyy) / total, -2.0 * vxy / total, torch.log(total)], dim=1)

