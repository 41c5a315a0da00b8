"""Realistic camera shake (deblur/data/blur_synth.py): Gaussian-process kernels, in-plane rotation with
its exact local kernels, saturated night streaks, and their use in the kernel estimator's crops."""

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from configs import load_config, to_dict
from deblur.config import KernelBlurConfig, KernelTrainConfig
from deblur.data.blur_synth import (
    CameraMotion,
    add_highlights,
    apply_kernel,
    camera_motion,
    fit_kernel,
    gp_kernel,
    linear_kernel,
    rotational_blur,
    saturated_blur,
)
from deblur.data.kernel_dataset import KernelCrops, sample_kernel

from fakes import centre_offset


def check_kernel(k: np.ndarray, size: int | None = None, centred: bool = True) -> None:
    assert k.dtype == np.float32 and k.ndim == 2 and k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
    assert size is None or k.shape == (size, size)
    assert (k >= 0).all() and abs(float(k.sum()) - 1.0) < 1e-5
    if centred:
        assert np.abs(centre_offset(k)).max() < 1e-3


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def best_fit_line(k: np.ndarray) -> np.ndarray:
    """The centred straight-line kernel with ``k``'s principal direction and second moment."""
    ys, xs = np.indices(k.shape).astype(np.float64)
    mx, my = (k * xs).sum(), (k * ys).sum()
    cov = [[(k * (xs - mx) ** 2).sum(), (k * (xs - mx) * (ys - my)).sum()],
           [(k * (xs - mx) * (ys - my)).sum(), (k * (ys - my) ** 2).sum()]]
    ev, vec = np.linalg.eigh(cov)
    angle = np.degrees(np.arctan2(-vec[1, 1], vec[0, 1]))  # screen angle: rows grow downwards
    return fit_kernel(linear_kernel(max(1.0, np.sqrt(12 * ev[1]) + 1), angle), k.shape[0])  # uniform segment: var = L^2/12


# --- Gaussian-process kernels -------------------------------------------------------------------
def test_gp_kernel_is_deterministic_normalised_and_centred():
    a = gp_kernel(21, 5, length_scale=0.3, sigma=0.3)
    check_kernel(a, 21)
    np.testing.assert_array_equal(a, gp_kernel(21, np.random.default_rng(5), length_scale=0.3, sigma=0.3))
    assert not np.array_equal(a, gp_kernel(21, 6, length_scale=0.3, sigma=0.3))
    assert (a > 0).sum() > 15  # a path, not a dot
    with pytest.raises(ValueError, match="odd"):
        gp_kernel(20, 0)
    with pytest.raises(ValueError, match="length_scale"):
        gp_kernel(21, 0, length_scale=0.0)


def test_gp_kernels_are_curved_not_straight_lines():
    # the measure itself: a straight line matches its best-fit line
    for angle in (0.0, 30.0, 77.0):
        line = fit_kernel(linear_kernel(15, angle), 31)
        assert ncc(line, best_fit_line(line)) > 0.95
    fits = [ncc(k, best_fit_line(k)) for k in (gp_kernel(31, s, length_scale=0.3, sigma=0.3) for s in range(8))]
    assert np.median(fits) < 0.8, fits


def test_gp_kernel_amplitude_grows_with_sigma():
    def spread(k):
        ys, xs = np.indices(k.shape) - (k.shape[0] - 1) / 2
        return float((k * (ys**2 + xs**2)).sum())

    small = np.median([spread(gp_kernel(41, s, sigma=0.1)) for s in range(6)])
    large = np.median([spread(gp_kernel(41, s, sigma=0.4)) for s in range(6)])
    assert large > 4 * small


# --- in-plane rotation: spatially varying blur --------------------------------------------------
POINTS = [(12, 12), (83, 12), (12, 83), (83, 83), (48, 48)]  # (x, y)


def _turning_motion(turn_deg: float = 3.0) -> CameraMotion:
    t = np.linspace(0.0, 1.0, 200)
    shifts = np.stack([4.0 * np.sin(3.0 * t), 3.0 * t**2], axis=1)
    return CameraMotion(angles=turn_deg * (t - 0.5), shifts=shifts, centre=(-40.0, 130.0))  # centre off the frame


def test_local_kernel_matches_the_streak_of_each_point_light():
    img = np.zeros((96, 96), np.float32)
    for x, y in POINTS:
        img[y, x] = 1.0
    motion = _turning_motion()
    out = motion.render(img, linear=False)  # linear in the stored values: a point's streak is the kernel itself
    for x, y in POINTS:
        streak = out[y - 12 : y + 13, x - 12 : x + 13]
        k = motion.kernel(x, y, size=25, centered=False)
        check_kernel(k, 25, centred=False)
        assert abs(float(streak.sum()) - 1.0) < 0.01  # the whole streak is in the window
        assert ncc(streak, k) > 0.95, (x, y)
    # linear light: the same streaks, gamma-encoded
    out_lin = motion.render(img, linear=True) ** 2.2
    x, y = POINTS[0]
    assert ncc(out_lin[y - 12 : y + 13, x - 12 : x + 13], motion.kernel(x, y, size=25, centered=False)) > 0.95


