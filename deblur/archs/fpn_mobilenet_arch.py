"""FPN generators on a MobileNetV2 backbone (DeblurGANv2's FPN-MobileNet, and a depthwise-separable variant).

Layout and range: input and output are ``(B, 3, H, W)`` RGB float in ``[-1, 1]``; any ``H, W >= 32``
(the model reflect-pads to a multiple of 32 inside ``forward`` and crops back). A refiner
(``in_channels=6``) takes the blurred and the deconvolved frame stacked, ``(B, 6, H, W)``, and adds its
residual to the deconvolved one (channels 3..5). A kernel-aware refiner (``in_channels=7``) also gets the
deconvolution's residual ``y - k * x`` in luma (``deblur.deconv.WienerPlan``): the blurred frame's content
where the kernel passes little, so it sees where the deconvolution guessed and where the kernel is wrong.

Design (DeblurGANv2, Kupyn et al. 2019):

* backbone: ``torchvision.models.mobilenet_v2(weights=None).features[:16]``, tapped at strides
  2, 4, 8, 16, 32 (16, 24, 32, 64, 160 channels). Module names match torchvision, so a torchvision
  state dict loads into ``model.backbone`` (``deblur.models.build_generator`` does that; archs never
  touch files). The backbone keeps its BatchNorm; ``norm_layer`` only applies to the FPN and heads.
* lateral 1x1 convs to ``num_filters_fpn`` channels (``num_filters`` at stride 2); top-down path:
  nearest x2, add, 3x3 conv + norm + ReLU.
* four heads (3x3 ``fpn -> num_filters``, 3x3 ``num_filters -> num_filters``, ReLU) upsampled to 1/4,
  concatenated -> 3x3 conv to ``num_filters`` -> x2, add the stride-2 lateral -> 3x3 to
  ``num_filters // 2`` -> x2 -> 3x3 to 3 -> tanh -> (+ input, clamp to [-1, 1] when ``learn_residual``).

Inference in ``eval()`` mode is batch-invariant: BatchNorm uses running statistics and InstanceNorm
(``track_running_stats=False``) normalises each frame on its own, so a frame's output does not depend
on the other frames in its batch. (The reference runs inference in train mode; we do not.)
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenet_v2

logger = logging.getLogger(__name__)

__all__ = ["FPNGenerator", "FPNMobileNetV2", "FPNMobileNetV2DSC", "make_norm", "NORM_LAYERS"]

NORM_LAYERS = ("instance", "batch", "none")
STRIDE = 32  # total stride of every backbone here: inputs are padded to a multiple of it
#: what a generator's input channels hold, by their number (a refiner's residual is on channels 3..5)
REFINER_INPUTS = {
    3: "RGB frame",
    6: "blurred + deconvolved RGB (a refiner)",
    7: "blurred + deconvolved RGB + the deconvolution's luma residual y - k*x (a kernel-aware refiner)",
}


def make_norm(norm_layer: str, channels: int) -> nn.Module:
    """Norm used in the FPN and heads: 'instance' (affine, no running stats), 'batch' or 'none'."""
    if norm_layer == "instance":
        return nn.InstanceNorm2d(channels, affine=True, track_running_stats=False)
    if norm_layer == "batch":
        return nn.BatchNorm2d(channels)
    if norm_layer == "none":
        return nn.Identity()
    raise ValueError(f"Unknown norm_layer '{norm_layer}'. Available: {list(NORM_LAYERS)}")


class SeparableConv2d(nn.Module):
    """3x3 depthwise conv followed by a 1x1 pointwise conv (MobileNet's depthwise-separable conv)."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def conv3x3(in_channels: int, out_channels: int, separable: bool, bias: bool = True) -> nn.Module:
    if separable:
        return SeparableConv2d(in_channels, out_channels, bias=bias)
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)


def conv_norm_relu(in_channels: int, out_channels: int, norm_layer: str, separable: bool) -> nn.Sequential:
    """3x3 conv (plain or separable) + norm + ReLU; the conv has a bias only when there is no norm."""
    return nn.Sequential(
        conv3x3(in_channels, out_channels, separable, bias=norm_layer == "none"),
        make_norm(norm_layer, out_channels),
        nn.ReLU(inplace=True),
    )


