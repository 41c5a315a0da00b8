"""PSNR/SSIM against scikit-image on real photos, tensor paths, edge cases."""

import math

import numpy as np
import pytest
import torch
from skimage import data, filters
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from deblur.metrics import psnr, ssim


def _photos():
    """(sharp, degraded) uint8 (H,W,3) RGB pairs: blurred astronaut crop, noisy chelsea."""
    astro = data.astronaut()[:256, 128:384]
    blurred = filters.gaussian(astro, sigma=2, channel_axis=-1, preserve_range=True).round().astype(np.uint8)
    cat = data.chelsea()
    noise = np.random.default_rng(0).normal(0, 12, cat.shape).round()
    noisy = np.clip(cat.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return [(astro, blurred), (cat, noisy)]


PHOTOS = _photos()


def _to_tensor(img_u8):
    """uint8 (H,W,3) -> float32 (3,H,W) in [0,1]."""
    return torch.from_numpy(img_u8).permute(2, 0, 1).float() / 255


@pytest.mark.parametrize("i", range(len(PHOTOS)))
def test_uint8_matches_skimage(i):
    sharp, degraded = PHOTOS[i]
    assert psnr(degraded, sharp) == pytest.approx(peak_signal_noise_ratio(sharp, degraded, data_range=255), abs=1e-3)
    ref = structural_similarity(sharp, degraded, channel_axis=-1, data_range=255)
    assert ssim(degraded, sharp) == pytest.approx(ref, abs=1e-4)
    ref_g = structural_similarity(sharp, degraded, channel_axis=-1, data_range=255, gaussian_weights=True, sigma=1.5)
    assert ssim(degraded, sharp, gaussian_weights=True) == pytest.approx(ref_g, abs=1e-4)
    ref_w = structural_similarity(
        sharp, degraded, channel_axis=-1, data_range=255, gaussian_weights=True, use_sample_covariance=False
    )
    assert ssim(degraded, sharp, gaussian_weights=True, use_sample_covariance=False) == pytest.approx(ref_w, abs=1e-4)


def test_float32_tensors_match_skimage_per_image():
    (s1, d1), (s2, d2) = PHOTOS
    crop = (slice(0, 200), slice(0, 200))
    sharp = torch.stack([_to_tensor(s1[crop]), _to_tensor(s2[crop])])
    degraded = torch.stack([_to_tensor(d1[crop]), _to_tensor(d2[crop])])
    p = psnr(degraded, sharp, data_range=1.0)
    s = ssim(degraded, sharp, data_range=1.0)
    assert p.shape == s.shape == (2,) and p.dtype == torch.float32
    for k, (sh, de) in enumerate([(s1[crop], d1[crop]), (s2[crop], d2[crop])]):
        assert p[k].item() == pytest.approx(peak_signal_noise_ratio(sh, de, data_range=255), abs=1e-3)
        assert s[k].item() == pytest.approx(structural_similarity(sh, de, channel_axis=-1, data_range=255), abs=1e-4)
    # [-1,1] tensors: PSNR with data_range=2 is the same number
    assert torch.allclose(psnr(degraded * 2 - 1, sharp * 2 - 1, data_range=2.0), p, atol=1e-3)
    # one image (3,H,W) -> 0-d tensor
    one = ssim(degraded[0], sharp[0], data_range=1.0)
    assert one.dim() == 0 and one.item() == pytest.approx(s[0].item(), abs=1e-6)


def test_tensor_metrics_ignore_autocast():
    sharp, degraded = PHOTOS[1]
    x, y = _to_tensor(degraded)[:, :96, :96], _to_tensor(sharp)[:, :96, :96]
    ref = ssim(x, y, data_range=1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ssim(x, y, data_range=1.0)
    assert got.dtype == torch.float32 and got.item() == pytest.approx(ref.item(), abs=1e-6)


def test_identical_images():
    img = PHOTOS[0][0]
    assert psnr(img, img) == math.inf
    assert ssim(img, img) == pytest.approx(1.0)
    t = torch.rand(2, 3, 16, 16)
    assert torch.isinf(psnr(t, t, data_range=1.0)).all()
    assert torch.allclose(ssim(t, t, data_range=1.0), torch.ones(2))


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3, 16, 16\) and \(2, 3, 16, 17\)"):
        psnr(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 17), data_range=1.0)
    with pytest.raises(ValueError, match=r"\(8, 8, 3\) and \(8, 9, 3\)"):
        ssim(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8))


@pytest.mark.parametrize(
    "shape",
    [(16, 16, 3), (2, 2, 16, 16), (2, 16, 16), (1, 2, 3, 16, 16)],
)
def test_wrong_tensor_layout_names_shape(shape):
    x = torch.rand(shape)
    with pytest.raises(ValueError, match=r"got shape \(" + ", ".join(map(str, shape))):
        psnr(x, x, data_range=1.0)


def test_wrong_numpy_layout_and_missing_range():
    chw = np.zeros((3, 16, 16), np.uint8)
    with pytest.raises(ValueError, match=r"\(3, 16, 16\).*transpose"):
        psnr(chw, chw)
    with pytest.raises(ValueError, match="data_range is required"):
        psnr(torch.rand(3, 8, 8), torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="data_range is required"):
        psnr(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))
    with pytest.raises(TypeError, match="both"):
        psnr(np.zeros((8, 8, 3), np.uint8), torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="window"):
        ssim(torch.rand(3, 5, 5), torch.rand(3, 5, 5), data_range=1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    for fn in (psnr, ssim):
        got = fn(x.cuda(), y.cuda(), data_range=1.0)
        assert got.device.type == "cuda"
        assert torch.allclose(got.cpu(), fn(x, y, data_range=1.0), atol=1e-5)