def test_local_kernels_vary_across_the_frame_only_with_rotation():
    turning = _turning_motion(3.0)
    a, b = turning.kernel(0, 0, size=31), turning.kernel(95, 95, size=31)
    check_kernel(a, 31)
    check_kernel(b, 31)
    assert ncc(a, b) < 0.9
    sliding = _turning_motion(0.0)  # translation only: one kernel everywhere
    np.testing.assert_allclose(sliding.kernel(0, 0, size=31), sliding.kernel(95, 95, size=31), atol=1e-6)


def test_translation_only_motion_is_a_convolution_with_its_kernel():
    motion = _turning_motion(0.0)
    img = np.random.default_rng(1).random((40, 40)).astype(np.float32)
    ref = apply_kernel(img, motion.kernel(20, 20, centered=False))
    inner = (slice(10, -10), slice(10, -10))
    assert np.abs(motion.render(img, linear=False)[inner] - ref[inner]).max() < 0.01


def test_rotational_blur_random_motion():
    img = np.random.default_rng(0).integers(0, 256, (48, 64, 3)).astype(np.uint8)
    out, local_kernel = rotational_blur(img, 3, max_angle_deg=2.0, max_shift=4.0)
    assert out.shape == img.shape and out.dtype == np.uint8
    again, _ = rotational_blur(img, np.random.default_rng(3), max_angle_deg=2.0, max_shift=4.0)
    np.testing.assert_array_equal(out, again)
    assert not np.array_equal(out, rotational_blur(img, 4, max_angle_deg=2.0, max_shift=4.0)[0])
    motion = local_kernel.__self__
    assert isinstance(motion, CameraMotion) and np.ptp(motion.angles) <= 2.0 + 1e-9
    assert abs(motion.angles.mean()) < 1e-9 and np.abs(motion.shifts.mean(axis=0)).max() < 1e-9  # no net shift
    for x, y in ((0, 0), (63, 47)):
        check_kernel(local_kernel(x, y), centred=True)
        check_kernel(local_kernel(x, y, size=15), 15, centred=False)
    # enough frames for a smooth streak: no pixel moves more than 0.5 px between two
    for x, y in ((0, 0), (63, 0), (0, 47), (63, 47)):
        assert np.hypot(*np.diff(motion.displacements(x, y), axis=0).T).max() <= 0.5 + 1e-6
    # the rotation centre may lie off the frame
    centres = np.array([camera_motion((48, 64), s).centre for s in range(30)])
    assert ((centres[:, 0] < 0) | (centres[:, 0] > 63) | (centres[:, 1] < 0) | (centres[:, 1] > 47)).any()


# --- saturated highlights -----------------------------------------------------------------------
def test_add_highlights_goes_above_white():
    lin = np.full((32, 32), 0.1, np.float32)
    lin[:4, :4] = 0.8
    out = add_highlights(lin, 0, n_lights=(2, 2), intensity=(20.0, 30.0), boost=(2.0, 2.0), top=0.02)
    assert out.max() >= 20.0 and lin.max() == np.float32(0.8)  # input untouched
    assert np.isclose(out[:4, :4], 1.6).sum() > 0  # the brightest pixels boosted
    np.testing.assert_array_equal(out, add_highlights(lin, 0, n_lights=(2, 2), intensity=(20.0, 30.0), boost=(2.0, 2.0), top=0.02))


def test_saturation_leaves_clipped_pixels_along_the_streak():
    img = np.full((40, 40), 0.3, np.float32)
    kernel = linear_kernel(15, 0.0)  # horizontal
    one_light = dict(n_lights=(1, 1), intensity=(40.0, 40.0), boost=(1.0, 1.0), radius=(0, 0))
    sharp, blurred = saturated_blur(img, kernel, 2, **one_light)
    assert sharp.dtype == blurred.dtype == np.float32 and blurred.shape == img.shape
    ly, lx = np.unravel_index(np.argmax(sharp), sharp.shape)
    assert sharp[ly, lx] == 1.0 and (sharp >= 1.0).sum() == 1  # the light, clipped
    ys, xs = np.nonzero(blurred >= 1.0 - 1e-6)
    assert len(xs) >= 9  # 40 x white spread over 15 px stays saturated over most of them
    assert (ys == ly).all() and np.abs(xs - lx).max() <= 7  # on the horizontal streak through the light
    # the clipped sharp image blurred as usual has no saturated streak
    assert (apply_kernel(sharp, kernel, linear=True) >= 1.0 - 1e-6).sum() == 0
    # a CameraMotion works as the blur too, and uint8 stays uint8
    u8 = (img * 255).astype(np.uint8)
    s8, b8 = saturated_blur(u8, _turning_motion(), 2, **one_light)
    assert s8.dtype == b8.dtype == np.uint8 and (b8 == 255).sum() > 1