class FPNHead(nn.Module):
    """Two 3x3 convs with ReLU (no norm, as in DeblurGANv2)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, separable: bool = False):
        super().__init__()
        self.block0 = conv3x3(in_channels, mid_channels, separable, bias=False)
        self.block1 = conv3x3(mid_channels, out_channels, separable, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.block0(x), inplace=True)
        return F.relu(self.block1(x), inplace=True)


def _up(x: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="nearest") if factor != 1 else x


class FPNGenerator(nn.Module):
    """FPN deblurring generator over any backbone given as an ``nn.Sequential`` plus five tap indices.

    Subclasses pass ``backbone`` (module names as in torchvision's ``features``), ``taps`` (indices of
    the backbone children whose outputs are the stride 2, 4, 8, 16, 32 features) and ``tap_channels``.

    forward: ``x`` (B,3,H,W) RGB float in [-1,1], H,W >= 32 -> same shape, RGB float in [-1,1].
    """

    #: prefixes (after stripping "features.") of torchvision backbone keys this model does not use
    backbone_unused: tuple[str, ...] = ()
    #: name of the torchvision model whose ``features`` state dict fits ``self.backbone``
    backbone_name: str = ""

    def __init__(
        self,
        backbone: nn.Sequential,
        taps: tuple[int, int, int, int, int],
        tap_channels: tuple[int, int, int, int, int],
        norm_layer: str = "instance",
        num_filters: int = 64,
        num_filters_fpn: int = 128,
        learn_residual: bool = True,
        zero_init_last: bool = True,
        dropout: float = 0.0,
        separable: bool = False,
        in_channels: int = 3,
    ):
        super().__init__()
        if in_channels not in REFINER_INPUTS:
            raise ValueError(f"'in_channels' must be one of {sorted(REFINER_INPUTS)} ("
                             + ", ".join(f"{c}: {what}" for c, what in REFINER_INPUTS.items()) + f"), got {in_channels}")
        if in_channels != 3:
            _widen_input(backbone, in_channels)
        self.in_channels = in_channels
        if norm_layer not in NORM_LAYERS:
            raise ValueError(f"Unknown norm_layer '{norm_layer}'. Available: {list(NORM_LAYERS)}")
        if len(taps) != 5 or len(tap_channels) != 5:
            raise ValueError(f"an FPN needs 5 taps (strides 2..32), got taps={taps}, tap_channels={tap_channels}")
        if num_filters % 2:
            raise ValueError(f"'num_filters' must be even (the last stage has num_filters // 2), got {num_filters}")
        self.backbone = backbone
        self.taps = tuple(int(t) for t in taps)
        self.learn_residual = learn_residual
        c0, c1, c2, c3, c4 = tap_channels
        fpn, nf = num_filters_fpn, num_filters

        # laterals (1x1, no bias); the stride-2 lateral has num_filters channels so it adds to the
        # smoothed head output (DeblurGANv2: num_filters_fpn // 2 == num_filters == 64)
        self.lateral0 = nn.Conv2d(c0, nf, 1, bias=False)
        self.lateral1 = nn.Conv2d(c1, fpn, 1, bias=False)
        self.lateral2 = nn.Conv2d(c2, fpn, 1, bias=False)
        self.lateral3 = nn.Conv2d(c3, fpn, 1, bias=False)
        self.lateral4 = nn.Conv2d(c4, fpn, 1, bias=False)
        # top-down path
        self.td1 = conv_norm_relu(fpn, fpn, norm_layer, separable)
        self.td2 = conv_norm_relu(fpn, fpn, norm_layer, separable)
        self.td3 = conv_norm_relu(fpn, fpn, norm_layer, separable)
        # heads
        self.head1 = FPNHead(fpn, nf, nf, separable)
        self.head2 = FPNHead(fpn, nf, nf, separable)
        self.head3 = FPNHead(fpn, nf, nf, separable)
        self.head4 = FPNHead(fpn, nf, nf, separable)
        self.smooth = conv_norm_relu(4 * nf, nf, norm_layer, separable)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.smooth2 = conv_norm_relu(nf, nf // 2, norm_layer, separable)
        self.final = nn.Conv2d(nf // 2, 3, 3, padding=1)
        if zero_init_last:
            # the residual starts at zero: the untrained model is exactly the identity (it trains faster from there)
            nn.init.zeros_(self.final.weight)
            nn.init.zeros_(self.final.bias)

    #: the smallest side the backbone takes; inputs are padded to it (and to a multiple of STRIDE) and cropped back
    min_side: int = STRIDE

    def _up(self, x: torch.Tensor, factor: int, like: torch.Tensor) -> torch.Tensor:
        """``x`` upsampled ``factor`` times, to the size of ``like`` (here they agree: every map is exactly
        input / stride)."""
        return _up(x, factor)

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        last = self.taps[-1]
        for i, layer in enumerate(self.backbone):
            x = layer(x)
            if i in self.taps:
                feats.append(x)
            if i == last:
                break
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B,3,H,W) RGB float in [-1,1], H,W >= 32 -> restored (B,3,H,W) RGB float in [-1,1]."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            what = REFINER_INPUTS[self.in_channels]
            raise ValueError(f"expected a (B,{self.in_channels},H,W) {what} tensor in [-1,1], got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h < STRIDE or w < STRIDE:
            raise ValueError(
                f"input of shape {tuple(x.shape)} is too small: H and W must be >= {STRIDE}; "
                f"resize or pad the frame to at least {STRIDE}x{STRIDE}"
            )
        pad_h, pad_w = max(self.min_side, h + (-h) % STRIDE) - h, max(self.min_side, w + (-w) % STRIDE) - w
        padded = x
        if pad_h or pad_w:  # reflect; a backbone's minimum side may need more than a reflection holds
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"
            padded = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)

        enc0, enc1, enc2, enc3, enc4 = self._features(padded)
        lat0 = self.lateral0(enc0)
        map4 = self.lateral4(enc4)
        lat3, lat2, lat1 = self.lateral3(enc3), self.lateral2(enc2), self.lateral1(enc1)
        map3 = self.td1(lat3 + self._up(map4, 2, lat3))
        map2 = self.td2(lat2 + self._up(map3, 2, lat2))
        map1 = self.td3(lat1 + self._up(map2, 2, lat1))

        heads = [
            self._up(self.head4(map4), 8, map1),
            self._up(self.head3(map3), 4, map1),
            self._up(self.head2(map2), 2, map1),
            self.head1(map1),
        ]
        smoothed = self.dropout(self.smooth(torch.cat(heads, dim=1)))
        smoothed = self.smooth2(self._up(smoothed, 2, lat0) + lat0)
        out = self.final(self._up(smoothed, 2, padded))[:, :, :h, :w]
        out = torch.tanh(out.to(x.dtype))  # autocast gives bf16 here; the output has the input's dtype
        if not self.learn_residual:
            return out
        base = x if self.in_channels == 3 else x[:, 3:6]  # a refiner's residual is on the deconvolved frame
        return torch.clamp(base + out, min=-1.0, max=1.0)


def _widen_input(backbone: nn.Module, in_channels: int) -> None:
    """Replace the backbone's first convolution by one taking ``in_channels`` channels (fresh init)."""
    for parent in backbone.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(parent, name, nn.Conv2d(in_channels, child.out_channels, child.kernel_size, child.stride,
                                                child.padding, bias=child.bias is not None))
                return
    raise ValueError("the backbone has no convolution to widen")


