"""Kernel-aware deblurring: the estimator, its moments, its training stage and the KernelDeblurrer (CPU, tiny)."""

import json
import logging
import math

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata

from configs import load_config
from deblur.kernel_refine import RefineConfig
from deblur.archs.kernel_arch import angle_error, kernel_extent, kernel_moments, moment_angle
from deblur.data.blur_synth import apply_kernel, imagenet_c_kernel, linear_kernel, shake_kernel
from deblur.config import EstimatorConfig, KernelTrainConfig
from deblur.data.kernel_dataset import KernelCrops, fit_kernel
from deblur.kernel_deblur import KernelDeblurrer
from deblur.train.kernel_trainer import KernelTrainer
from deblur.metrics import psnr
from deblur.models import build_estimator, load_estimator, load_generator, save_estimator, save_generator
from runtime import resolve_precision

TINY = EstimatorConfig(kernel_size=15, width_mult=0.25, depth=7, hidden=16)


@pytest.fixture(scope="module")
def photo_bgr():
    """A real photo (scikit-image's astronaut), 256x256 BGR uint8."""
    return cv2.resize(skdata.astronaut()[..., ::-1], (256, 256), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    """Six real photos from scikit-image, as JPEG files (the estimator's training sources)."""
    root = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field"):
        img = getattr(skdata, name)()
        img = img if img.ndim == 3 else np.repeat(img[..., None], 3, 2)
        cv2.imwrite(str(root / f"{name}.jpg"), cv2.resize(img[..., ::-1], (160, 128)))
    return root


class OracleEstimator(torch.nn.Module):
    """Test double: always 'estimates' the given kernel (or NaN)."""

    def __init__(self, kernel: np.ndarray):
        super().__init__()
        self.kernel_size = kernel.shape[0]
        self.register_buffer("kernel", torch.from_numpy(kernel.astype(np.float32)))

    def forward(self, crops):
        return self.kernel.expand(len(crops), -1, -1)


# --- moments ------------------------------------------------------------------------------------
@pytest.mark.parametrize("angle", [0.0, 30.0, 90.0, 135.0, 170.0])
def test_moment_angle_and_extent_of_a_line(angle):
    kernel = torch.from_numpy(fit_kernel(linear_kernel(15, angle), 41))[None]
    m = kernel_moments(kernel)
    assert float(angle_error(moment_angle(m), torch.tensor([angle]))) < 1.0
    assert abs(float(kernel_extent(m)) - 15) < 1.5
    assert abs(float(m[0, 0])) < 0.05 and abs(float(m[0, 1])) < 0.05  # centred


def test_angle_error_wraps_at_180():
    assert float(angle_error(torch.tensor([179.0]), torch.tensor([1.0]))) == pytest.approx(2.0)
    assert float(angle_error(torch.tensor([90.0]), torch.tensor([0.0]))) == pytest.approx(90.0)


def test_fit_kernel_pads_and_crops_centred():
    k = imagenet_c_kernel(5, 20.0, centered=True)  # wider than 41
    assert k.shape[0] > 41
    fitted = fit_kernel(k, 41)
    assert fitted.shape == (41, 41) and fitted.sum() == pytest.approx(1.0, abs=1e-5)
    small = fit_kernel(linear_kernel(5, 0.0), 41)
    assert small[20, 18:23].sum() == pytest.approx(1.0, abs=1e-5)


# --- the estimator ------------------------------------------------------------------------------
def test_estimator_outputs_kernels():
    model = build_estimator(TINY).eval()
    out = model(torch.rand(3, 1, 64, 64))
    assert out.shape == (3, 15, 15)
    assert (out >= 0).all() and torch.allclose(out.sum((1, 2)), torch.ones(3), atol=1e-5)
    with pytest.raises(ValueError, match="grey crops"):
        model(torch.rand(1, 3, 64, 64))


def test_estimator_and_generator_files_are_told_apart(tmp_path):
    from deblur.config import GeneratorConfig
    from deblur.models import build_generator

    est = save_estimator(build_estimator(TINY), TINY, tmp_path / "est.pt")
    model, cfg = load_estimator(est)
    assert cfg == TINY and not model.training
    gen = save_generator(build_generator(GeneratorConfig()), GeneratorConfig(), tmp_path / "gen.pt")
    with pytest.raises(ValueError, match="kernel estimator, not a deblurring generator"):
        load_generator(est)
    with pytest.raises(ValueError, match="generator .* not a kernel estimator"):
        load_estimator(gen)


# --- data ---------------------------------------------------------------------------------------
def _cfg(photo_dir, tmp_path, **kw):
    over = [f"sources=[{photo_dir}/*.jpg]", "crop=48", "batch_size=4", "val_crops=8", "val_every=2", "save_every=2",
            "log_every=1", "warmup_steps=1", "recon_start=1", "steps=4", "ema=0.5", "preload_size=0",
            "train_bounds=[0.0, 1.0]", "val_bounds=[0.0, 1.0]", f"project={tmp_path}", "name=k",
            "model={kernel_size: 15, width_mult: 0.25, depth: 7, hidden: 16}"]
    return load_config(KernelTrainConfig, None, over + [f"{k}={v}" for k, v in kw.items()])


def test_crops_are_blurred_by_their_kernel(photo_dir, tmp_path):
    cfg = _cfg(photo_dir, tmp_path, **{"blur.noise_prob": 0.0, "blur.jpeg_prob": 0.0})
    crops = KernelCrops(cfg, (0.0, 1.0))
    batch = crops.batch(np.random.default_rng(0), 6)
    assert batch["blur"].shape == (6, 1, 48, 48) and batch["kernel"].shape == (6, 15, 15)
    assert torch.allclose(batch["kernel"].sum((1, 2)), torch.ones(6), atol=1e-5)
    for i in range(6):  # re-blur the sharp crop's interior with the kernel: it must match the blurred crop
        sharp, blur, k = batch["sharp"][i, 0].numpy(), batch["blur"][i, 0].numpy(), batch["kernel"][i].numpy()
        again = apply_kernel(sharp, k)
        inner = (slice(8, -8), slice(8, -8))
        assert np.abs(again[inner] - blur[inner]).mean() < 0.01, batch["kinds"][i]
    assert batch["blur"].std() > 0.01


# --- training -----------------------------------------------------------------------------------
def test_training_writes_checkpoints_and_resumes_exactly(photo_dir, tmp_path):
    first = KernelTrainer(_cfg(photo_dir, tmp_path))
    first.fit()
    run = tmp_path / "k"
    assert {"last.pt", "best.pt", "config.yaml", "val.jsonl"} <= {p.name for p in run.iterdir()}
    lines = [json.loads(x) for x in (run / "val.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2, 4] and math.isfinite(lines[-1]["clean/psnr_pred"])
    assert math.isfinite(lines[-1]["clean/kernel_shape_shake"]) and 0.0 <= lines[-1]["clean/kernel_shape_shake"] <= 1.0
    grid = first._kernel_grid()  # TensorBoard's kernel image: true kernels over the estimates
    assert grid is not None and grid.shape[0] == 1 and grid.shape[1] == 2 * 15 and float(grid.max()) == pytest.approx(1.0)

    # 6 steps in one go, against 3 steps, Ctrl-C (last.pt is saved on the way out), resume, 3 more: the same weights
    straight = KernelTrainer(_cfg(photo_dir, tmp_path, name="straight", steps=6))
    straight.fit()
    stopped = KernelTrainer(_cfg(photo_dir, tmp_path, name="stopped", steps=6))
    step = stopped.train_step

    def interrupt_after_3(batch):
        if stopped.step == 3:
            raise KeyboardInterrupt
        return step(batch)

    stopped.train_step = interrupt_after_3
    with pytest.raises(KeyboardInterrupt):
        stopped.fit()
    resumed = KernelTrainer(_cfg(photo_dir, tmp_path, name="stopped", steps=6), resume=True)
    assert resumed.step == 3
    resumed.fit()
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    out = resumed.export(tmp_path / "exported.pt", which="last.pt")
    model, cfg_loaded = load_estimator(out)
    assert cfg_loaded.kernel_size == 15


def test_resume_refuses_another_model(photo_dir, tmp_path):
    KernelTrainer(_cfg(photo_dir, tmp_path, steps=1)).fit()
    with pytest.raises(ValueError, match="differs"):
        KernelTrainer(_cfg(photo_dir, tmp_path, **{"model.hidden": 32}), resume=True)


# --- KernelDeblurrer ----------------------------------------------------------------------------
def _blurred(photo_bgr, kernel):
    return apply_kernel(photo_bgr, kernel)


@pytest.mark.parametrize("kernel", [fit_kernel(linear_kernel(11, 30.0), 31), fit_kernel(shake_kernel(3, 7), 31)],
                         ids=["linear", "shake"])
def test_true_kernel_restores(photo_bgr, kernel):
    blurred = _blurred(photo_bgr, kernel)
    (restored,) = KernelDeblurrer(OracleEstimator(kernel), device="cpu")([blurred])
    m = 16
    inner = (slice(m, -m), slice(m, -m))
    assert psnr(restored[inner], photo_bgr[inner]) > psnr(blurred[inner], photo_bgr[inner]) + 3.0


def test_deconvolution_keeps_the_frames_position_by_default(photo_bgr):
    # The estimator's kernel off centre by 0.4 px (what whole-pixel centring leaves): by default (center) the
    # deblurred frame stays where the blurred one is, closer to the sharp frame than with center=False.
    kernel = fit_kernel(linear_kernel(11, 30.0), 31)
    off = (0.6 * kernel + 0.4 * np.roll(kernel, 1, 1)).astype(np.float32)
    blurred = _blurred(photo_bgr, kernel)
    inner = (slice(16, -16), slice(16, -16))
    restored = {}
    for center in (None, True, False):  # None: the default
        options = {} if center is None else {"center": center}
        deblurrer = KernelDeblurrer(OracleEstimator(off), device="cpu", refine=RefineConfig(iters=0), **options)
        (restored[center],) = deblurrer([blurred])
    assert np.array_equal(restored[None], restored[True])
    assert psnr(restored[True][inner], photo_bgr[inner]) > psnr(restored[False][inner], photo_bgr[inner]) + 0.5


def test_gating_passes_sharp_frames_through(photo_bgr):
    delta = fit_kernel(np.ones((1, 1), np.float32), 31)
    deblurrer = KernelDeblurrer(OracleEstimator(delta), device="cpu")
    (out,) = deblurrer([photo_bgr])
    assert np.array_equal(out, photo_bgr)
    assert bool(deblurrer.last_gated.all())


def test_nonfinite_kernel_passes_through_and_is_counted(photo_bgr, caplog):
    nan = np.full((31, 31), np.nan, np.float32)
    deblurrer = KernelDeblurrer(OracleEstimator(nan), device="cpu")
    blurred = _blurred(photo_bgr, linear_kernel(9, 0.0))
    out = deblurrer([blurred, blurred])
    assert all(np.array_equal(o, blurred) for o in out)
    assert deblurrer.nonfinite == 2 and "not finite" in caplog.text


def test_frames_smaller_than_the_shipped_kernel_are_deblurred_padded(photo_bgr, caplog):
    """The shipped estimator's kernels are 41 taps: a 36x64 frame (--deblur-size 64 on a 640x360 clip), a 24x32 image
    and an 8x10 frame are valid input. They are deblurred padded and cropped back, counted, and logged once."""
    caplog.set_level(logging.INFO, logger="deblur")
    deblurrer = KernelDeblurrer(device="cpu")  # deblur/weights/kernel_estimator.pt
    assert deblurrer.kernel_size == 41
    blurred = _blurred(photo_bgr, linear_kernel(9, 30.0))
    for h, w in ((36, 64), (24, 32), (8, 10)):
        small = np.ascontiguousarray(blurred[:h, :w])
        (out,) = deblurrer([small])
        assert out.shape == small.shape and out.dtype == np.uint8
    assert deblurrer.counters()["small_frames"] == 3
    assert len([r for r in caplog.records if "smaller than" in r.getMessage()]) == 1  # logged once


def test_a_small_frame_is_restored_like_its_padded_copy(photo_bgr):
    """A frame smaller than the kernel is deconvolved as its padded copy is: the true 31-tap kernel sharpens a 24x40
    crop of a blurred photo (compared inside the crop's borders)."""
    kernel = fit_kernel(linear_kernel(7, 0.0), 31)
    blurred = _blurred(photo_bgr, kernel)
    crop = (slice(100, 124), slice(100, 140))
    small, sharp = np.ascontiguousarray(blurred[crop]), photo_bgr[crop]
    (restored,) = KernelDeblurrer(OracleEstimator(kernel), device="cpu")([small])
    inner = (slice(4, -4), slice(6, -6))
    assert psnr(restored[inner], sharp[inner]) > psnr(small[inner], sharp[inner]) + 1.0


def _kernel_of(deblurrer, frame):
    deblurrer([frame])
    return deblurrer.last_kernels[0].clone()


def test_temporal_smoothing_is_the_configured_ema_and_resets(photo_bgr):
    """k_t = (1 - a) k_new + a k_{t-1}: between the previous and the new kernel, the exact mix, carried on frame by
    frame; a new frame size (a new input) and reset() start over from the unsmoothed estimate."""
    h_line, v_line = (torch.from_numpy(fit_kernel(linear_kernel(11, a), 31)) for a in (0.0, 90.0))
    a = 0.3
    deblurrer = KernelDeblurrer(OracleEstimator(h_line.numpy()), device="cpu", temporal=a, refine=RefineConfig(iters=0))
    assert torch.allclose(_kernel_of(deblurrer, photo_bgr), h_line, atol=1e-6)  # nothing to smooth with yet
    deblurrer.estimator.kernel.copy_(v_line)
    k2 = _kernel_of(deblurrer, photo_bgr)
    assert torch.allclose(k2, (1 - a) * v_line + a * h_line, atol=1e-6)
    assert float(k2[15, 10]) == pytest.approx(a * float(h_line[15, 10]), rel=1e-4)  # the horizontal line fades
    assert float(k2[10, 15]) == pytest.approx((1 - a) * float(v_line[10, 15]), rel=1e-4)  # the vertical one comes in
    assert bool(((k2 >= torch.minimum(h_line, v_line) - 1e-7) & (k2 <= torch.maximum(h_line, v_line) + 1e-7)).all())
    k3 = _kernel_of(deblurrer, photo_bgr)
    assert torch.allclose(k3, (1 - a) * v_line + a * k2, atol=1e-6)  # an EMA, not a mean of the last two
    deblurrer.estimator.kernel.copy_(h_line)
    assert torch.allclose(_kernel_of(deblurrer, photo_bgr[:200]), h_line, atol=1e-6)  # new size: no carry-over
    deblurrer.estimator.kernel.copy_(v_line)
    deblurrer.reset()
    assert torch.allclose(_kernel_of(deblurrer, photo_bgr[:200]), v_line, atol=1e-6)


def test_warm_up_leaves_no_kernel_for_the_smoother(photo_bgr):
    """The warm-up frame's kernel does not become the first real frame's previous kernel."""
    h_line, v_line = (fit_kernel(linear_kernel(11, a), 31) for a in (0.0, 90.0))
    deblurrer = KernelDeblurrer(OracleEstimator(h_line), device="cpu", temporal=0.5, refine=RefineConfig(iters=0))
    deblurrer.warmup(*photo_bgr.shape[:2])
    deblurrer.estimator.kernel.copy_(torch.from_numpy(v_line))
    assert torch.allclose(_kernel_of(deblurrer, photo_bgr), torch.from_numpy(v_line), atol=1e-6)


def test_luma_mode_restores_too(photo_bgr):
    kernel = fit_kernel(linear_kernel(11, 30.0), 31)
    blurred = _blurred(photo_bgr, kernel)
    (restored,) = KernelDeblurrer(OracleEstimator(kernel), device="cpu", channels="luma")([blurred])
    inner = (slice(16, -16), slice(16, -16))
    assert psnr(restored[inner], photo_bgr[inner]) > psnr(blurred[inner], photo_bgr[inner]) + 2.0


@pytest.mark.parametrize("channels", ["rgb", "luma"])
def test_gamma_deconvolves_in_the_light_the_blur_happened_in(photo_bgr, channels):
    """Blur rendered in linear light (as a camera's) is undone better with gamma 2.2 (deconvolving the decoded values)
    than on the stored values, and blur of the stored values (as ImageNet-C's) the other way round; the true kernel,
    unrefined, so that only the deconvolution's domain differs."""
    kernel = fit_kernel(linear_kernel(11, 30.0), 31)
    inner = (slice(16, -16), slice(16, -16))
    for linear in (True, False):
        blurred = apply_kernel(photo_bgr, kernel, linear=linear)
        score = {}
        for gamma in (1.0, 2.2):
            deblurrer = KernelDeblurrer(OracleEstimator(kernel), device="cpu", channels=channels, gamma=gamma,
                                        refine=RefineConfig(iters=0))
            (restored,) = deblurrer([blurred])
            score[gamma] = psnr(restored[inner], photo_bgr[inner])
        best, other = (2.2, 1.0) if linear else (1.0, 2.2)
        assert score[best] > score[other] + 1.0, (linear, score)
    x = torch.from_numpy(blurred[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255
    with pytest.raises(ValueError, match="gamma must be 1 with a residual"):  # a refiner's input: stored values only
        deblurrer.restore(x, residual=True)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_estimator_runs_on_the_fast_runtimes(runtime, photo_bgr, tmp_path):
    model = build_estimator(TINY).eval()
    ref = KernelDeblurrer(model, device="cpu")
    fast = KernelDeblurrer(model, device="cpu", runtime=runtime, threads=1, cache_dir=tmp_path)
    x = torch.from_numpy(photo_bgr[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255
    assert fast.engine is not None
    # OpenVINO runs the estimator in bf16 where the CPU has it natively (its 'auto'), else fp32, as the others do
    native = runtime == "openvino" and resolve_precision("auto", "openvino", "cpu") == "bf16"
    assert fast.engine.precision == ("bf16" if native else "fp32")
    a, b = ref.estimate(x), fast.estimate(x)
    if fast.engine.precision == "fp32":
        assert torch.allclose(a, b, atol=1e-5)
    else:  # bf16 keeps the kernel's shape: a relative tolerance on each tap, the moments to a hundredth of a pixel
        assert torch.allclose(a, b, rtol=2e-2, atol=1e-6)
        assert torch.allclose(kernel_moments(a), kernel_moments(b), atol=1e-2)


def test_a_bundled_refiner_runs_after_the_deconvolution(photo_bgr, tmp_path):
    from deblur.config import GeneratorConfig
    from deblur.models import build_generator, load_refiner

    ref_cfg = GeneratorConfig(in_channels=6, zero_init_last=False)
    refiner = build_generator(ref_cfg).eval()
    est = build_estimator(TINY).eval()
    with pytest.raises(ValueError, match="6 channels"):
        save_estimator(est, TINY, tmp_path / "bad.pt", refiner=(build_generator(GeneratorConfig()), GeneratorConfig()))
    plain = save_estimator(est, TINY, tmp_path / "plain.pt")
    bundled = save_estimator(est, TINY, tmp_path / "bundled.pt", refiner=(refiner, ref_cfg))
    assert load_refiner(plain) is None and load_refiner(bundled)[1].in_channels == 6
    blurred = _blurred(photo_bgr, linear_kernel(9, 45.0))
    kw = {"device": "cpu", "gate_px": 0.0}  # deconvolve whatever the (untrained) estimator says
    (a,) = KernelDeblurrer(plain, **kw)([blurred])
    (b,) = KernelDeblurrer(bundled, **kw)([blurred])
    (c,) = KernelDeblurrer(bundled, refiner="none", **kw)([blurred])
    assert np.array_equal(a, c) and np.abs(a.astype(int) - b).mean() > 1.0


def _square(path, side=384):
    img = cv2.imread(str(path))
    h, w = img.shape[:2]
    s = min(h, w)
    return cv2.resize(img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s], (side, side),
                      interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize("name, angle", [("zidane.jpg", 30.0), ("bus.jpg", 120.0)])
def test_the_shipped_estimator_finds_a_real_blur(name, angle):
    """The committed weights, loaded as users load them, on photos they never saw: Ultralytics' zidane.jpg and
    bus.jpg are evaluation photos (scripts/fetch_data.py puts them in data/eval and checks that no eval file is in the
    training corpus). A 15 px linear blur is found (angle within 10°, measured <= 5°; length within 30 %, measured
    within 15 %), the frame comes out at least 0.4 dB sharper (measured 1.0 and 1.2 dB), and the sharp photo is
    left exactly as it is."""
    from detect.assets import ultralytics_asset

    deblurrer = KernelDeblurrer(device="cpu")  # deblur/weights/kernel_estimator.pt
    big = _square(ultralytics_asset(name))
    blurred = apply_kernel(big, linear_kernel(15, angle))
    (restored,) = deblurrer([blurred])
    m = kernel_moments(deblurrer.last_kernels)
    assert float(angle_error(moment_angle(m), torch.tensor([angle]))) < 10.0
    assert 0.7 * 15 < float(kernel_extent(m)) < 1.3 * 15
    inner = (slice(24, -24), slice(24, -24))
    assert psnr(restored[inner], big[inner]) > psnr(blurred[inner], big[inner]) + 0.4
    (same,) = deblurrer([big])
    assert np.array_equal(same, big) and bool(deblurrer.last_gated.all())


def test_bad_frames_are_named(photo_bgr):
    deblurrer = KernelDeblurrer(OracleEstimator(fit_kernel(linear_kernel(5, 0.0), 15)), device="cpu")
    with pytest.raises(ValueError, match=r"frame 1: expected an \(H,W,3\) BGR uint8"):
        deblurrer([photo_bgr, photo_bgr[..., 0]])


def test_a_kernel_aware_refiner_sees_what_the_trainer_gives_it(photo_bgr, tmp_path):
    """in_channels 7: [blurred, deconvolved, 2 * (y - k*x)] on [-1,1], exactly as the trainer stacks it
    (deblur.train.gan_trainer.Trainer._to_device), and the residual is y less the deconvolution blurred again."""
    from deblur.config import GeneratorConfig
    from deblur.models import build_generator, save_generator

    cfg = GeneratorConfig(in_channels=7)
    path = tmp_path / "ref7.pt"
    save_generator(build_generator(cfg).eval(), cfg, path)
    kd = KernelDeblurrer(build_estimator(TINY).eval(), device="cpu", gate_px=0.0, refiner=str(path))
    seen = []

    class Recorder(torch.nn.Module):
        in_channels = 7

        def forward(self, x):
            seen.append(x.clone())
            return x[:, 3:6]

    x = torch.from_numpy(_blurred(photo_bgr, linear_kernel(9, 45.0))[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255
    kd.refiner = None
    deconv, res = kd.restore(x, residual=True)
    kd.refiner = Recorder()
    out = kd.restore(x)
    (inp,) = seen
    torch.testing.assert_close(inp[:, :3], x * 2 - 1)
    torch.testing.assert_close(inp[:, 3:6], deconv * 2 - 1)
    torch.testing.assert_close(inp[:, 6:], res * 2)
    torch.testing.assert_close(out, deconv)
    assert res.abs().mean() > 1e-3


def test_the_refiner_runs_on_the_fast_runtime(photo_bgr, tmp_path):
    from deblur.config import GeneratorConfig
    from deblur.models import build_generator

    torch.manual_seed(0)
    ref_cfg = GeneratorConfig(name="fpn_mobilenet_v2_dsc", in_channels=7, zero_init_last=False)
    refiner = build_generator(ref_cfg).eval()
    with torch.no_grad():
        refiner.final.weight.mul_(0.05)  # a gentle residual, as a trained refiner's
    bundled = save_estimator(build_estimator(TINY).eval(), TINY, tmp_path / "bundled.pt", refiner=(refiner, ref_cfg))
    blurred = _blurred(photo_bgr, linear_kernel(9, 45.0))
    kw = {"device": "cpu", "gate_px": 0.0}
    slow = KernelDeblurrer(bundled, **kw)
    fast = KernelDeblurrer(bundled, runtime="openvino", threads=1, cache_dir=tmp_path, **kw)
    plain = KernelDeblurrer(bundled, refiner="none", **kw)
    assert slow.refiner_engine is None and fast.refiner_engine is not None
    (a,), (b,), (c,) = slow([blurred]), fast([blurred]), plain([blurred])
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.mean() < 1.0 and np.abs(a.astype(int) - c).mean() > 2 * diff.mean()  # bf16 or fp32: the same refiner
    # refiner "auto" (the pipeline's): the bundled refiner on CUDA only; on this CPU, the plain deconvolution
    auto = KernelDeblurrer(bundled, refiner="auto", **kw)
    assert auto.refiner is None and slow.refiner is not None
    assert np.array_equal(auto([blurred])[0], c)


def test_work_side_estimates_at_full_resolution_and_deconvolves_a_copy(photo_bgr):
    """work_side: the kernel comes from the full-resolution frame (the oracle's 21 px line), the copy is deconvolved
    with that kernel scaled to it (21 px -> ~10.5 px at half size), and it comes out sharper than the blurred copy
    by about as much as deconvolving the copy with its true kernel does; the uint8 interface gives the input's size,
    and a sharp frame stays exactly as it was."""
    kernel = fit_kernel(linear_kernel(21, 30.0), 31)
    big = cv2.resize(photo_bgr, (512, 512), interpolation=cv2.INTER_CUBIC)
    blurred = _blurred(big, kernel)
    deblurrer = KernelDeblurrer(OracleEstimator(kernel), device="cpu", work_side=256, refine=RefineConfig(iters=0))
    x = torch.from_numpy(blurred[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255.0
    y = deblurrer.restore(x)
    assert tuple(y.shape[-2:]) == (256, 256) and deblurrer.last_kernels.shape[-1] == 17  # 31 px canvas at half size
    assert 9.0 < float(kernel_extent(kernel_moments(deblurrer.last_kernels))) < 12.5
    small_sharp = cv2.resize(big, (256, 256), interpolation=cv2.INTER_AREA)
    small_blurred = cv2.resize(blurred, (256, 256), interpolation=cv2.INTER_AREA)
    restored = (y[0].permute(1, 2, 0).numpy()[..., ::-1] * 255.0).round().clip(0, 255).astype(np.uint8)
    (oracle,) = KernelDeblurrer(OracleEstimator(fit_kernel(linear_kernel(10.5, 30.0), 17)), device="cpu")([small_blurred])
    inner = (slice(12, -12), slice(12, -12))
    gain = psnr(restored[inner], small_sharp[inner]) - psnr(small_blurred[inner], small_sharp[inner])
    oracle_gain = psnr(oracle[inner], small_sharp[inner]) - psnr(small_blurred[inner], small_sharp[inner])
    assert gain > 3.0 and gain > oracle_gain - 1.0
    (out,) = deblurrer([blurred])
    assert out.shape == blurred.shape and psnr(out[inner], big[inner]) > psnr(blurred[inner], big[inner]) + 2.0
    delta = fit_kernel(np.ones((1, 1), np.float32), 31)
    (same,) = KernelDeblurrer(OracleEstimator(delta), device="cpu", work_side=256)([big])
    assert np.array_equal(same, big)


def test_a_copy_shrunk_from_uint8_restores_as_the_float_frame_does():
    """On a CPU the uint8 interface (and the pipeline) shrink the work-size copy from the uint8 frame and estimate on
    its luma: the copy is torch's antialiased bilinear of the float frame to within one grey level, the kernels are
    the float path's, and so is the deconvolved copy, but for the copy's rounding: deconvolving every channel amplifies
    it (here to 1.4 grey levels on average), deconvolving the luma (the pipeline's) starts from the float luma of the
    full frame, shrunk, and does not."""
    import torch.nn.functional as F

    from deblur.frames import shrink_bgr
    from deblur.kernel_deblur import luma, luma_bgr

    big = np.ascontiguousarray(skdata.astronaut()[..., ::-1])  # 512x512 BGR
    blurred = _blurred(big, fit_kernel(shake_kernel(3, 0), 31))
    x = torch.from_numpy(blurred[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255.0
    copy = shrink_bgr(blurred, (200, 200))
    expect = F.interpolate(x, size=(200, 200), mode="bilinear", antialias=True, align_corners=False)
    got = torch.from_numpy(copy[..., ::-1].astype(np.float32)).permute(2, 0, 1)[None] / 255.0
    assert copy.dtype == np.uint8 and copy.shape == (200, 200, 3)
    assert float((got - expect).abs().max()) <= 1.0 / 255 + 1e-6
    assert float((luma_bgr([blurred]) - luma(x)).abs().max()) < 1e-6
    start = fit_kernel(shake_kernel(3, 0), 31)
    for channels, tol in (("rgb", 2.0), ("luma", 0.5)):
        outs, kernels = [], []
        for grey in (None, luma_bgr([blurred])):
            d = KernelDeblurrer(OracleEstimator(start), device="cpu", work_side=200, channels=channels,
                                refine=RefineConfig(iters=2))
            outs.append(d.restore(x) if grey is None else d.restore(got, grey=grey))
            kernels.append(d.last_kernels)
        assert outs[0].shape == outs[1].shape == (1, 3, 200, 200)
        assert float((kernels[0] - kernels[1]).abs().max()) < 1e-3 * float(kernels[0].max())
        diff = float((outs[0] - outs[1]).abs().mean()) * 255
        assert diff < tol, (channels, diff)
    # the uint8 interface takes this path with luma: the copy back at the work size, a sharp frame untouched
    d = KernelDeblurrer(OracleEstimator(start), device="cpu", work_side=200, channels="luma", refine=RefineConfig(iters=2))
    (small,) = d([blurred], full_size=False)
    expect = (outs[1][0].permute(1, 2, 0).numpy()[..., ::-1] * 255.0).round().clip(0, 255).astype(np.uint8)
    assert small.shape == (200, 200, 3) and np.abs(small.astype(int) - expect).max() <= 1
    delta = fit_kernel(np.ones((1, 1), np.float32), 31)
    (same,) = KernelDeblurrer(OracleEstimator(delta), device="cpu", work_side=200, channels="luma")([big], full_size=False)
    assert np.array_equal(same, big)


def test_work_side_refines_the_kernel_at_full_resolution():
    """work_refine full (the default): the kernel is refined on the full-resolution frame, where the blur has its
    detail, and then scaled to the copy; refined on the copy instead, it stays two to three times further from the
    true kernel (shape error against the true kernel at the copy's scale, camera shake, started from a blurred guess)."""
    from deblur.kernel_refine import resize_kernels, shape_error

    big = np.ascontiguousarray(skdata.astronaut()[..., ::-1])  # 512x512, its own detail
    for seed in (0, 1):
        true = fit_kernel(shake_kernel(3, seed), 31)
        start = fit_kernel(cv2.GaussianBlur(true, (0, 0), 2.0), 31)
        x = torch.from_numpy(_blurred(big, true)[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255.0
        errors = {}
        for where in ("work", "full"):
            deblurrer = KernelDeblurrer(OracleEstimator(start), device="cpu", work_side=256, work_refine=where,
                                        refine=RefineConfig(iters=5))
            assert tuple(deblurrer.restore(x).shape[-2:]) == (256, 256)
            k = deblurrer.last_kernels
            errors[where] = float(shape_error(k, resize_kernels(torch.from_numpy(true)[None], k.shape[-1], 0.5))[0])
        assert errors["full"] < 0.7 * errors["work"], errors


def test_work_side_is_checked():
    with pytest.raises(ValueError, match="work_side"):
        KernelDeblurrer(OracleEstimator(fit_kernel(np.ones((1, 1), np.float32), 31)), device="cpu", work_side=16)


def test_refined_kernels_get_their_own_balance(photo_bgr):
    """A frame whose kernel was refined is deconvolved with ``balance``, one with the network's kernel alone with
    ``network_balance`` (the same frame and kernel in one batch, flagged differently, come out as Wiener with each)."""
    from deblur.deconv import wiener_deconvolve
    from deblur.kernel_deblur import luma

    kernel = fit_kernel(linear_kernel(11, 30.0), 31)
    deblurrer = KernelDeblurrer(OracleEstimator(kernel), device="cpu", balance=2e-3, network_balance=3e-2,
                                channels="luma")
    x = torch.from_numpy(_blurred(photo_bgr, kernel)[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255.0
    k = torch.from_numpy(kernel)[None]
    out, _ = deblurrer._deconvolve(torch.cat([x, x]), k.expand(2, -1, -1), False, 1.0, torch.tensor([True, False]))
    grey = luma(x)
    for i, balance in enumerate((2e-3, 3e-2)):
        want = (x + (wiener_deconvolve(grey, k, balance=balance, center=True) - grey)).clamp(0, 1)
        assert torch.allclose(out[i : i + 1], want, atol=1e-5)
    assert not torch.allclose(out[0], out[1], atol=1e-3)
