"""The blur gate on night frames (KernelDeblurrer, the shipped estimator, CPU): a dark frame whose point lights are
streaked by a known blur is deblurred, the same frame without the blur passes through untouched.

Before the dark-frame tile handling (KernelDeblurConfig.dark_luma) the estimator read the clipped lamps as sharp
edges and the dim, noisy rest as long blur, so the gate's call on a night frame was a coin flip
(docs/results/2026-12-06_kernel_refinement.md, "The blur gate")."""

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata

from deblur.archs.kernel_arch import kernel_extent, kernel_moments
from deblur.data.blur_synth import jpeg, linear_kernel, shake_kernel
from deblur.kernel_deblur import KernelDeblurConfig, KernelDeblurrer

LAMPS = [(60, 70, 4), (300, 40, 3), (520, 90, 5), (150, 250, 3), (440, 300, 4), (600, 200, 2)]  # x, y, radius
_rng = np.random.default_rng(0)
MANY_LAMPS = [(int(_rng.integers(0, 640)), int(_rng.integers(0, 360)), int(_rng.integers(2, 6))) for _ in range(14)]


def _scene(name: str) -> np.ndarray:
    """A real photo (scikit-image), 640x360 BGR uint8: the product's frame size."""
    img = getattr(skdata, name)()
    return cv2.resize(np.ascontiguousarray(img[..., ::-1]), (640, 360), interpolation=cv2.INTER_AREA)


def _night(img_bgr: np.ndarray, kernel: np.ndarray | None, seed: int = 0, lamps=LAMPS) -> np.ndarray:
    """The frame at 15 % exposure with saturated lamps, blurred in linear light (None = sharp) and clipped, sensor
    noise 0.01 and JPEG 85 (bench/gate.py's low-light frames, with fixed lamps)."""
    lin = (img_bgr.astype(np.float32) / 255.0) ** 2.2 * 0.15**2.2
    for x, y, r in lamps:
        cv2.circle(lin, (x, y), r, (8.0, 8.0, 8.0), -1)
    if kernel is not None:
        k = kernel.astype(np.float32)
        lin = cv2.filter2D(lin, -1, np.ascontiguousarray(k[::-1, ::-1]), borderType=cv2.BORDER_REFLECT)
    out = np.clip(lin, 0.0, 1.0) ** (1 / 2.2) + np.random.default_rng(seed).normal(0.0, 0.01, lin.shape)
    return jpeg(np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8), 85)


@pytest.fixture(scope="module")
def deblurrer():
    return KernelDeblurrer(device="cpu")  # deblur/weights/kernel_estimator.pt, default options


def _tensor(frames):
    return torch.from_numpy(np.stack([f[..., ::-1] for f in frames]).copy()).permute(0, 3, 1, 2).float() / 255.0


def _extent(deblurrer, frame) -> float:
    """Long axis (px) of the network's kernel for the frame (what the gate asks)."""
    return float(kernel_extent(kernel_moments(deblurrer.estimate(_tensor([frame])))))


# sharp sources at 640x360 (chelsea is upscaled to it and reads 5 px by day too: not a sharp frame)
@pytest.mark.parametrize("name", ["astronaut", "coffee", "rocket"])
@pytest.mark.parametrize("blur", ["shake4", "linear11"])
def test_a_blurred_night_frame_is_deblurred_and_a_sharp_one_passes_through(deblurrer, name, blur):
    """Measured (network's kernel, px): blurred 6.6-20 (true: shake 24, linear 10.3), sharp 0.1-0.8; before the
    dark-frame handling the sharp frames read 4.0-4.4 and were deblurred."""
    scene = _scene(name)
    kernel = shake_kernel(4, 11) if blur == "shake4" else linear_kernel(11, 30.0)
    blurred, sharp = _night(scene, kernel), _night(scene, None)
    assert cv2.cvtColor(sharp, cv2.COLOR_BGR2GRAY).mean() / 255.0 < KernelDeblurConfig().dark_luma  # a dark frame

    (out,) = deblurrer([blurred])
    assert not bool(deblurrer.last_gated[0]), f"blurred night frame called sharp ({_extent(deblurrer, blurred):.1f} px)"
    assert not np.array_equal(out, blurred) and _extent(deblurrer, blurred) > 5.0

    (out,) = deblurrer([sharp])
    assert bool(deblurrer.last_gated[0]), f"sharp night frame called blurred ({_extent(deblurrer, sharp):.1f} px)"
    assert np.array_equal(out, sharp)


