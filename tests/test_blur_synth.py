"""Synthetic blur kernels and their application (deblur/data/blur_synth.py)."""

import numpy as np
import pytest

from deblur.data.blur_synth import (
    IMAGENET_C_MOTION,
    SHAKE_SIZES,
    add_noise,
    apply_kernel,
    average_frames,
    imagenet_c_kernel,
    jpeg,
    linear_kernel,
    sample_kernel,
    shake_kernel,
    synthesize,
    trajectory_kernel,
)
from deblur.config import BlurConfig

from fakes import centre_offset


def check_kernel(k: np.ndarray) -> None:
    assert k.dtype == np.float32
    assert k.ndim == 2 and k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
    assert (k >= 0).all()
    assert abs(float(k.sum()) - 1.0) < 1e-5


def all_kernels():
    yield trajectory_kernel(31, 1.0, 0)
    yield trajectory_kernel(15, 0.3, 1, centered=False)
    yield linear_kernel(1, 0.0)
    yield linear_kernel(12.5, 33.0)
    yield linear_kernel(9, 200.0, centered=False)
    for s in IMAGENET_C_MOTION:
        yield imagenet_c_kernel(s, rng=s)
        yield imagenet_c_kernel(s, 10.0, centered=True)
    for s in SHAKE_SIZES:
        yield shake_kernel(s, seed=s)


def test_kernels_are_normalised_float32_odd_squares():
    for k in all_kernels():
        check_kernel(k)


def test_trajectory_kernel_determinism():
    a, b = trajectory_kernel(31, 0.8, 7), trajectory_kernel(31, 0.8, np.random.default_rng(7))
    assert a.shape == (31, 31)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, trajectory_kernel(31, 0.8, 8))


def test_shake_kernel_determinism_and_growth():
    np.testing.assert_array_equal(shake_kernel(3, 5), shake_kernel(3, 5))
    assert not np.array_equal(shake_kernel(3, 5), shake_kernel(3, 6))
    sizes = [shake_kernel(s, 0).shape[0] for s in range(1, 6)]
    assert sizes == [SHAKE_SIZES[s] for s in range(1, 6)]
    # spread (2nd moment) grows with severity for the same seed
    spreads = []
    for s in range(1, 6):
        k = shake_kernel(s, 0)
        ys, xs = np.indices(k.shape) - (k.shape[0] - 1) / 2
        spreads.append(float((k * (ys**2 + xs**2)).sum()))
    assert spreads == sorted(spreads)
    with pytest.raises(ValueError, match="severity"):
        shake_kernel(6, 0)


def test_centred_kernels_do_not_shift():
    for k in (trajectory_kernel(31, 0.7, 3), linear_kernel(10, 30.0), shake_kernel(4, 1)):
        assert np.abs(centre_offset(k)).max() < 1e-3


def test_imagenet_c_is_one_sided_unless_centred():
    one_sided = imagenet_c_kernel(3, angle_deg=0.0)
    off = centre_offset(one_sided)
    assert abs(off[1]) > 3.0 and abs(off[0]) < 1e-6  # horizontal and off-centre
    centred = imagenet_c_kernel(3, angle_deg=0.0, centered=True)
    assert np.abs(centre_offset(centred)).max() < 1e-3
    # random angle: deterministic in the seed, within +-45 degrees
    np.testing.assert_array_equal(imagenet_c_kernel(2, rng=4), imagenet_c_kernel(2, rng=4))
    with pytest.raises(ValueError, match="severity"):
        imagenet_c_kernel(0)


def test_linear_kernel_direction():
    k = linear_kernel(9, 0.0)
    c = k.shape[0] // 2
    assert k[c].sum() > 0.99  # horizontal line in the centre row
    k = linear_kernel(9, 90.0)
    assert k[:, c].sum() > 0.99


@pytest.mark.parametrize("shape,dtype", [((20, 24, 3), np.uint8), ((20, 24), np.uint8), ((20, 24, 3), np.float32)])
def test_apply_delta_kernel_is_identity(shape, dtype):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, shape).astype(np.uint8)
    if dtype == np.float32:
        img = img.astype(np.float32) / 255
    delta = np.zeros((5, 5), np.float32)
    delta[2, 2] = 1
    out = apply_kernel(img, delta)
    assert out.shape == img.shape and out.dtype == img.dtype
    np.testing.assert_allclose(out, img, atol=1e-6)


def test_apply_kernel_is_a_true_convolution():
    img = np.random.default_rng(1).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    k = np.zeros((3, 3), np.float32)
    k[1, 2] = 1.0  # tap at dx = +1: blur(p) = img(p - (0, 1)), content moves right
    out = apply_kernel(img, k)
    np.testing.assert_array_equal(out[:, 1:], img[:, :-1])
    with pytest.raises(TypeError):
        apply_kernel(img.astype(np.int32), k)


