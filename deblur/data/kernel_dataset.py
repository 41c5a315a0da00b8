"""Training data of the kernel estimator: full-resolution grey crops, blurred by kernels we know exactly.

``KernelCrops(cfg, bounds).batch(rng, n)`` draws ``n`` samples: a photo of the split (deblur.data.dataset's
hash split of ``cfg.sources``), a random rescale, the most textured of a few random crops, a kernel from
``cfg.blur`` (ImageNet-C, linear, camera shake: severities, Gaussian-process or random-walk trajectories, or
none; every angle), blur (sometimes with night highlights: blurred in linear light, then clipped), sensor
noise and JPEG. It returns the blurred and sharp crops ((n,1,S,S) float in [0,1]) and the kernels ((n,k,k),
summing to 1, centred on the middle pixel), so the estimator is supervised by the exact kernel.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from deblur.data.blur_synth import (
    fit_kernel,
    gp_kernel,
    imagenet_c_kernel,
    jpeg,
    linear_kernel,
    saturated_blur,
    shake_kernel,
    trajectory_kernel,
)
from deblur.config import DataConfig, KernelBlurConfig, KernelTrainConfig
from deblur.data.dataset import SyntheticBlur

__all__ = ["KernelCrops", "fit_kernel", "sample_kernel"]


def sample_kernel(cfg: KernelBlurConfig, rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    """One kernel of the mix in ``cfg`` on a (size,size) canvas (size odd), and its family name.

    Every family is centred (centre of mass on the middle pixel). ``gp`` draws its canvas side from
    ``cfg.gp_size`` (made odd, at most ``size``); ``trajectory`` walks on the whole ``size`` canvas.
    """
    kinds = [k for k, w in cfg.kinds.items() if w > 0]
    weights = np.array([cfg.kinds[k] for k in kinds], np.float64)
    kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
    angle = float(rng.uniform(0.0, 180.0))
    if kind == "imagenet_c":
        kernel = imagenet_c_kernel(int(rng.choice(cfg.imagenet_c_severities)), angle, centered=True)
    elif kind == "linear":
        kernel = linear_kernel(float(rng.uniform(*cfg.linear_length)), angle, centered=True)
    elif kind == "shake":
        kernel = shake_kernel(int(rng.choice(cfg.shake_severities)), int(rng.integers(2**31)))
    elif kind == "gp":
        side = min(int(rng.integers(cfg.gp_size[0], cfg.gp_size[1] + 1)) | 1, size)
        kernel = gp_kernel(side, rng, length_scale=float(rng.uniform(*cfg.gp_length_scale)),
                           sigma=float(rng.uniform(*cfg.gp_sigma)))
    elif kind == "trajectory":
        exposure = float(rng.uniform(*cfg.trajectory_exposure))
        max_len = float(rng.uniform(*cfg.trajectory_length)) * size
        kernel = trajectory_kernel(size, exposure, rng, centered=True, max_len=max_len)
    else:
        kernel = np.ones((1, 1), np.float32)
    return fit_kernel(kernel, size), kind


def _energy(grey: np.ndarray) -> float:
    return float(np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean())


class KernelCrops:
    """Blurred grey crops with their exact kernels from the photos of one split of ``cfg.sources``."""

    def __init__(self, cfg: KernelTrainConfig, bounds: tuple[float, float]):
        photos = SyntheticBlur(DataConfig(sources=list(cfg.sources), bounds=tuple(bounds), preload=True,
                                          preload_size=cfg.preload_size, size=cfg.crop))
        self.greys = [cv2.cvtColor(photos.image(i), cv2.COLOR_RGB2GRAY) for i in range(len(photos))]
        self.names = photos.names
        self.cfg = cfg

    def __len__(self) -> int:
        return len(self.greys)

    def _crop(self, rng: np.random.Generator, region: int) -> np.ndarray:
        """The most textured of ``crop_candidates`` random (region, region) uint8 crops of a random photo."""
        cfg = self.cfg
        grey = self.greys[int(rng.integers(len(self.greys)))]
        scale = float(rng.uniform(*cfg.scale))
        side = max(region, round(region / scale))
        h, w = grey.shape
        if min(h, w) < side:  # small photo: enlarge it just enough
            f = side / min(h, w)
            grey = cv2.resize(grey, (max(side, round(w * f)), max(side, round(h * f))), interpolation=cv2.INTER_CUBIC)
            h, w = grey.shape
        best, best_e = None, -1.0
        for _ in range(cfg.crop_candidates):
            y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
            crop = grey[y : y + side, x : x + side]
            e = _energy(crop[::4, ::4].astype(np.float32))
            if e > best_e:
                best, best_e = crop, e
        if side != region:
            best = cv2.resize(best, (region, region), interpolation=cv2.INTER_AREA)
        return best

    def sample(self, rng: np.random.Generator, noise: bool | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
        """-> blurred (S,S) float32 [0,1], sharp (S,S) float32 [0,1], kernel (k,k), family.

        With probability ``cfg.blur.saturate_prob`` the scene gets highlights above white and is blurred in
        linear light, then clipped (``saturated_blur``): the sharp crop is then that scene clipped, and the
        blurred one is no longer the sharp one convolved with the kernel where light saturates (the kernel
        is still the exact label). ``noise``: None = sensor noise and JPEG with the probabilities of
        ``cfg.blur``; False = neither; True = both, always.
        """
        cfg, k = self.cfg, self.cfg.model.kernel_size
        pad = k // 2
        sharp = self._crop(rng, cfg.crop + 2 * pad)
        b = cfg.blur
        if b.soften_prob > 0 and rng.uniform() < b.soften_prob:
            sharp = cv2.GaussianBlur(sharp, (0, 0), float(rng.uniform(*b.soften_sigma)), borderType=cv2.BORDER_REFLECT)
        kernel, kind = sample_kernel(cfg.blur, rng, k)
        if b.saturate_prob > 0 and rng.uniform() < b.saturate_prob:
            lit, blur = saturated_blur(sharp.astype(np.float32) / 255.0, kernel, rng, n_lights=b.saturate_lights,
                                       intensity=b.saturate_intensity)
            sharp, blur = lit * 255.0, blur[pad:-pad, pad:-pad] * 255.0
        else:
            blur = cv2.filter2D(sharp.astype(np.float32), cv2.CV_32F, np.ascontiguousarray(kernel[::-1, ::-1]),
                                borderType=cv2.BORDER_REFLECT)[pad:-pad, pad:-pad]
        sharp = sharp[pad:-pad, pad:-pad]
        if noise or (noise is None and rng.uniform() < b.noise_prob):
            blur = blur + rng.normal(0.0, float(rng.uniform(*b.noise_sigma)) * 255.0, blur.shape).astype(np.float32)
        blur = np.clip(blur + 0.5, 0, 255).astype(np.uint8)
        if noise or (noise is None and rng.uniform() < b.jpeg_prob):
            blur = jpeg(blur, int(rng.integers(b.jpeg_quality[0], b.jpeg_quality[1] + 1)))
        return blur.astype(np.float32) / 255.0, sharp.astype(np.float32) / 255.0, kernel, kind

    def batch(self, rng: np.random.Generator, n: int, noise: bool | None = None) -> dict:
        """``n`` samples as tensors: blur/sharp (n,1,S,S), kernel (n,k,k), kinds (list of str)."""
        samples = [self.sample(rng, noise) for _ in range(n)]
        return {
            "blur": torch.from_numpy(np.stack([s[0] for s in samples]))[:, None],
            "sharp": torch.from_numpy(np.stack([s[1] for s in samples]))[:, None],
            "kernel": torch.from_numpy(np.stack([s[2] for s in samples])),
            "kinds": [s[3] for s in samples],
        }