# --- config and the estimator's crops -----------------------------------------------------------
def test_kernel_blur_config_round_trip_and_checks():
    kinds = {"imagenet_c": 0.0, "linear": 0.0, "shake": 0.0, "gp": 0.5, "trajectory": 0.3, "none": 0.2}
    over = [f"blur.kinds={kinds}", "blur.saturate_prob=0.25", "blur.gp_sigma=[0.1, 0.3]"]
    cfg = load_config(KernelTrainConfig, None, over)
    assert cfg.blur.kinds == kinds and cfg.blur.gp_sigma == (0.1, 0.3) and cfg.blur.saturate_prob == 0.25
    assert load_config(KernelTrainConfig, data=to_dict(cfg)) == cfg
    assert KernelBlurConfig().kinds == {"imagenet_c": 0.35, "linear": 0.25, "shake": 0.3, "none": 0.1}
    with pytest.raises(ValueError, match="saturate_prob"):
        KernelBlurConfig(saturate_prob=1.5)
    with pytest.raises(ValueError, match="gp_sigma"):
        KernelBlurConfig(gp_sigma=(0.5, 0.2))
    with pytest.raises(ValueError, match="trajectory_length"):
        KernelBlurConfig(trajectory_length=(-1.0, 1.0))
    with pytest.raises(ValueError, match="rotation"):
        KernelBlurConfig(kinds={"rotation": 1.0})


@pytest.mark.parametrize("kind", ["gp", "trajectory"])
def test_sample_kernel_draws_the_new_families_to_the_estimators_size(kind):
    cfg = KernelBlurConfig(kinds={kind: 1.0})
    for seed in range(6):
        k, got = sample_kernel(cfg, np.random.default_rng(seed), 15)
        assert got == kind
        check_kernel(k, 15)
        assert (k > 1e-4).sum() >= 4  # a blur path, not the delta of 'none'
        again, _ = sample_kernel(cfg, np.random.default_rng(seed), 15)
        np.testing.assert_array_equal(k, again)


@pytest.fixture(scope="module")
def kernel_cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "coffee"):
        cv2.imwrite(str(root / f"{name}.jpg"), cv2.resize(getattr(skdata, name)()[..., ::-1], (128, 96)))
    over = [f"sources=[{root}/*.jpg]", "crop=48", "preload_size=0", "model={kernel_size: 15, width_mult: 0.25, depth: 7, hidden: 16}",
            "blur.kinds={gp: 1.0, trajectory: 1.0}", "blur.noise_prob=0.0", "blur.jpeg_prob=0.0"]
    return lambda *extra: load_config(KernelTrainConfig, None, over + list(extra))


def test_kernel_crops_draw_each_new_kind(kernel_cfg):
    crops = KernelCrops(kernel_cfg(), (0.0, 1.0))
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(10):
        blur, sharp, k, kind = crops.sample(rng)
        kinds.add(kind)
        check_kernel(k, 15)
        assert (k > 1e-4).sum() >= 4, kind  # blurred, not a delta
        assert blur.shape == sharp.shape == (48, 48)
        inner = (slice(8, -8), slice(8, -8))
        assert np.abs(apply_kernel(sharp, k)[inner] - blur[inner]).mean() < 0.01, kind  # saturate_prob 0: exact
    assert kinds == {"gp", "trajectory"}


def test_kernel_crops_saturate_with_their_probability(kernel_cfg):
    crops = KernelCrops(kernel_cfg("blur.saturate_prob=1.0", "blur.saturate_lights=[3, 3]",
                                   "blur.saturate_intensity=[200.0, 200.0]"), (0.0, 1.0))
    rng = np.random.default_rng(0)
    clipped = 0
    for _ in range(6):
        blur, sharp, k, _ = crops.sample(rng)
        assert 0.0 <= blur.min() and blur.max() <= 1.0
        clipped += int((blur >= 1.0).sum())
        inner = (slice(8, -8), slice(8, -8))
        assert np.abs(apply_kernel(sharp, k)[inner] - blur[inner]).max() > 0.05  # highlights: not sharp (x) kernel
    assert clipped > 20  # saturated streaks
