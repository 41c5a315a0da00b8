"""Detection under blur: does deblurring give the detector back what blur took?

    from evaluation import EvalConfig, run_blurred_vs_deblurred
    report = run_blurred_vs_deblurred(load_config(EvalConfig, "configs/eval_detection.yaml"))

Imports configs, deblur and detect only (docs/DESIGN.md).
"""

from evaluation.config import EvalConfig
from evaluation.run import run_blurred_vs_deblurred

__all__ = ["EvalConfig", "run_blurred_vs_deblurred"]
