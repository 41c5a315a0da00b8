"""Discriminators for adversarial deblurring (DeblurGANv2's ``d_name`` choices).

Every discriminator takes ``x: Tensor (B,3,H,W) RGB float in [-1, 1]`` and returns raw scores
(logits, no sigmoid). What it returns depends on the kind, and ``deblur.train.losses.AdversarialLoss``
understands all of them:

- ``patch_gan``    -> ``Tensor (B,1,h,w)``: one score per overlapping 70x70 patch.
- ``double_gan``   -> ``{"full": Tensor (B,1,h1,w1), "patch": Tensor (B*num_crops,1,h2,w2)}``.
- ``multi_scale``  -> ``list[Tensor]`` of 3 score maps, finest scale first.
- ``no_gan``       -> ``build_discriminator`` returns ``None``: train without an adversarial term.

Build them by name: ``build_discriminator("patch_gan", norm_layer="instance")``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

import torch
from torch import Tensor, nn

from configs import did_you_mean

logger = logging.getLogger(__name__)

__all__ = [
    "DISCRIMINATORS",
    "DoubleGAN",
    "MultiScaleDiscriminator",
    "NLayerDiscriminator",
    "build_discriminator",
    "random_crops",
]

_NORMS = ("instance", "batch", "none")


def _norm(norm_layer: str, channels: int) -> nn.Module:
    if norm_layer == "instance":
        # pix2pix's choice: no affine, no running stats (same behaviour in train and eval)
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if norm_layer == "batch":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


def _conv(cin: int, cout: int, stride: int, bias: bool, spectral_norm: bool) -> nn.Module:
    # kernel 4, padding 2: DeblurGANv2 / pix2pixHD (padw = ceil((4-1)/2)); the receptive field is
    # the same 70 px as pix2pix's padding 1, and small inputs (16 px) still give a non-empty map.
    conv = nn.Conv2d(cin, cout, kernel_size=4, stride=stride, padding=2, bias=bias)
    if spectral_norm:
        conv = nn.utils.parametrizations.spectral_norm(conv)
    return conv


class NLayerDiscriminator(nn.Module):
    """PatchGAN of pix2pix / DeblurGANv2 (``NLayerDiscriminator``), logits out (no sigmoid).

    Input ``(B,3,H,W)`` RGB in [-1,1]; output ``(B,1,h,w)``, one score per patch. With
    ``n_layers=3`` each score sees a 70x70 patch; ``n_layers=5`` is DeblurGANv2's "full"
    (global) discriminator. ``norm_layer``: ``instance`` | ``batch`` | ``none``;
    ``spectral_norm`` wraps every convolution (usually with ``norm_layer="none"``).
    """

    def __init__(
        self,
        in_channels: int = 3,
        ndf: int = 64,
        n_layers: int = 3,
        norm_layer: str = "instance",
        spectral_norm: bool = False,
    ):
        super().__init__()
        if norm_layer not in _NORMS:
            raise ValueError(f"norm_layer must be one of {list(_NORMS)}, got {norm_layer!r}")
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        bias = norm_layer != "batch"  # a conv before BatchNorm does not need a bias
        layers: list[nn.Module] = [_conv(in_channels, ndf, 2, True, spectral_norm), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [_conv(ndf * prev, ndf * mult, 2, bias, spectral_norm), _norm(norm_layer, ndf * mult)]
            layers += [nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [_conv(ndf * prev, ndf * mult, 1, bias, spectral_norm), _norm(norm_layer, ndf * mult)]
        layers += [nn.LeakyReLU(0.2, True), _conv(ndf * mult, 1, 1, True, spectral_norm)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B,3,H,W) RGB [-1,1] -> logits (B,1,h,w)."""
        return self.model(x)


