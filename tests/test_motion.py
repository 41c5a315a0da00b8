"""The inter-frame camera motion (deblur.motion.global_motion) and the blur it predicts (motion_kernel), on real
photos moved and blurred by amounts we know."""

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata

from deblur.archs.kernel_arch import angle_error, kernel_extent, kernel_moments, moment_angle
from deblur.data.blur_synth import apply_kernel, linear_kernel
from deblur.motion import global_motion, motion_kernel

PHOTOS = Path(__file__).resolve().parents[1] / "data" / "eval" / "photos"


def _photo(name: str, fallback) -> np.ndarray:
    """A real grey photo (data/eval/photos, else a scikit-image sample), 640x360 float32 [0,1]."""
    path = PHOTOS / f"{name}.jpg"
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) if path.is_file() else None
    if img is None:
        img = fallback()
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    return cv2.resize(img, (640, 360), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _moved(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """The content moved by (dx, dy) px (x right, y down), mirrored beyond the frame."""
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


@pytest.fixture(scope="module")
def bus():
    return _photo("bus", skdata.astronaut)


@pytest.mark.parametrize("shift", [(7.0, -3.0), (-12.5, 4.25), (0.0, 0.0), (30.0, 18.0)])
def test_global_motion_recovers_a_known_shift(bus, shift):
    dx, dy, conf = global_motion(bus, _moved(bus, *shift))
    assert math.hypot(dx - shift[0], dy - shift[1]) < 0.5, (dx, dy)
    assert conf > 0.4  # a pure translation (the window and the mirrored border make it less than 1)
    back = global_motion(_moved(bus, *shift), bus)  # the other way round: the opposite motion
    assert math.hypot(back[0] + shift[0], back[1] + shift[1]) < 0.5


def test_global_motion_takes_uint8_and_torch_frames(bus):
    moved = _moved(bus, 7.0, -3.0)
    as_uint8 = global_motion((bus * 255).round().astype(np.uint8), (moved * 255).round().astype(np.uint8))
    as_torch = global_motion(torch.from_numpy(bus)[None, None], torch.from_numpy(moved)[None, None])
    for dx, dy, _ in (as_uint8, as_torch):
        assert math.hypot(dx - 7.0, dy + 3.0) < 0.5
    with pytest.raises(ValueError, match="differ in size"):
        global_motion(bus, bus[:-8])


def test_global_motion_sees_through_motion_blur(bus):
    """Both frames blurred by the camera's motion (a centred kernel shifts nothing): the shift is still found."""
    k = linear_kernel(15, 20.0)
    dx, dy, conf = global_motion(apply_kernel(bus, k), apply_kernel(_moved(bus, 16.0, -6.0), k))
    assert math.hypot(dx - 16.0, dy + 6.0) < 0.75 and conf > 0.3


def test_unrelated_frames_have_low_confidence(bus):
    other = _photo("zidane", skdata.coffee)
    noise = np.random.default_rng(0).uniform(0, 1, bus.shape).astype(np.float32)
    related = global_motion(bus, _moved(bus, 5.0, 2.0))[2]
    for a, b in ((bus, other), (other, bus), (bus, noise)):
        conf = global_motion(a, b)[2]
        assert conf < 0.15 and conf < related / 4


@pytest.mark.parametrize("motion,exposure", [((20.0, 0.0), 0.5), ((0.0, -16.0), 1.0), ((-14.0, 10.0), 0.75),
                                             ((9.0, 9.0), 0.5)])
def test_motion_kernel_is_a_line_along_the_motion(motion, exposure):
    k = motion_kernel(*motion, exposure, 41)
    assert k.shape == (41, 41) and k.dtype == np.float32
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-5) and float(k.min()) >= 0.0
    m = kernel_moments(torch.from_numpy(k)[None])
    length = math.hypot(*motion) * exposure
    assert float(kernel_extent(m)[0]) == pytest.approx(length, abs=1.0)
    angle = math.degrees(math.atan2(-motion[1], motion[0]))  # counter-clockwise on screen, y down
    assert float(angle_error(moment_angle(m), torch.tensor([angle]))[0]) < 2.0
    # centred: the blur moves nothing
    ys, xs = np.mgrid[:41, :41] - 20
    assert abs(float((k * xs).sum())) < 0.05 and abs(float((k * ys).sum())) < 0.05


def test_motion_kernel_predicts_the_blur_of_a_moving_camera(bus):
    """A camera moving (12, -5) px per frame interval with an exposure of half of it: the frame deconvolved with the
    predicted kernel is sharper than with a kernel across the motion."""
    from deblur.deconv import wiener_deconvolve

    truth = linear_kernel(1 + 13.0 * 0.5, math.degrees(math.atan2(5.0, 12.0)))
    blurred = torch.from_numpy(apply_kernel(bus, truth))[None, None]
    sharp = torch.from_numpy(bus)[None, None]

    def error(k):
        out = wiener_deconvolve(blurred, torch.from_numpy(k), balance=1e-3).clamp(0, 1)
        return float((out - sharp)[..., 20:-20, 20:-20].pow(2).mean())

    predicted, across = motion_kernel(12.0, -5.0, 0.5, 21), motion_kernel(5.0, 12.0, 0.5, 21)
    assert error(predicted) < 0.5 * error(across)


def test_motion_kernel_edges():
    delta = motion_kernel(0.0, 0.0, 0.5, 9)
    assert delta[4, 4] == pytest.approx(1.0)
    assert motion_kernel(50.0, 0.0, 0.0, 9)[4, 4] == pytest.approx(1.0)  # no exposure, no blur
    long = motion_kernel(100.0, 0.0, 1.0, 21)  # longer than the canvas: cropped to it, still summing to 1
    assert long.shape == (21, 21) and float(long.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(long[10].sum()) == pytest.approx(1.0, abs=1e-5)  # all on the centre row
    for bad in ((1.0, 0.0, 0.5, 8), (1.0, 0.0, 1.5, 9), (float("nan"), 0.0, 0.5, 9)):
        with pytest.raises(ValueError):
            motion_kernel(*bad)


def test_global_motion_is_cheap(bus):
    """The budget: well under 2 ms a 640x360 pair on one core (measured ~1 ms; generous here for shared CI)."""
    import time

    moved = _moved(bus, 5.0, 3.0)
    global_motion(bus, moved)
    t0 = time.perf_counter()
    for _ in range(20):
        global_motion(bus, moved)
    assert (time.perf_counter() - t0) / 20 < 0.02