class FPNMobileNetV2(FPNGenerator):
    """DeblurGANv2's FPN-MobileNet: MobileNetV2 ``features[:16]``, FPN 128, heads 64 (~2.1 M params)."""

    backbone_name = "torchvision.models.mobilenet_v2"
    # features.16 (third 160-channel block), .17 (320) and .18 (1x1 to 1280) are not used
    backbone_unused = ("16.", "17.", "18.")
    separable = False

    def __init__(
        self,
        norm_layer: str = "instance",
        num_filters: int = 64,
        num_filters_fpn: int = 128,
        learn_residual: bool = True,
        zero_init_last: bool = True,
        dropout: float = 0.0,
        in_channels: int = 3,
    ):
        features = mobilenet_v2(weights=None).features
        super().__init__(
            backbone=features[:16],
            taps=(1, 3, 6, 10, 15),
            tap_channels=(16, 24, 32, 64, 160),
            norm_layer=norm_layer,
            num_filters=num_filters,
            num_filters_fpn=num_filters_fpn,
            learn_residual=learn_residual,
            zero_init_last=zero_init_last,
            dropout=dropout,
            separable=self.separable,
            in_channels=in_channels,
        )


class FPNMobileNetV2DSC(FPNMobileNetV2):
    """FPN-MobileNetV2 with depthwise-separable 3x3 convs in the FPN and heads (the fastest variant).

    The last conv (to 3 channels) stays a plain 3x3 conv so ``zero_init_last`` gives the identity.
    """

    separable = True