def random_crops(x: Tensor, size: int, num_crops: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """Random ``size`` x ``size`` crops, each at its own position.

    x: (B,C,H,W) -> (B*num_crops,C,s,s) with s = min(size, H, W); crops of image b are rows
    ``b*num_crops ... b*num_crops+num_crops-1``. Positions are drawn on the CPU (``generator``
    if given, else torch's global RNG), so the result is reproducible under ``torch.manual_seed``.
    """
    b, _, h, w = x.shape
    s = min(size, h, w)
    ys = torch.randint(0, h - s + 1, (b * num_crops,), generator=generator).tolist()
    xs = torch.randint(0, w - s + 1, (b * num_crops,), generator=generator).tolist()
    crops = [x[i // num_crops, :, y : y + s, xx : xx + s] for i, (y, xx) in enumerate(zip(ys, xs))]
    return torch.stack(crops)


class DoubleGAN(nn.Module):
    """DeblurGANv2's ``double_gan``: a global discriminator plus a PatchGAN on local crops.

    ``full`` is a 5-layer ``NLayerDiscriminator`` on the whole image; ``patch`` is a 3-layer
    PatchGAN on ``num_crops`` random ``crop_size`` x ``crop_size`` crops per image (clamped to the
    image size). Each forward draws new crop positions, so ``D(restored)`` and ``D(sharp)`` in one
    step see different places: the adversarial losses only compare batch statistics of the
    scores (relativistic means, or per-sample targets), so aligned crops are not needed.

    forward: x (B,3,H,W) RGB [-1,1] -> ``{"full": (B,1,h1,w1), "patch": (B*num_crops,1,h2,w2)}``.
    ``AdversarialLoss`` averages the two components, i.e. (full + patch) / 2 as in DeblurGANv2.
    """

    def __init__(
        self,
        ndf: int = 64,
        norm_layer: str = "instance",
        spectral_norm: bool = False,
        crop_size: int = 70,
        num_crops: int = 1,
        full_layers: int = 5,
        patch_layers: int = 3,
    ):
        super().__init__()
        if crop_size < 16:
            raise ValueError(f"crop_size must be >= 16 px, got {crop_size}")
        if num_crops < 1:
            raise ValueError(f"num_crops must be >= 1, got {num_crops}")
        self.crop_size = crop_size
        self.num_crops = num_crops
        self.full = NLayerDiscriminator(3, ndf, full_layers, norm_layer, spectral_norm)
        self.patch = NLayerDiscriminator(3, ndf, patch_layers, norm_layer, spectral_norm)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """x: (B,3,H,W) RGB [-1,1] -> {"full": logits, "patch": logits on random crops}."""
        return {"full": self.full(x), "patch": self.patch(random_crops(x, self.crop_size, self.num_crops))}


class MultiScaleDiscriminator(nn.Module):
    """pix2pixHD's multi-scale discriminator: ``num_scales`` PatchGANs, each on the image
    average-pooled once more (AvgPool 3x3, stride 2, ``count_include_pad=False``).

    forward: x (B,3,H,W) RGB [-1,1] -> list of ``num_scales`` logit maps, finest first
    (``(B,1,h,w)``, ``(B,1,~h/2,~w/2)``, ...). ``AdversarialLoss`` averages over scales.
    """

    def __init__(
        self,
        ndf: int = 64,
        n_layers: int = 3,
        norm_layer: str = "instance",
        spectral_norm: bool = False,
        num_scales: int = 3,
    ):
        super().__init__()
        if num_scales < 1:
            raise ValueError(f"num_scales must be >= 1, got {num_scales}")
        self.scales = nn.ModuleList(
            NLayerDiscriminator(3, ndf, n_layers, norm_layer, spectral_norm) for _ in range(num_scales)
        )
        self.down = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: (B,3,H,W) RGB [-1,1] -> [logits at full res, at 1/2, at 1/4, ...]."""
        outs = []
        for i, d in enumerate(self.scales):
            if i:
                x = self.down(x)
            outs.append(d(x))
        return outs


# "no_gan" maps to None: build_discriminator returns None and the trainer skips the adversarial term.
DISCRIMINATORS: dict[str, Callable[..., nn.Module] | None] = {
    "no_gan": None,
    "patch_gan": NLayerDiscriminator,
    "double_gan": DoubleGAN,
    "multi_scale": MultiScaleDiscriminator,
}


def _unknown(kind: str, name: str, choices) -> ValueError:
    return ValueError(f"Unknown {kind} '{name}'.{did_you_mean(name, choices)} Available: {sorted(choices)}")


def build_discriminator(name: str, **kwargs) -> nn.Module | None:
    """Build a discriminator by name (``ModelConfig.d_name``); ``"no_gan"`` returns ``None``.

    kwargs go to the class: ``ndf``, ``norm_layer`` (instance|batch|none), ``spectral_norm``,
    plus ``n_layers`` (patch_gan, multi_scale), ``crop_size``/``num_crops`` (double_gan),
    ``num_scales`` (multi_scale). Unknown names or kwargs raise ValueError listing the choices.
    """
    if name not in DISCRIMINATORS:
        raise _unknown("discriminator", name, DISCRIMINATORS)
    cls = DISCRIMINATORS[name]
    if cls is None:
        if kwargs:
            logger.debug("discriminator 'no_gan': ignoring kwargs %s", sorted(kwargs))
        return None
    accepted = [p for p in inspect.signature(cls).parameters if p != "self"]
    bad = sorted(set(kwargs) - set(accepted))
    if bad:
        raise ValueError(f"discriminator '{name}' got unknown argument(s) {bad}. Accepted: {accepted}")
    return cls(**kwargs)
