"""Synthetic blur: kernel families, convolution, frame averaging, camera rotation, highlights, noise and JPEG.

Kernels are ``(k, k) float32`` arrays that sum to 1, with ``k`` odd; the kernel's anchor is its centre
pixel ``(k // 2, k // 2)``. They are *convolution* kernels: ``blur(p) = sum_d K[c + d] * image(p - d)``
(``apply_kernel`` flips them for ``cv2.filter2D``, which correlates). A kernel whose centre of mass
sits on the centre pixel smears without shifting the image ("centred"); a one-sided kernel (ImageNet-C)
also shifts the content.

Angles are in degrees, counter-clockwise from the +x axis as seen on screen (image rows grow
downwards, so +90 points up). Every random function takes ``rng``: a ``np.random.Generator`` or an int
seed; the same seed gives the same kernel.

Images are ``(H,W,3)`` or ``(H,W)`` arrays, ``uint8`` in [0, 255] or ``float32`` in [0, 1]; colour order
does not matter except for ``jpeg`` (RGB). Blur is applied to the sRGB-encoded values by default
(like DeblurGAN and ImageNet-C); ``apply_kernel(..., linear=True)`` blurs in linear light instead.

Camera shake that is curved and large: ``gp_kernel`` (Gaussian-process trajectories, DeepInverse's
``MotionBlurGenerator``) and ``trajectory_kernel`` (Boracchi & Foi random walks). Shake that varies across
the frame: ``rotational_blur`` (in-plane rotation about a centre that may lie off the frame, plus a
translation; ``CameraMotion`` gives the exact kernel at every pixel). Night streaks: ``saturated_blur``
(highlights far above white, blurred in linear light, then clipped).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from deblur.config import BlurConfig

logger = logging.getLogger(__name__)

__all__ = [
    "trajectory_kernel",
    "linear_kernel",
    "imagenet_c_kernel",
    "shake_kernel",
    "gp_kernel",
    "fit_kernel",
    "apply_kernel",
    "CameraMotion",
    "camera_motion",
    "rotational_blur",
    "add_highlights",
    "saturated_blur",
    "average_frames",
    "add_noise",
    "jpeg",
    "sample_kernel",
    "synthesize",
    "IMAGENET_C_MOTION",
    "SHAKE_SIZES",
]

# ImageNet-C motion_blur (Hendrycks & Dietterich 2019): (radius, sigma) per severity 1..5
IMAGENET_C_MOTION = {1: (10, 3), 2: (15, 5), 3: (15, 8), 4: (15, 12), 5: (20, 15)}
# canvas side (px) of the camera-shake kernel per severity 1..5 (the trajectory fills the canvas)
SHAKE_SIZES = {1: 7, 2: 11, 3: 15, 4: 21, 5: 29}

_SPLAT_STEP = 0.25  # px between points when a path is rasterised


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")


def _splat(xs: np.ndarray, ys: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
    """Bilinear splat of points (x, y in pixel units, (0, 0) = top-left pixel) onto a (size, size) canvas.

    Bilinear splatting keeps each point's centre of mass, so the kernel's centroid equals the weighted
    mean of the points. Points outside the canvas are clipped to its border.
    """
    xs = np.clip(xs, 0.0, size - 1.0)
    ys = np.clip(ys, 0.0, size - 1.0)
    x0 = np.minimum(np.floor(xs).astype(np.int64), size - 2) if size > 1 else np.zeros(len(xs), np.int64)
    y0 = np.minimum(np.floor(ys).astype(np.int64), size - 2) if size > 1 else np.zeros(len(ys), np.int64)
    fx, fy = xs - x0, ys - y0
    flat = np.zeros(size * size, np.float64)
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            idx = np.minimum(y0 + dy, size - 1) * size + np.minimum(x0 + dx, size - 1)
            flat += np.bincount(idx, weights * wy * wx, minlength=size * size)
    return flat.reshape(size, size)


def _normalise(kernel: np.ndarray) -> np.ndarray:
    total = float(kernel.sum())
    if not total > 0:
        raise ValueError("kernel has no positive mass; check its parameters")
    return (kernel / total).astype(np.float32)


def _odd(n: float) -> int:
    n = int(math.ceil(n))
    return n if n % 2 else n + 1


def _random_walk(rng: np.random.Generator, n_samples: int, anxiety: float, max_len: float) -> np.ndarray:
    """Boracchi & Foi (2012) camera-shake trajectory: ``n_samples`` complex positions (px).

    DeblurGAN's ``Trajectory.fit`` recurrence: a velocity of constant speed ``max_len / (n - 1)`` whose
    direction is pushed by Gaussian noise, pulled back towards the start (centripetal term: inertia) and,
    rarely (probability ``prob_big_shake * anxiety`` per step), reversed by an impulsive shake.
    """
    step = max_len / (n_samples - 1)
    centripetal = 0.7 * rng.uniform()
    prob_big_shake = 0.2 * rng.uniform()
    gaussian_shake = 10.0 * rng.uniform()
    angle = rng.uniform(0.0, 2.0 * math.pi)
    u = rng.uniform(size=n_samples)
    noise = rng.standard_normal((n_samples, 2))
    jolt = rng.uniform(size=n_samples) - 0.5
    v0 = complex(math.cos(angle), math.sin(angle))
    v = v0 * (anxiety if anxiety > 0 else step)
    x = [0j] * n_samples
    for t in range(n_samples - 1):
        if u[t] < prob_big_shake * anxiety:
            nxt = 2.0 * v * complex(math.cos(math.pi + jolt[t]), math.sin(math.pi + jolt[t]))
        else:
            nxt = 0j
        dv = nxt + anxiety * (gaussian_shake * complex(noise[t, 0], noise[t, 1]) - centripetal * x[t]) * step
        v += dv
        speed = abs(v)
        v = v * (step / speed) if speed > 0 else v0 * step
        x[t + 1] = x[t] + v
    return np.asarray(x, np.complex128)


def _rasterise_path(path: np.ndarray, size: int, centered: bool, max_extent: float) -> np.ndarray:
    """Resample a polyline (complex points, uniform in time) densely and splat it on a canvas.

    The path is scaled down (never up) so it fits ``max_extent`` px, then placed either with its time
    average (= the kernel's centre of mass) on the centre pixel (``centered``) or with its bounding box
    centred (like DeblurGAN).
    """
    seg = np.abs(np.diff(path))
    length = float(seg.sum())
    c = (size - 1) / 2.0
    if length < 1e-9:
        return _splat(np.array([c]), np.array([c]), np.array([1.0]), size)
    n_dense = max(2, int(math.ceil(length / _SPLAT_STEP)) + 1)
    t_src = np.linspace(0.0, 1.0, len(path))
    t_dst = np.linspace(0.0, 1.0, n_dense)
    pts = np.interp(t_dst, t_src, path.real) + 1j * np.interp(t_dst, t_src, path.imag)
    if centered:
        pts = pts - pts.mean()
        half = max(np.abs(pts.real).max(), np.abs(pts.imag).max())
        if half > max_extent / 2:
            pts *= (max_extent / 2) / half
    else:
        lo = complex(pts.real.min(), pts.imag.min())
        hi = complex(pts.real.max(), pts.imag.max())
        pts = pts - (lo + hi) / 2
        ext = max(hi.real - lo.real, hi.imag - lo.imag)
        if ext > max_extent:
            pts *= max_extent / ext
    return _splat(pts.real + c, pts.imag + c, np.ones(len(pts)), size)


def trajectory_kernel(
    size: int = 31,
    exposure: float = 1.0,
    rng: np.random.Generator | int | None = None,
    centered: bool = True,
    anxiety: float | None = None,
    max_len: float | None = None,
    n_samples: int = 64,
) -> np.ndarray:
    """Random camera-shake PSF (Boracchi & Foi 2012, as DeblurGAN generates it).

    A random walk of ``n_samples`` steps with inertia and impulsive shakes (``anxiety`` in [0, 1]; None
    draws 0.1 * U(0, 1) like the reference) of total length ``max_len`` px (None = ``size``); the PSF
    integrates the first ``exposure`` (0, 1] of it with sub-pixel bilinear splatting. Paths larger than
    the canvas (``size`` - 2 px) are shrunk to fit. Returns a (size, size) float32 kernel summing to 1.
    """
    size = int(size)
    if size < 3 or size % 2 == 0:
        raise ValueError(f"trajectory_kernel: size must be an odd int >= 3, got {size}")
    if not 0.0 < exposure <= 1.0:
        raise ValueError(f"trajectory_kernel: exposure must be in (0, 1], got {exposure}")
    if n_samples < 2:
        raise ValueError(f"trajectory_kernel: n_samples must be >= 2, got {n_samples}")
    rng = _as_rng(rng)
    if anxiety is None:
        anxiety = 0.1 * rng.uniform()
    if max_len is None:
        max_len = float(size)
    walk = _random_walk(rng, n_samples, float(anxiety), float(max_len))
    # integrate the first `exposure` of the exposure time: cut the walk at a fractional sample
    t_end = exposure * (n_samples - 1)
    i_end = int(math.floor(t_end))
    path = walk[: i_end + 1]
    if t_end > i_end:
        frac = t_end - i_end
        path = np.append(path, walk[i_end] + frac * (walk[i_end + 1] - walk[i_end]))
    return _normalise(_rasterise_path(path, size, centered, max_extent=size - 2.0))


def linear_kernel(length: float, angle_deg: float, centered: bool = True) -> np.ndarray:
    """Anti-aliased straight motion of ``length`` px (1 = no blur) at ``angle_deg``.

    ``centered``: the segment is centred on the kernel centre (no shift); otherwise it starts at the
    centre and runs ``length - 1`` px along the angle (one-sided, shifts the content). Returns the
    smallest odd (k, k) float32 kernel that holds it, summing to 1.
    """
    if not length >= 1:
        raise ValueError(f"linear_kernel: length must be >= 1 px, got {length}")
    span = float(length) - 1.0
    a = math.radians(angle_deg)
    direction = complex(math.cos(a), -math.sin(a))  # screen angle: y grows downwards
    reach = span / 2 if centered else span
    size = _odd(2 * reach + 3)
    if span == 0:
        path = np.array([0j, 0j])
    elif centered:
        path = np.array([-direction * span / 2, direction * span / 2])
    else:
        path = np.array([0j, direction * span])
    n_dense = max(2, int(math.ceil(span / _SPLAT_STEP)) + 1)
    t = np.linspace(0.0, 1.0, n_dense)
    pts = path[0] + t * (path[1] - path[0])
    c = (size - 1) / 2.0
    return _normalise(_splat(pts.real + c, pts.imag + c, np.ones(n_dense), size))


def imagenet_c_kernel(
    severity: int,
    angle_deg: float | None = None,
    rng: np.random.Generator | int | None = None,
    centered: bool = False,
) -> np.ndarray:
    """ImageNet-C ``motion_blur`` kernel (ImageMagick ``MotionBlurImage``) at severity 1..5.

    ImageMagick averages ``2 * radius + 1`` samples at integer offsets ``round(i * (cos a, -sin a))``,
    i = 0..2*radius, weighted ``exp(-i^2 / (2 sigma^2))``: a one-sided kernel that shifts the image as well
    as smearing it. ``angle_deg`` None draws U(-45, 45) from ``rng``, as ImageNet-C does. ``centered``
    moves the centre of mass to the kernel centre (taps re-placed with bilinear weights).
    Returns (k, k) float32 summing to 1.
    """
    if severity not in IMAGENET_C_MOTION:
        raise ValueError(f"imagenet_c_kernel: severity must be one of {sorted(IMAGENET_C_MOTION)}, got {severity!r}")
    radius, sigma = IMAGENET_C_MOTION[severity]
    if angle_deg is None:
        angle_deg = _as_rng(rng).uniform(-45.0, 45.0)
    a = math.radians(angle_deg)
    i = np.arange(2 * radius + 1, dtype=np.float64)
    w = np.exp(-(i**2) / (2.0 * sigma**2))
    # ImageMagick: offset.x = ceil(i*sin(a+90) - 0.5), offset.y = ceil(i*cos(a+90) - 0.5); it *reads*
    # image(p + offset), so as a convolution kernel the taps sit at -offset.
    ox = np.ceil(i * math.sin(a + math.pi / 2) - 0.5)
    oy = np.ceil(i * math.cos(a + math.pi / 2) - 0.5)
    px, py = -ox, -oy
    if centered:
        px = px - np.sum(w * px) / w.sum()
        py = py - np.sum(w * py) / w.sum()
    reach = max(np.abs(px).max(), np.abs(py).max())
    size = _odd(2 * reach + 3)
    c = (size - 1) / 2.0
    return _normalise(_splat(px + c, py + c, w, size))


def shake_kernel(severity: int, seed: int) -> np.ndarray:
    """Centred camera-shake kernel whose trajectory fills a canvas of 7, 11, 15, 21, 29 px (severity 1..5).

    Used by the pipeline's ``--simulate-blur SEVERITY`` and the evaluation's shake condition. The walk is
    twice the canvas long and shrunk to fit, so strength grows with severity for every seed.
    """
    if severity not in SHAKE_SIZES:
        raise ValueError(f"shake_kernel: severity must be one of {sorted(SHAKE_SIZES)}, got {severity!r}")
    size = SHAKE_SIZES[severity]
    return trajectory_kernel(size=size, exposure=1.0, rng=int(seed), centered=True, max_len=2.0 * size)


def gp_kernel(
    size: int = 31,
    rng: np.random.Generator | int | None = None,
    length_scale: float = 0.3,
    sigma: float = 0.25,
    n_steps: int = 1000,
    centered: bool = True,
) -> np.ndarray:
    """Camera-shake PSF whose trajectory is a Gaussian process (Schuler et al., "Learning to Deblur"; DeepInverse).

    x(t) and y(t) are independent draws of DeepInverse's ``MotionBlurGenerator.f_matern`` (Matern
    covariance with length scale ``length_scale`` over an exposure of time 1, amplitude ``sigma``, both in
    DeepInverse's units where [-1, 1] spans the ``size`` px canvas; ``n_steps`` sets the time resolution).
    Small ``length_scale`` gives wiggly paths, large gives smooth arcs. The path is rasterised like
    ``trajectory_kernel``: bilinear splats uniform in time (slow parts are brighter), shrunk to fit
    ``size`` - 2 px, centre of mass on the centre pixel (``centered``) or bounding box centred. DeepInverse's
    torch generator is seeded from ``rng``, so the same seed gives the same kernel. Returns (size, size)
    float32 summing to 1.
    """
    size = int(size)
    if size < 3 or size % 2 == 0:
        raise ValueError(f"gp_kernel: size must be an odd int >= 3, got {size}")
    if not length_scale > 0 or not sigma > 0:
        raise ValueError(f"gp_kernel: length_scale and sigma must be > 0, got {length_scale}, {sigma}")
    if n_steps < 16:
        raise ValueError(f"gp_kernel: n_steps must be >= 16, got {n_steps}")
    rng = _as_rng(rng)
    seed = int(rng.integers(2**62))
    import torch  # deferred: the other families need neither torch nor DeepInverse (a slow import)
    from deepinv.physics.generator import MotionBlurGenerator

    gen = MotionBlurGenerator((size, size), rng=torch.Generator().manual_seed(seed), l=float(length_scale),
                              sigma=float(sigma), n_steps=int(n_steps))
    with torch.no_grad():
        fx = gen.f_matern(1)[0].double().numpy()
        fy = gen.f_matern(1)[0].double().numpy()
    path = (fx + 1j * fy) * (size / 2.0)  # DeepInverse bins [-1, 1] onto the size px of the canvas
    return _normalise(_rasterise_path(path, size, centered, max_extent=size - 2.0))


def fit_kernel(kernel: np.ndarray, size: int) -> np.ndarray:
    """Centre a (k,k) kernel on a (size,size) canvas: zero-pad or crop symmetrically, renormalise to sum 1."""
    k = kernel.shape[0]
    if k == size:
        return kernel.astype(np.float32)
    if k < size:
        p = (size - k) // 2
        out = np.zeros((size, size), np.float32)
        out[p : p + k, p : p + k] = kernel
        return out
    c = (k - size) // 2
    out = kernel[c : c + size, c : c + size].astype(np.float32)
    return out / out.sum()


def perturb_kernel(kernel: np.ndarray, angle: float, scale: float) -> np.ndarray:
    """``kernel`` rotated by ``angle`` degrees and stretched by ``scale`` about its centre of mass (bilinear,
    clipped at 0, renormalised): a wrong estimate of the same blur, as a refiner must learn to repair. Same side."""
    k = np.asarray(kernel, np.float32)
    total = float(k.sum())
    if total <= 0:
        raise ValueError("perturb_kernel: the kernel sums to zero")
    ys, xs = np.mgrid[: k.shape[0], : k.shape[1]]
    cy, cx = float((ys * k).sum() / total), float((xs * k).sum() / total)
    warp = cv2.getRotationMatrix2D((cx, cy), angle, scale)
    out = np.clip(cv2.warpAffine(k, warp, (k.shape[1], k.shape[0]), flags=cv2.INTER_LINEAR), 0.0, None)
    s = float(out.sum())
    return out / s if s > 0 else k / total


def _trim(kernel: np.ndarray) -> np.ndarray:
    """Drop all-zero borders symmetrically (keeps the centre, so the result is the same convolution)."""
    k = kernel.shape[0]
    nz_rows = np.flatnonzero(kernel.any(axis=1))
    nz_cols = np.flatnonzero(kernel.any(axis=0))
    if len(nz_rows) == 0:
        return kernel
    margin = min(nz_rows[0], k - 1 - nz_rows[-1], nz_cols[0], k - 1 - nz_cols[-1])
    return kernel[margin : k - margin, margin : k - margin] if margin > 0 else kernel


_SRGB_TO_LINEAR = ((np.arange(256) / 255.0) ** 2.2).astype(np.float32)


def _to_linear(image: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] or float [0, 1] sRGB-ish values -> float32 linear light (gamma 2.2 decoded)."""
    if image.dtype == np.uint8:
        return _SRGB_TO_LINEAR[image]
    if image.dtype != np.float32:
        raise TypeError(f"image must be uint8 or float32, got {image.dtype}")
    return np.power(np.clip(image, 0.0, 1.0), 2.2, dtype=np.float32)


def _from_linear(linear: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float linear light (any range) -> clipped to [0, 1], gamma 2.2 encoded, as ``dtype`` (uint8 rounded)."""
    out = np.power(np.clip(linear, 0.0, 1.0), 1 / 2.2, dtype=np.float32)
    if dtype == np.uint8:
        return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


def _convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """True convolution of a uint8 or float32 image (any range) with a (k,k) kernel, BORDER_REFLECT, float32 out."""
    kflip = np.ascontiguousarray(_trim(np.asarray(kernel, np.float32))[::-1, ::-1])
    return cv2.filter2D(image, cv2.CV_32F, kflip, borderType=cv2.BORDER_REFLECT)


def _check_image(image: np.ndarray, who: str) -> None:
    if image.dtype not in (np.uint8, np.float32):
        raise TypeError(f"{who}: image must be uint8 or float32, got {image.dtype}")
    if image.ndim not in (2, 3):
        raise ValueError(f"{who}: image must be (H,W) or (H,W,C), got shape {image.shape}")


def _check_kernel(kernel: np.ndarray, who: str) -> np.ndarray:
    """The kernel as float32, or a ValueError naming ``who`` unless it is square with an odd side."""
    kernel = np.asarray(kernel, np.float32)
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] % 2 == 0:
        raise ValueError(f"{who}: kernel must be square with an odd side, got shape {kernel.shape}")
    return kernel


def apply_kernel(image: np.ndarray, kernel: np.ndarray, linear: bool = False) -> np.ndarray:
    """Convolve ``image`` ((H,W,3) or (H,W), uint8 [0,255] or float32 [0,1]) with ``kernel`` ((k,k)).

    True convolution (the kernel is flipped for ``cv2.filter2D``), border ``BORDER_REFLECT``; same shape
    and dtype out, uint8 rounded and clipped. Blurs the stored (sRGB) values unless ``linear`` (gamma 2.2
    decoded before, re-encoded after).
    """
    _check_image(image, "apply_kernel")
    kernel = _check_kernel(kernel, "apply_kernel")
    if linear:
        return _from_linear(_convolve(_to_linear(image), kernel), image.dtype)
    out = _convolve(image, kernel)
    if image.dtype == np.uint8:
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)
    return out


def average_frames(frames: list[np.ndarray], gamma: float = 2.2) -> np.ndarray:
    """GoPro-style blur: mean of consecutive frames ((H,W,3) uint8 each) in linear light -> uint8.

    Frames are decoded with ``x ** gamma``, averaged, and re-encoded with ``x ** (1 / gamma)``.
    """
    if not frames:
        raise ValueError("average_frames: got no frames")
    shape = frames[0].shape
    acc = np.zeros(shape, np.float64)
    lut = (np.arange(256) / 255.0) ** gamma
    for i, f in enumerate(frames):
        if f.shape != shape or f.dtype != np.uint8:
            raise ValueError(f"average_frames: frame {i} is {f.dtype} {f.shape}, expected uint8 {shape}")
        acc += lut[f]
    acc /= len(frames)
    return np.clip(np.power(acc, 1.0 / gamma) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _gp_paths(rng: np.random.Generator, n_paths: int, n_keys: int, length_scale: float) -> np.ndarray:
    """(n_paths, n_keys) float64 zero-mean Gaussian-process draws on t = 0..1 (Matern 5/2, unit variance)."""
    t = np.linspace(0.0, 1.0, n_keys)
    r = math.sqrt(5.0) * np.abs(t[:, None] - t[None, :]) / length_scale
    cov = (1.0 + r + r**2 / 3.0) * np.exp(-r)
    chol = np.linalg.cholesky(cov + 1e-6 * np.eye(n_keys))
    return rng.standard_normal((n_paths, n_keys)) @ chol.T


@dataclass(frozen=True, eq=False)
class CameraMotion:
    """Rigid in-plane camera motion during one exposure, sampled at ``n`` instants (the frames).

    Frame i shows the scene moved by W_i: a scene point p = (x, y) px ((0, 0) = the top-left pixel's
    centre) appears at ``W_i(p) = R(angles[i]) (p - centre) + centre + shifts[i]``, R turning
    counter-clockwise on screen by ``angles[i]`` degrees (``cv2.getRotationMatrix2D``'s convention).
    ``angles`` (n,) degrees, ``shifts`` (n, 2) px as (dx, dy), ``centre`` (x, y) px, which may lie outside
    the frame. The blurred image is the mean of the n frames (``render``), so the blur varies across the
    frame: its kernel at pixel q (``kernel``) holds the n offsets ``q - W_i^-1(q)`` (``displacements``).
    """

    angles: np.ndarray
    shifts: np.ndarray
    centre: tuple[float, float]

    def __post_init__(self):
        angles = np.asarray(self.angles, np.float64).reshape(-1)
        shifts = np.asarray(self.shifts, np.float64)
        if len(angles) < 1 or shifts.shape != (len(angles), 2):
            raise ValueError(f"CameraMotion: angles must be (n,) and shifts (n, 2) with n >= 1, "
                             f"got {angles.shape}, {shifts.shape}")
        if not (np.isfinite(angles).all() and np.isfinite(shifts).all()):
            raise ValueError("CameraMotion: angles and shifts must be finite")
        object.__setattr__(self, "angles", angles)
        object.__setattr__(self, "shifts", shifts)
        object.__setattr__(self, "centre", (float(self.centre[0]), float(self.centre[1])))

    @property
    def n_frames(self) -> int:
        return len(self.angles)

    def matrices(self) -> np.ndarray:
        """(n, 2, 3) float64: W_i as ``cv2.warpAffine`` matrices (scene -> frame i)."""
        out = np.empty((self.n_frames, 2, 3), np.float64)
        for i, (a, s) in enumerate(zip(self.angles, self.shifts)):
            out[i] = cv2.getRotationMatrix2D(self.centre, float(a), 1.0)
            out[i, :, 2] += s
        return out

    def displacements(self, x: float, y: float) -> np.ndarray:
        """(n, 2) float64 (dx, dy) px: the kernel taps at pixel (x, y), ``q - W_i^-1(q)`` for q = (x, y).

        Frame i shows at q the scene point ``W_i^-1(q)``, so ``blurred(q) = mean_i image(q - d_i)``. To
        first order in the angle these are also the offsets ``W_i(q) - q`` of the streak a point light
        at q draws (they differ by about angle * |shift| + angle^2 * |q - centre| px).
        """
        a = np.radians(self.angles)
        cos, sin = np.cos(a), np.sin(a)
        ux = x - self.centre[0] - self.shifts[:, 0]
        uy = y - self.centre[1] - self.shifts[:, 1]
        px = self.centre[0] + cos * ux - sin * uy  # R^T (q - centre - shift) + centre
        py = self.centre[1] + sin * ux + cos * uy
        return np.stack([x - px, y - py], axis=1)

    def kernel(self, x: float, y: float, size: int | None = None, centered: bool = True) -> np.ndarray:
        """The exact local kernel at pixel (x, y): (k, k) float32 summing to 1 (module conventions).

        The n taps of ``displacements`` are bilinearly splatted with weight 1 / n, which is what
        ``render``'s bilinear warps compute: ``blurred(q) = sum_d K[c + d] * image(q - d)`` at that pixel.
        ``centered`` moves the centre of mass to the centre pixel (drops the local shift, like the other
        families); otherwise the tap d = 0 is the centre pixel. ``size`` None = the smallest odd canvas
        that holds every tap; a smaller ``size`` crops symmetrically and renormalises (``fit_kernel``).
        """
        d = self.displacements(float(x), float(y))
        if centered:
            d = d - d.mean(axis=0)
        reach = float(np.abs(d).max())
        full = _odd(2 * reach + 3)
        c = (full - 1) / 2.0
        k = _normalise(_splat(d[:, 0] + c, d[:, 1] + c, np.full(len(d), 1.0 / len(d)), full))
        if size is None:
            return k
        size = int(size)
        if size < 1 or size % 2 == 0:
            raise ValueError(f"CameraMotion.kernel: size must be an odd int >= 1, got {size}")
        return fit_kernel(k, size)

    def blur_linear(self, linear: np.ndarray) -> np.ndarray:
        """Mean of the n warped frames of a float32 (H,W) or (H,W,C) image (linear light, any range, no
        clipping); bilinear warps, ``BORDER_REFLECT``. float32 out, same shape."""
        if linear.dtype != np.float32:
            raise TypeError(f"CameraMotion.blur_linear: expected float32, got {linear.dtype}")
        h, w = linear.shape[:2]
        acc = np.zeros(linear.shape, np.float64)
        for m in self.matrices():
            acc += cv2.warpAffine(linear, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        return (acc / self.n_frames).astype(np.float32)

    def render(self, image: np.ndarray, linear: bool = True) -> np.ndarray:
        """Blur ``image`` ((H,W,3) or (H,W), uint8 [0,255] or float32 [0,1]) by this motion; same shape
        and dtype out. ``linear``: frames are averaged in linear light (gamma 2.2, like ``average_frames``);
        otherwise the stored values are averaged (then blur is linear in them, as ``apply_kernel``)."""
        _check_image(image, "CameraMotion.render")
        if linear:
            return _from_linear(self.blur_linear(_to_linear(image)), image.dtype)
        out = self.blur_linear(image.astype(np.float32))
        if image.dtype == np.uint8:
            return np.clip(out + 0.5, 0, 255).astype(np.uint8)
        return out


def camera_motion(
    shape: tuple[int, ...],
    rng: np.random.Generator | int | None = None,
    max_angle_deg: float = 2.0,
    max_shift: float = 8.0,
    off_frame: float = 0.5,
    length_scale: float = 0.5,
    step: float = 0.5,
    max_frames: int = 1024,
) -> CameraMotion:
    """A random smooth in-plane camera motion for a frame of ``shape`` (H, W[, C]).

    The camera turns by an angle drawn from U(-max_angle_deg, max_angle_deg) in total and translates
    along a path whose larger side is U(0, max_shift) px; both follow Gaussian-process paths in time
    (Matern 5/2, ``length_scale`` of the exposure) and average to zero over the exposure, so the blurred
    image stays aligned with the sharp one. The rotation centre is uniform over the frame enlarged by
    ``off_frame`` of its size on every side (so it often lies outside the frame). Frames are uniform in
    time, enough of them (16 .. ``max_frames``) that no pixel moves more than ``step`` px between two.
    """
    h, w = int(shape[0]), int(shape[1])
    if not (max_angle_deg >= 0 and max_shift >= 0 and off_frame >= 0 and length_scale > 0 and step > 0):
        raise ValueError("camera_motion: max_angle_deg, max_shift, off_frame must be >= 0, length_scale and step > 0")
    rng = _as_rng(rng)
    angle = float(rng.uniform(-max_angle_deg, max_angle_deg))
    shift = float(rng.uniform(0.0, max_shift))
    centre = (float(rng.uniform(-off_frame * w, (1 + off_frame) * w)),
              float(rng.uniform(-off_frame * h, (1 + off_frame) * h)))
    n_keys = 64
    keys = _gp_paths(rng, 3, n_keys, length_scale)
    a = keys[0] - keys[0].min()
    a = a * (angle / a.max()) if a.max() > 0 else a
    xy = keys[1:].T
    ext = float(np.ptp(xy, axis=0).max())
    xy = xy * (shift / ext) if ext > 0 else xy * 0.0
    coarse = CameraMotion(a, xy, centre)
    fastest = 0.0  # px per key interval; rigid motion: a pixel's step is convex in its place, largest at a corner
    for x, y in ((0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1)):
        d = coarse.displacements(x, y)
        fastest = max(fastest, float(np.hypot(*np.diff(d, axis=0).T).max()))
    n = int(np.clip(math.ceil(fastest * (n_keys - 1) / step) + 1, 16, max_frames))
    t_key, t = np.linspace(0.0, 1.0, n_keys), np.linspace(0.0, 1.0, n)
    angles = np.interp(t, t_key, a)
    shifts = np.stack([np.interp(t, t_key, xy[:, 0]), np.interp(t, t_key, xy[:, 1])], axis=1)
    return CameraMotion(angles - angles.mean(), shifts - shifts.mean(axis=0), centre)


def rotational_blur(
    image: np.ndarray,
    rng: np.random.Generator | int | None = None,
    motion: CameraMotion | None = None,
    max_angle_deg: float = 2.0,
    max_shift: float = 8.0,
    off_frame: float = 0.5,
    linear: bool = True,
) -> tuple[np.ndarray, Callable[..., np.ndarray]]:
    """Spatially varying camera shake: in-plane rotation plus translation during the exposure.

    ``image``: (H,W,3) or (H,W), uint8 [0,255] or float32 [0,1]. ``motion`` None draws one with
    ``camera_motion(image.shape, rng, max_angle_deg, max_shift, off_frame)``. The frames are warped with
    ``cv2.warpAffine`` and averaged, in linear light unless ``linear`` is False. Returns (blurred, same
    shape and dtype; ``local_kernel``): ``local_kernel(x, y, size=None, centered=True)`` is the exact
    (k,k) kernel at pixel (x, y) (``CameraMotion.kernel``; ``local_kernel.__self__`` is the motion).
    """
    _check_image(image, "rotational_blur")
    if motion is None:
        motion = camera_motion(image.shape, rng, max_angle_deg, max_shift, off_frame)
    return motion.render(image, linear=linear), motion.kernel


def add_highlights(
    linear: np.ndarray,
    rng: np.random.Generator | int | None = None,
    n_lights: tuple[int, int] = (1, 4),
    intensity: tuple[float, float] = (5.0, 50.0),
    boost: tuple[float, float] = (1.0, 4.0),
    top: float = 0.01,
    radius: tuple[int, int] = (0, 1),
) -> np.ndarray:
    """Scene radiance with highlights far above white, as at night: float32 linear light in, a copy out.

    The brightest ``top`` fraction of pixels (grey level at or above that quantile, and > 0) is multiplied
    by a gain from U(``boost``); then n ~ U{``n_lights``} (inclusive) point lights of U(``intensity``) times
    white (all channels) are drawn as discs of radius U{``radius``} px (0 = one pixel) at uniform random
    places. Values above 1 are what a camera clips; blur them first to get streaks (``saturated_blur``).
    """
    if linear.dtype != np.float32 or linear.ndim not in (2, 3):
        raise TypeError(f"add_highlights: expected a float32 (H,W) or (H,W,C) image, got {linear.dtype} {linear.shape}")
    rng = _as_rng(rng)
    out = linear.copy()
    h, w = out.shape[:2]
    grey = out if out.ndim == 2 else out.mean(axis=2)
    gain = float(rng.uniform(*boost))
    if top > 0 and gain != 1.0:
        bright = (grey >= np.quantile(grey, 1.0 - top)) & (grey > 0)
        out[bright] *= np.float32(gain)
    for _ in range(int(rng.integers(n_lights[0], n_lights[1] + 1))):
        level = np.float32(rng.uniform(*intensity))
        r = int(rng.integers(radius[0], radius[1] + 1))
        cx, cy = int(rng.integers(w)), int(rng.integers(h))
        y0, y1, x0, x1 = max(cy - r, 0), min(cy + r + 1, h), max(cx - r, 0), min(cx + r + 1, w)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        patch = out[y0:y1, x0:x1]
        patch[disc] = np.maximum(patch[disc], level)
    return out


def saturated_blur(
    image: np.ndarray,
    blur: np.ndarray | CameraMotion,
    rng: np.random.Generator | int | None = None,
    **highlights,
) -> tuple[np.ndarray, np.ndarray]:
    """Night streaks: highlights above white (``add_highlights(**highlights)``), blurred in linear light,
    then clipped to [0, 1], as a camera records them.

    ``image``: (H,W,3) or (H,W), uint8 [0,255] or float32 [0,1]. ``blur``: a (k,k) kernel (true
    convolution, ``BORDER_REFLECT``, like ``apply_kernel``) or a ``CameraMotion``. Returns (sharp,
    blurred), both shaped and typed like ``image``: sharp = the highlighted scene clipped (what a sharp
    exposure records), blurred = its blurred radiance clipped, so light spread along the path stays
    saturated wherever it still exceeds white.
    """
    _check_image(image, "saturated_blur")
    radiance = add_highlights(_to_linear(image), rng, **highlights)
    if isinstance(blur, CameraMotion):
        blurred = blur.blur_linear(radiance)
    else:
        blurred = _convolve(radiance, _check_kernel(blur, "saturated_blur"))
    return _from_linear(radiance, image.dtype), _from_linear(blurred, image.dtype)


def _gaussian(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Standard normal float32 noise, seeded from ``rng`` (cv2.randn: ~4x faster than numpy's)."""
    out = np.empty(shape, np.float32)
    cv2.setRNGSeed(int(rng.integers(2**31)))
    cv2.randn(out.reshape(shape[0], -1) if out.ndim > 1 else out, 0.0, 1.0)  # 1 channel: randn fills channel 0 only
    return out


def add_noise(img: np.ndarray, sigma: float, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Gaussian noise of std ``sigma`` on a float image in [0, 1]; float32 out, clipped to [0, 1]."""
    if sigma <= 0:
        return img.astype(np.float32, copy=False)
    noise = _gaussian(img.shape, _as_rng(rng))
    return np.clip(img.astype(np.float32, copy=False) + np.float32(sigma) * noise, 0.0, 1.0)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip of an RGB (H,W,3) or grey (H,W) uint8 image at ``quality`` 1..100 (OpenCV codec)."""
    if img.dtype != np.uint8:
        raise TypeError(f"jpeg: image must be uint8, got {img.dtype}")
    bgr = img[..., ::-1] if img.ndim == 3 else img
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(bgr), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"jpeg: OpenCV could not encode an image of shape {img.shape}")
    out = cv2.imdecode(buf, cv2.IMREAD_COLOR if img.ndim == 3 else cv2.IMREAD_GRAYSCALE)
    return out[..., ::-1].copy() if img.ndim == 3 else out


def sample_kernel(cfg: BlurConfig, rng: np.random.Generator | int | None) -> tuple[np.ndarray, dict]:
    """Draw one kernel from the mix in ``cfg``; returns (kernel (k,k) float32 summing to 1, info dict).

    Families (``cfg.kinds`` weights): ``trajectory`` (canvas ``kernel_size``, path length a fraction
    ``trajectory_length`` of it, exposure in ``trajectory_exposure``), ``linear`` (length in
    ``linear_length``, angle U[0, 180)), ``imagenet_c`` (severity from ``imagenet_c_severities``, angle
    U(-45, 45)). ``info`` = {"kind": ..., parameters...}, plain Python numbers.
    """
    rng = _as_rng(rng)
    kinds = [k for k, w in cfg.kinds.items() if w > 0]
    weights = np.array([cfg.kinds[k] for k in kinds], np.float64)
    kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
    if kind == "trajectory":
        exposure = float(rng.uniform(*cfg.trajectory_exposure))
        max_len = float(rng.uniform(*cfg.trajectory_length)) * cfg.kernel_size
        anxiety = float(0.1 * rng.uniform())
        size = cfg.kernel_size if cfg.kernel_size % 2 else cfg.kernel_size + 1
        kernel = trajectory_kernel(size, exposure, rng, cfg.centered, anxiety=anxiety, max_len=max_len)
        info = {"kind": kind, "size": size, "exposure": exposure, "max_len": max_len, "anxiety": anxiety}
    elif kind == "linear":
        length = int(rng.integers(cfg.linear_length[0], cfg.linear_length[1] + 1))
        angle = float(rng.uniform(0.0, 180.0))
        kernel = linear_kernel(length, angle, centered=cfg.centered)
        info = {"kind": kind, "length": length, "angle_deg": angle}
    elif kind == "imagenet_c":
        severity = int(rng.choice(cfg.imagenet_c_severities))
        angle = float(rng.uniform(-45.0, 45.0))
        kernel = imagenet_c_kernel(severity, angle, centered=cfg.centered)
        info = {"kind": kind, "severity": severity, "angle_deg": angle}
    else:  # BlurConfig.__post_init__ rejects unknown kinds
        raise AssertionError(f"unhandled blur kind {kind!r}")
    info["centered"] = cfg.centered
    return kernel, info


def synthesize(
    sharp: np.ndarray,
    cfg: BlurConfig,
    rng: np.random.Generator | int | None,
    kernel: np.ndarray | None = None,
    info: dict | None = None,
    margin: int = 0,
) -> tuple[np.ndarray, dict]:
    """Blur a sharp RGB (H,W,3) uint8 image, crop ``margin`` px off each side, add noise and JPEG.

    ``kernel`` (with its ``info``) None draws one with ``sample_kernel(cfg, rng)``. Noise sigma is drawn
    from ``cfg.noise_sigma`` ([0, 1] units), JPEG (quality from ``cfg.jpeg_quality``) happens with
    probability ``cfg.jpeg_prob``. Returns (blurred (H-2m, W-2m, 3) uint8, info) where info holds the kernel
    parameters plus ``kernel_size``, ``noise_sigma`` and ``jpeg_quality`` (0 = none). Pixels within
    ``kernel_size // 2`` of the input border see reflected content: pass ``margin`` to drop them.
    """
    rng = _as_rng(rng)
    if kernel is None:
        kernel, info = sample_kernel(cfg, rng)
    info = dict(info or {})
    if sharp.dtype != np.uint8 or sharp.ndim != 3:
        raise ValueError(f"synthesize: expected an (H,W,3) uint8 image, got {sharp.dtype} {sharp.shape}")
    kflip = np.ascontiguousarray(_trim(np.asarray(kernel, np.float32))[::-1, ::-1])
    blur = cv2.filter2D(sharp, cv2.CV_32F, kflip, borderType=cv2.BORDER_REFLECT)
    if margin > 0:
        blur = blur[margin:-margin, margin:-margin]
    sigma = float(rng.uniform(*cfg.noise_sigma))
    if sigma > 0:
        blur = np.ascontiguousarray(blur)
        blur = cv2.scaleAdd(_gaussian(blur.shape, rng), sigma * 255.0, blur)
    blur = np.clip(blur + 0.5, 0, 255).astype(np.uint8)
    quality = 0
    if cfg.jpeg_prob > 0 and rng.uniform() < cfg.jpeg_prob:
        quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
        blur = jpeg(blur, quality)
    info.update(kernel_size=int(kernel.shape[0]), noise_sigma=sigma, jpeg_quality=quality)
    return blur, info