def test_apply_kernel_linear_light_and_range():
    img = np.zeros((10, 10, 3), np.uint8)
    img[:, 5:] = 255
    out_srgb = apply_kernel(img, linear_kernel(5, 0.0))
    out_lin = apply_kernel(img, linear_kernel(5, 0.0), linear=True)
    assert out_lin[5, 5, 0] > out_srgb[5, 5, 0]  # averaging in linear light brightens the edge


def test_average_frames():
    f = np.random.default_rng(2).integers(0, 256, (8, 9, 3)).astype(np.uint8)
    np.testing.assert_array_equal(average_frames([f, f, f]), f)
    black, white = np.zeros_like(f), np.full_like(f, 255)
    mid = average_frames([black, white])
    assert 180 <= int(mid[0, 0, 0]) <= 190  # 255 * 0.5 ** (1 / 2.2) = 186
    with pytest.raises(ValueError):
        average_frames([])


def test_noise_and_jpeg():
    img = np.full((32, 32, 3), 0.5, np.float32)
    noisy = add_noise(img, 0.05, 3)
    assert noisy.dtype == np.float32 and 0 <= noisy.min() and noisy.max() <= 1
    assert 0.04 < noisy.std() < 0.06
    np.testing.assert_array_equal(noisy, add_noise(img, 0.05, 3))
    u8 = np.random.default_rng(0).integers(0, 256, (32, 40, 3)).astype(np.uint8)
    out = jpeg(u8, 50)
    assert out.shape == u8.shape and out.dtype == np.uint8


def test_sample_kernel_mix_and_determinism():
    cfg = BlurConfig()
    kinds = set()
    for seed in range(40):
        k, info = sample_kernel(cfg, seed)
        check_kernel(k)
        kinds.add(info["kind"])
        k2, info2 = sample_kernel(cfg, np.random.default_rng(seed))
        np.testing.assert_array_equal(k, k2)
        assert info == info2
    assert kinds == {"trajectory", "linear", "imagenet_c"}
    only_linear = BlurConfig(kinds={"linear": 1.0, "trajectory": 0.0})
    assert {sample_kernel(only_linear, s)[1]["kind"] for s in range(10)} == {"linear"}


def test_synthesize_margin_and_info():
    img = np.random.default_rng(0).integers(0, 256, (50, 60, 3)).astype(np.uint8)
    cfg = BlurConfig(noise_sigma=(0.01, 0.02), jpeg_prob=1.0)
    out, info = synthesize(img, cfg, 0, margin=5)
    assert out.shape == (40, 50, 3) and out.dtype == np.uint8
    assert 0.01 <= info["noise_sigma"] <= 0.02 and 60 <= info["jpeg_quality"] <= 95
    out2, _ = synthesize(img, cfg, 0, margin=5)
    np.testing.assert_array_equal(out, out2)


def test_blur_config_checks():
    with pytest.raises(ValueError, match="unknown"):
        BlurConfig(kinds={"gaussian": 1.0})
    with pytest.raises(ValueError, match="kernel_size"):
        BlurConfig(kernel_size=30)
    with pytest.raises(ValueError, match="linear_length"):
        BlurConfig(linear_length=(10, 5))


def test_perturb_kernel_rotates_and_stretches_about_the_centre():
    from deblur.data.blur_synth import perturb_kernel

    def axis(k):  # principal axis angle (degrees, image y down) and RMS length along it
        ys, xs = np.mgrid[: k.shape[0], : k.shape[1]]
        cy, cx = (ys * k).sum(), (xs * k).sum()
        cov = np.cov(np.stack([(xs - cx).ravel(), (ys - cy).ravel()]), aweights=k.ravel())
        w, v = np.linalg.eigh(cov)
        return np.degrees(np.arctan2(v[1, 1], v[0, 1])) % 180, np.sqrt(w[1]), (cy, cx)

    k = linear_kernel(21, 30.0)
    a0, l0, c0 = axis(k)
    out = perturb_kernel(k, 10.0, 1.3)
    a1, l1, c1 = axis(out)
    assert out.shape == k.shape and out.min() >= 0 and abs(out.sum() - 1) < 1e-5
    assert abs(((a1 - a0 + 90) % 180 - 90) - (-10.0)) < 2.0  # cv2's positive angle turns counter-clockwise on screen
    assert abs(l1 / l0 - 1.3) < 0.08 and np.allclose(c1, c0, atol=0.3)
    np.testing.assert_allclose(perturb_kernel(k, 0.0, 1.0), k, atol=1e-6)