@pytest.mark.parametrize("name", ["coffee", "rocket"])
def test_a_night_frame_with_many_lamps_is_deblurred(deblurrer, name):
    """Fourteen lamps: before the dark-frame handling the clipped lamps' tiles outvoted the rest and the blurred
    frame read 1.8-2.0 px (called sharp); measured now 13-25 px."""
    blurred = _night(_scene(name), shake_kernel(4, 11), lamps=MANY_LAMPS)
    (out,) = deblurrer([blurred])
    assert not bool(deblurrer.last_gated[0]), f"blurred night frame called sharp ({_extent(deblurrer, blurred):.1f} px)"
    assert not np.array_equal(out, blurred)


def test_a_batch_mixes_night_and_day_frames(deblurrer):
    """One batch: the dark frames take the dark path, the daytime frame the usual one, each its own call."""
    scene = _scene("astronaut")
    frames = [_night(scene, shake_kernel(4, 11)), _night(scene, None), scene]
    x = _tensor(frames)
    out = deblurrer.restore(x)
    assert deblurrer.last_gated.tolist() == [False, True, True]
    assert torch.equal(out[1:], x[1:]) and not torch.equal(out[0], x[0])
    # the daytime frame's kernel does not depend on the dark frames beside it
    alone = deblurrer.estimate(x[2:])
    assert torch.allclose(deblurrer.estimate(x)[2:], alone, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 3, 24, 32), (2, 3, 360, 640)], ids=["tiny", "batch"])
@pytest.mark.parametrize("value", [0.0, 0.05, 1.0], ids=["black", "dark", "white"])
def test_uniform_and_tiny_frames_still_work(deblurrer, shape, value):
    x = torch.full(shape, value)
    out = deblurrer.restore(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert torch.isfinite(deblurrer.last_kernels).all()


def test_night_frames_with_every_tile_lit_still_get_a_kernel(deblurrer):
    """A dark frame whose every tile holds a clipped lamp: no tile is left out (weights never all zero)."""
    x = torch.full((1, 3, 256, 256), 0.04)
    x[..., 60:64, 60:64] = x[..., 60:64, 190:194] = x[..., 190:194, 60:64] = x[..., 190:194, 190:194] = 1.0
    kernels = deblurrer.estimate(x)
    assert torch.isfinite(kernels).all() and torch.allclose(kernels.sum((-1, -2)), torch.ones(1), atol=1e-4)


@pytest.mark.parametrize("field, value", [("dark_luma", -0.1), ("dark_luma", 1.5), ("dark_gain", 0.5),
                                          ("dark_contrast", 0.0)])
def test_dark_options_are_checked(field, value):
    with pytest.raises(ValueError, match=field):
        KernelDeblurConfig(**{field: value})


def test_a_night_frame_keeps_the_networks_kernel(deblurrer):
    """The refinement is skipped on dark frames (it shrank night kernels to ~2 px): the kernel used for a blurred
    night frame is the network's, as long as the blur; a daytime frame is still refined."""
    scene = _scene("coffee")
    night = _night(scene, shake_kernel(4, 11))
    deblurrer([night])
    used = deblurrer.last_kernels
    net = deblurrer.estimate(_tensor([night]))
    assert float(kernel_extent(kernel_moments(used))[0]) > 5.0
    assert torch.allclose(used, net, atol=1e-6)
    from deblur.data.blur_synth import apply_kernel

    day = apply_kernel(scene, shake_kernel(4, 11))
    deblurrer([day])
    assert not torch.allclose(deblurrer.last_kernels, deblurrer.estimate(_tensor([day])), atol=1e-4)


def test_a_dark_frames_coloured_lamps_are_clipped_highlights_in_the_copy_path_too(deblurrer):
    """The CPU pipeline estimates on the luma of the full frame and deconvolves a uint8 copy: a dark frame's orange
    lamps (luma ~0.66, red channel clipped) are still told by the brightest channel (bright), as with the RGB frame,
    so their tiles are left out and the kernel is the same; told by the luma alone, they would count as detail."""
    from deblur.kernel_deblur import luma

    x = _tensor([_night(_scene("coffee"), linear_kernel(11, 30.0), lamps=[])])
    orange = torch.tensor([1.0, 0.6, 0.1])[:, None, None]
    for cx, cy, r in MANY_LAMPS:
        x[0, :, max(0, cy - r) : cy + r, max(0, cx - r) : cx + r] = orange
    grey, bright = luma(x), x.amax(1, keepdim=True)
    assert float(grey.mean()) < deblurrer.cfg.dark_luma
    _, with_bright = deblurrer._tiles(grey, bright)
    _, luma_only = deblurrer._tiles(grey, None)
    assert with_bright is not None and bool((with_bright == 0).any())  # lamp tiles left out
    assert luma_only is None or bool((luma_only == 1).all())  # the luma sees no clipped highlight
    torch.testing.assert_close(deblurrer.estimate(None, grey, bright), deblurrer.estimate(x))
