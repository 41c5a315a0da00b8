"""DeblurGANv2-style deblurring: generators, discriminators, losses, synthetic blur, data, training.

deblur/ imports configs/ only (never detect/, pipeline/ or ultralytics); see docs/DESIGN.md.
"""

from deblur.config import BlurConfig, DataConfig, GeneratorConfig, ModelConfig, TrainConfig
from deblur.models import DEFAULT_WEIGHTS, GENERATORS, build_generator, load_generator, save_generator

__all__ = [
    "DEFAULT_WEIGHTS",
    "GENERATORS",
    "BlurConfig",
    "DataConfig",
    "GeneratorConfig",
    "ModelConfig",
    "TrainConfig",
    "build_generator",
    "load_generator",
    "save_generator",
]
