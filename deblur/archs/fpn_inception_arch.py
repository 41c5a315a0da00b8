"""FPN generator on Inception-ResNet-v2 (DeblurGANv2's quality model, ``g_name: fpn_inception`` in its configs).

Input and output: ``(B, 3, H, W)`` RGB float in ``[-1, 1]`` (6 or 7 channels for a refiner), any ``H, W >= 32``.
Same FPN, heads and residual as ``deblur.archs.fpn_mobilenet_arch.FPNGenerator``; the backbone is timm's
``inception_resnet_v2`` with ``features_only=True`` (random init; module names as in timm, so a timm state dict
of ImageNet weights loads from a local file through ``GeneratorConfig.backbone_weights``), tapped at strides
2, 4, 8, 16, 32 (64, 192, 320, 1088, 1536 channels).

Its convolutions are unpadded, as in the paper's network: the maps are not exactly input / stride, so the
top-down path resizes each map to its lateral's size (bilinear), and inputs are padded to at least 96 px (the
backbone needs 75). DeblurGANv2 uses 128 head and 256 FPN filters with it (``model.num_filters=128
model.num_filters_fpn=256``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deblur.archs.fpn_mobilenet_arch import FPNGenerator

__all__ = ["FPNInception"]


class FPNInception(FPNGenerator):
    """FPN-Inception-ResNet-v2 generator (~54 M backbone params); the backbone keeps its BatchNorm."""

    backbone_name = "timm.inception_resnet_v2"
    backbone_unused = ()
    min_side = 96

    def __init__(
        self,
        norm_layer: str = "instance",
        num_filters: int = 128,
        num_filters_fpn: int = 256,
        learn_residual: bool = True,
        zero_init_last: bool = True,
        dropout: float = 0.0,
        in_channels: int = 3,
    ):
        try:
            import timm
        except ImportError as e:  # an optional backbone: the other generators do not need timm
            raise ImportError("fpn_inception needs timm: pip install -r requirements.txt (it pins timm)") from e
        backbone = timm.create_model("inception_resnet_v2", pretrained=False, features_only=True)
        super().__init__(
            backbone=backbone,
            taps=(0, 1, 2, 3, 4),
            tap_channels=tuple(backbone.feature_info.channels()),
            norm_layer=norm_layer,
            num_filters=num_filters,
            num_filters_fpn=num_filters_fpn,
            learn_residual=learn_residual,
            zero_init_last=zero_init_last,
            dropout=dropout,
            separable=False,
            in_channels=in_channels,
        )

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone(x)

    def _up(self, x: torch.Tensor, factor: int, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)
