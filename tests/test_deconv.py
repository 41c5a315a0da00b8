"""wiener_deconvolve and estimate_noise: agreement with the numpy baseline, gain, batching, gradients, errors."""

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from deblur.baselines import wiener
from deblur.data.blur_synth import apply_kernel, imagenet_c_kernel, linear_kernel, trajectory_kernel
from deblur.deconv import WienerPlan, estimate_noise, wiener_deconvolve
from deblur.metrics import psnr

SHARP = cv2.resize(data.astronaut(), (128, 128), interpolation=cv2.INTER_AREA)  # (128,128,3) RGB uint8
KERNELS = {"linear9": linear_kernel(9, 30), "imagenet_c3": imagenet_c_kernel(3, 20, centered=True)}


def _t(img_u8):
    """uint8 (H,W,3) -> float32 (1,3,H,W) in [0,1]."""
    return torch.from_numpy(np.ascontiguousarray(img_u8)).permute(2, 0, 1)[None].float() / 255


def _u8(x):
    """float (1,3,H,W) -> uint8 (H,W,3), rounded as the baseline rounds."""
    return (x[0].permute(1, 2, 0).clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_matches_numpy_baseline(name):
    # Without the taper: the same padding (BORDER_REFLECT by k, then to the same FFT size: 118 px padded by 2k is a
    # size both choose) and filter as baselines.wiener, so the whole image agrees, borders included, up to float32
    # round-off.
    kernel = KERNELS[name]
    blurred = apply_kernel(SHARP[:118, :118], kernel)
    ours = _u8(wiener_deconvolve(_t(blurred), torch.from_numpy(kernel), taper=False))
    diff = np.abs(ours.astype(np.int16) - wiener(blurred, kernel).astype(np.int16))
    assert diff.mean() < 0.05 and diff.max() <= 1


@pytest.mark.parametrize("kernel", [KERNELS["linear9"], trajectory_kernel(15, rng=2)], ids=["linear9", "shake15"])
def test_true_kernel_raises_psnr_borders_included(kernel):
    # Both kernels have spectral zeros: untapered (and baselines.wiener) they ring from the borders across
    # the image and lose PSNR (-2.8 dB and -8.7 dB here); tapered they gain, and so does the outer 8-px frame.
    blur, sharp = _t(apply_kernel(SHARP, kernel)), _t(SHARP)
    restored = wiener_deconvolve(blur, torch.from_numpy(kernel)).clamp(0, 1)
    assert float(psnr(restored, sharp, 1.0) - psnr(blur, sharp, 1.0)) > 3.0
    frame = torch.ones(128, 128, dtype=torch.bool)
    frame[8:-8, 8:-8] = False
    assert (restored - sharp)[..., frame].pow(2).mean() < (blur - sharp)[..., frame].pow(2).mean()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_delta_kernel_is_identity(dtype):
    x = _t(SHARP).to(dtype)
    delta = torch.zeros(5, 5)
    delta[2, 2] = 1
    out = wiener_deconvolve(x, delta, balance=1e-8)
    assert out.dtype == dtype and out.shape == x.shape
    assert (out.float() - x.float()).abs().max() < (1e-4 if dtype == torch.float32 else 1e-3)  # half: its own rounding


def test_batch_equals_each_alone():
    k = max(v.shape[0] for v in KERNELS.values())  # zero-pad the smaller kernel around its centre: same blur
    kernels = torch.from_numpy(np.stack([np.pad(v, (k - v.shape[0]) // 2) for v in KERNELS.values()]))
    blur = torch.cat([_t(apply_kernel(SHARP, kernels[0].numpy())), _t(apply_kernel(SHARP[::-1], kernels[1].numpy()))])
    balance = torch.tensor([2e-3, 5e-3])
    both = wiener_deconvolve(blur, kernels, balance=balance, noise_gain=1.0)
    for i in range(2):
        alone = wiener_deconvolve(blur[i : i + 1], kernels[i], balance=float(balance[i]), noise_gain=1.0)
        assert torch.allclose(both[i : i + 1], alone, atol=1e-5)


def test_gradients_reach_kernel_and_image():
    kernel = torch.from_numpy(KERNELS["linear9"]).requires_grad_(True)
    blur = _t(apply_kernel(SHARP, KERNELS["linear9"])).requires_grad_(True)
    loss = (wiener_deconvolve(blur, kernel) - _t(SHARP)).pow(2).mean()
    loss.backward()
    for grad in (kernel.grad, blur.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_estimate_noise_on_smooth_image():
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 128), torch.linspace(0, 1, 128), indexing="ij")
    smooth = (0.5 + 0.2 * torch.sin(3 * xx + 2 * yy) * torch.cos(2 * yy)).expand(3, 3, 128, 128)
    sigmas = torch.tensor([0.0, 0.02, 0.05])
    noisy = smooth + sigmas[:, None, None, None] * torch.randn(smooth.shape, generator=torch.Generator().manual_seed(0))
    est = estimate_noise(noisy)
    assert est.shape == (3,) and est[0] < 0.01
    assert torch.all((est[1:] / sigmas[1:] - 1).abs() < 0.25), est


@pytest.mark.parametrize(
    "blur_shape,kernel_shape,kwargs,arg",
    [
        ((1, 3, 32, 32), (4, 4), {}, "kernel"),  # even side
        ((2, 3, 32, 32), (3, 5, 5), {}, "kernel"),  # batch mismatch
        ((3, 32, 32), (5, 5), {}, "blur"),  # no batch axis
        ((1, 3, 16, 32), (17, 17), {}, "kernel"),  # larger than the image
        ((1, 3, 32, 32), (5, 5), {"balance": -1.0}, "balance"),
        ((2, 3, 32, 32), (5, 5), {"balance": torch.ones(3)}, "balance"),
        ((1, 3, 32, 32), (5, 5), {"pad": -2}, "pad"),
    ],
)
def test_bad_inputs_raise(blur_shape, kernel_shape, kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        wiener_deconvolve(torch.zeros(blur_shape), torch.ones(kernel_shape), **kwargs)


def test_estimate_noise_rejects_unbatched():
    with pytest.raises(ValueError, match="x must be a float tensor"):
        estimate_noise(torch.zeros(3, 32, 32))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    kernel = torch.from_numpy(KERNELS["imagenet_c3"])
    blur = _t(apply_kernel(SHARP, KERNELS["imagenet_c3"]))
    cpu = wiener_deconvolve(blur, kernel, noise_gain=1.0)
    gpu = wiener_deconvolve(blur.cuda(), kernel.cuda(), noise_gain=1.0)
    assert gpu.device.type == "cuda" and (gpu.cpu() - cpu).abs().max() < 1e-4


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_residual_is_the_blurred_image_less_the_deconvolution_blurred_again(name):
    # away from the borders (where the padding and taper act) y - k*x is exactly that, up to round-off; it is
    # large where the kernel passes little (the deconvolution's guesses), and nearly zero for a weak kernel
    kernel = KERNELS[name]
    blur = _t(apply_kernel(SHARP, kernel))
    x, res = wiener_deconvolve(blur, torch.from_numpy(kernel), residual=True)
    torch.testing.assert_close(x, wiener_deconvolve(blur, torch.from_numpy(kernel)))
    k = kernel.shape[-1]
    reblur = torch.nn.functional.conv2d(x.transpose(0, 1), torch.from_numpy(kernel).flip(0, 1)[None, None]).transpose(0, 1)
    m = k  # the valid convolution loses k // 2 per side; skip as much again for the padding
    inner = (blur - res)[..., m : -m, m : -m]
    torch.testing.assert_close(inner, reblur[..., m - k // 2 : -(m - k // 2), m - k // 2 : -(m - k // 2)], atol=2e-5, rtol=0)
    assert res.abs().mean() > 2e-3
    delta = torch.zeros(5, 5)
    delta[2, 2] = 1
    _, res_delta = wiener_deconvolve(blur, delta, residual=True)
    assert res_delta.abs().mean() < 0.2 * res.abs().mean()


def test_fft_sizes_are_the_smallest_fast_ones():
    # an odd FFT length (729 for a 640-px frame padded by 41 px each side), a single factor 2 (750, 1458) or many 3s
    # and 5s ran up to 3x slower per sample
    from deblur.deconv import _fast_len

    def fast(m):
        f = []
        for p in (2, 3, 5):
            f.append(0)
            while m % p == 0:
                m, f[-1] = m // p, f[-1] + 1
        return m == 1 and f[0] >= 2 and f[1] <= 4 and f[2] <= 2

    for n in range(1, 2500):
        got = _fast_len(n)
        assert got >= n and fast(got), (n, got)
        assert not any(fast(m) for m in range(n, got)), (n, got)
    assert (_fast_len(722), _fast_len(1442), _fast_len(2162)) == (768, 1536, 2304)


@pytest.mark.parametrize("k", [1, 3, 41])
def test_transfer_function_equals_the_padded_kernels_fft(k):
    # the plan transforms only the kernel's rows along the width; the result must be the whole grid's FFT
    import torch.nn.functional as F

    from deblur.deconv import WienerPlan

    plan = WienerPlan(torch.rand(2, 1, 60, 90, dtype=torch.float64), k)
    kern = torch.rand(2, k, k, dtype=torch.float64)
    otf = F.pad(kern, (0, plan.wp - k, 0, plan.hp - k)).roll((-(k // 2), -(k // 2)), dims=(-2, -1))
    torch.testing.assert_close(plan._otf(kern), torch.fft.rfft2(otf))


@pytest.mark.parametrize("pads", [(2, 3, 1, 4), (5, 5, 7, 7), (0, 0, 0, 0), (6, 1, 0, 9), (12, 11, 15, 20)],
                         ids=["narrow", "whole", "none", "folded", "folded_twice"])
def test_reflect_padding_is_cv2s_border_reflect(pads):
    from deblur.deconv import _reflect_pad

    img = np.random.default_rng(0).random((5, 7), dtype=np.float32)
    top, bottom, left, right = pads
    want = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_REFLECT)
    got = _reflect_pad(torch.from_numpy(img)[None, None], top, bottom, left, right)[0, 0].numpy()
    np.testing.assert_array_equal(got, want)


def test_balance_stays_differentiable_after_an_inference_call_on_the_same_grid():
    # the Laplacian's spectrum is kept per grid; one made under inference mode must not break a later backward pass
    blur = _t(apply_kernel(SHARP, KERNELS["linear9"]))
    kernel = torch.from_numpy(KERNELS["linear9"])
    with torch.inference_mode():
        wiener_deconvolve(blur, kernel)
    balance = torch.full((1,), 1e-2, requires_grad=True)
    wiener_deconvolve(blur, kernel, balance=balance).square().mean().backward()
    assert balance.grad is not None and torch.isfinite(balance.grad).all() and balance.grad.abs().item() > 0


def _shifted(kernel: np.ndarray, dx: float, dy: float = 0.0) -> torch.Tensor:
    """The kernel moved by ``dx`` px right and ``dy`` px down (|dx|, |dy| < 1, bilinear), so its centre of mass is
    off by (dx, dy)."""
    k = torch.from_numpy(kernel).float()
    kx = (1 - abs(dx)) * k + abs(dx) * torch.roll(k, 1 if dx > 0 else -1, -1)
    return (1 - abs(dy)) * kx + abs(dy) * torch.roll(kx, 1 if dy > 0 else -1, -2)


def test_center_keeps_the_blurred_images_position():
    # A kernel whose centre of mass is 0.4 px off its centre pixel (what whole-pixel centring leaves) deconvolves to
    # an image moved by 0.4 px; center=True moves the kernel back by its centre of mass first, and the image stays in
    # place: closer to the sharp one. A kernel centred already is deconvolved exactly as without center.
    blur, sharp = _t(apply_kernel(SHARP, KERNELS["linear9"])), _t(SHARP)
    off = _shifted(np.pad(KERNELS["linear9"], 1), 0.4)
    plain = wiener_deconvolve(blur, off, balance=1e-3).clamp(0, 1)
    centred = wiener_deconvolve(blur, off, balance=1e-3, center=True).clamp(0, 1)
    truth = wiener_deconvolve(blur, torch.from_numpy(KERNELS["linear9"]), balance=1e-3).clamp(0, 1)
    assert float(psnr(centred, sharp, 1.0)) > float(psnr(plain, sharp, 1.0)) + 1.0
    assert float(psnr(centred, truth, 1.0)) > 35.0  # the true kernel's result, up to the interpolation's smoothing
    true_k = torch.from_numpy(KERNELS["linear9"])
    same = wiener_deconvolve(blur, true_k, balance=1e-3, center=True)
    assert torch.allclose(same, wiener_deconvolve(blur, true_k, balance=1e-3), atol=1e-5)


def test_center_moves_each_kernel_of_a_batch_by_its_own_offset_on_both_axes():
    # Two images, two kernels off centre in different directions (down-right and up-left): centred, each comes out as
    # the true kernel's deconvolution, as it does alone; not centred, each is moved by its own offset.
    kernel = np.pad(KERNELS["imagenet_c3"], 1)
    blur = _t(apply_kernel(SHARP, KERNELS["imagenet_c3"])).expand(2, -1, -1, -1)
    off = torch.stack([_shifted(kernel, 0.4, 0.3), _shifted(kernel, -0.3, -0.4)])
    truth = wiener_deconvolve(blur[:1], torch.from_numpy(kernel), balance=1e-3)
    centred = wiener_deconvolve(blur, off, balance=1e-3, center=True)
    plain = wiener_deconvolve(blur, off, balance=1e-3)
    for i in range(2):
        assert float(psnr(centred[i : i + 1].clamp(0, 1), truth.clamp(0, 1), 1.0)) > 35.0
        assert float(psnr(plain[i : i + 1].clamp(0, 1), truth.clamp(0, 1), 1.0)) < 32.0
        alone = wiener_deconvolve(blur[i : i + 1], off[i], balance=1e-3, center=True)
        assert torch.allclose(centred[i : i + 1], alone, atol=1e-5)


def test_center_of_a_kernel_summing_to_almost_nothing_stays_within_its_radius():
    # Mixed-sign taps summing to ~1e-6 put the centre of mass thousands of px away; the shift is clamped to the
    # kernel's radius and the deconvolution stays finite.
    k = torch.zeros(1, 9, 9)
    k[0, 4, 8], k[0, 4, 0] = 1.0, -1.0 + 1e-6
    plan = WienerPlan(_t(SHARP)[:, :1], 9)
    phase_y, phase_x = plan._centre_phases(k)
    f1 = 1.0 / plan.wp  # the lowest non-zero horizontal frequency
    shift = torch.angle(phase_x[0, 0, 1]).item() / (2 * np.pi * f1)
    assert abs(shift) <= 4 + 1e-3 and abs(torch.angle(phase_y).max().item()) < 1e-6
    assert torch.isfinite(wiener_deconvolve(_t(SHARP), k, center=True)).all()
