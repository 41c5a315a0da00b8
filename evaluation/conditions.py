"""The conditions an image is detected in: blur synthesis, the restoration methods and image metrics.

* ``sharp``: the reference; ``blurred``: the sharp image blurred with a seeded kernel (or real blur);
* ``deblurred``: our generator (deblur.predict.Deblurrer), at full resolution unless ``max_side``;
* ``unsharp``: unsharp masking, ``x + amount * (x - gaussian(x, sigma))``;
* ``wiener``: Wiener deconvolution with the TRUE kernel (an oracle no camera has): the very deconvolution
  the kernel-aware deblurrer runs (deblur.deconv, edge-tapered), so its gap to ``deblurred`` is the cost
  of estimating the kernel.

Every method gets the very same blurred uint8 image.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Callable

import cv2
import numpy as np

from deblur.baselines import unsharp  # noqa: F401 (re-exported: a non-learned condition)
from deblur.data.blur_synth import (
    SHAKE_SIZES,
    apply_kernel,
    imagenet_c_kernel,
    shake_kernel,
    trajectory_kernel,
)
from deblur.deconv import deconvolve_uint8 as wiener  # noqa: F401 (re-exported: the true-kernel oracle)
from deblur.metrics import psnr, ssim  # noqa: F401 (re-exported: image quality against sharp)
from evaluation.config import EvalBlurConfig

logger = logging.getLogger(__name__)


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from a stable hash of the parts (unlike hash(), the same in every process)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def blur_kernel(cfg: EvalBlurConfig, image_name: str, severity: int) -> np.ndarray:
    """(k,k) float32 kernel summing to 1, fixed by (cfg.seed, kind, image name, severity).

    Severity 0 is no blur (a 1x1 delta): the "blurred" image is the sharp one, so the methods' rows show
    what they do to sharp frames.
    """
    if severity == 0:
        return np.ones((1, 1), np.float32)
    seed = stable_seed(cfg.seed, cfg.kind, image_name, severity)
    if cfg.kind == "imagenet_c":
        return imagenet_c_kernel(severity, rng=np.random.default_rng(seed), centered=cfg.centered)
    if cfg.kind == "shake":
        return shake_kernel(severity, seed)
    if cfg.kind == "trajectory":
        # one severity ladder for both random-walk kinds: the shake kernel's canvas side per severity
        return trajectory_kernel(size=SHAKE_SIZES[severity], rng=np.random.default_rng(seed), centered=True)
    raise ValueError(f"Unknown blur kind {cfg.kind!r}. Available: ['imagenet_c', 'shake', 'trajectory']")


def blur_image(sharp_bgr: np.ndarray, kernel: np.ndarray, linear: bool = False) -> np.ndarray:
    """(H,W,3) uint8 BGR -> blurred (H,W,3) uint8 BGR (true convolution, reflect border; ``linear``: in linear
    light, as ``EvalBlurConfig.linear``)."""
    return apply_kernel(sharp_bgr, kernel, linear=linear)


class DeblurMethod:
    """Our deblurrer as a condition: (H,W,3) BGR uint8 -> deblurred, at full resolution unless max_side (deblurred
    small, resized back) or a kernel-aware deblurrer's work_side (its work-size copy, as the pipeline's detector gets
    it)."""

    def __init__(self, deblurrer: Callable[[list[np.ndarray]], list[np.ndarray]], max_side: int = 0) -> None:
        self.deblurrer = deblurrer
        self.max_side = max_side

    def __call__(self, blurred_bgr: np.ndarray) -> np.ndarray:
        """-> the deblurred image; smaller than the input where the kernel-aware deblurrer deconvolves at its
        ``work_side`` (as the pipeline's detector gets it; the caller scales boxes back)."""
        h, w = blurred_bgr.shape[:2]
        if getattr(getattr(self.deblurrer, "cfg", None), "work_side", 0) and not self.max_side:
            return self.deblurrer([blurred_bgr], full_size=False)[0]
        if self.max_side and max(h, w) > self.max_side:
            s = self.max_side / max(h, w)
            small = cv2.resize(blurred_bgr, (max(32, round(w * s)), max(32, round(h * s))), interpolation=cv2.INTER_AREA)
            return cv2.resize(self.deblurrer([small])[0], (w, h), interpolation=cv2.INTER_LINEAR)
        return self.deblurrer([blurred_bgr])[0]
