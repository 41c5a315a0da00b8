"""FPN generator on a DenseNet-121 backbone (DeblurGANv2's heavier FPN-DenseNet family).

Input and output: ``(B, 3, H, W)`` RGB float in ``[-1, 1]``, any ``H, W >= 32``. Same FPN, heads and
residual as ``deblur.archs.fpn_mobilenet_arch.FPNGenerator``; the backbone is
``torchvision.models.densenet121(weights=None).features`` (module names as in torchvision), tapped at

* stride 2: ``relu0`` (64 ch)          * stride 4: ``denseblock1`` (256 ch)
* stride 8: ``denseblock2`` (512 ch)   * stride 16: ``denseblock3`` (1024 ch)
* stride 32: ``norm5`` after ``denseblock4`` (1024 ch)
"""

from __future__ import annotations

from torchvision.models import densenet121

from deblur.archs.fpn_mobilenet_arch import FPNGenerator

__all__ = ["FPNDenseNet121"]


class FPNDenseNet121(FPNGenerator):
    """FPN-DenseNet121 generator (~8.4 M params); the backbone keeps its BatchNorm."""

    backbone_name = "torchvision.models.densenet121"
    backbone_unused = ()

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
        features = densenet121(weights=None).features
        # children: conv0 norm0 relu0 pool0 denseblock1 transition1 denseblock2 transition2
        #           denseblock3 transition3 denseblock4 norm5
        super().__init__(
            backbone=features,
            taps=(2, 4, 6, 8, 11),
            tap_channels=(64, 256, 512, 1024, 1024),
            norm_layer=norm_layer,
            num_filters=num_filters,
            num_filters_fpn=num_filters_fpn,
            learn_residual=learn_residual,
            zero_init_last=zero_init_last,
            dropout=dropout,
            in_channels=in_channels,
        )
