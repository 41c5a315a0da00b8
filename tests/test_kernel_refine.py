"""Closed-form kernel refinement (deblur.kernel_refine) on real photos blurred by kernels we know."""

import dataclasses
import numpy as np
import pytest
import torch
from skimage import data as skdata

from deblur.data.blur_synth import apply_kernel, linear_kernel, shake_kernel
from deblur.archs.kernel_arch import kernel_moments
from deblur.kernel_deblur import luma
from deblur.kernel_refine import (RefineConfig, _gradients, center_kernels, overshoot, refine_kernels, resize_kernels,
                                  rmap, scaled_start, shape_error)


def _grey(img_rgb: np.ndarray) -> torch.Tensor:
    return luma(torch.from_numpy(np.ascontiguousarray(img_rgb)).float().permute(2, 0, 1)[None] / 255.0)


def _blob(size: int = 41, sigma: float = 4.0) -> torch.Tensor:
    d = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(d[:, None] ** 2 + d[None] ** 2) / (2 * sigma**2))
    return (g / g.sum())[None]


def test_shape_error_ignores_shifts_and_sees_shapes():
    line = torch.from_numpy(linear_kernel(15, 30.0))[None]
    line41 = resize_kernels(line, 41)
    shifted = torch.roll(line41, shifts=(3, -2), dims=(1, 2))
    assert float(shape_error(line41, line41)) < 1e-4
    assert float(shape_error(shifted, line41)) < 1e-4
    assert float(shape_error(_blob(), line41)) > 0.3  # a diffuse blob is not a thin line
    across = resize_kernels(torch.from_numpy(linear_kernel(15, 120.0))[None], 41)
    assert float(shape_error(across, line41)) > 0.3  # nor is a line at another angle


def test_resize_and_center_keep_mass_and_move_the_centre():
    k = resize_kernels(torch.from_numpy(shake_kernel(3, 7))[None], 41)
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-5) and float(k.min()) >= 0
    off = torch.zeros(1, 41, 41)
    off[0, 10, 30] = 1.0  # all the mass 10 px above and 10 px right of the centre
    c = center_kernels(off)
    assert float(c[0, 20, 20]) == pytest.approx(1.0)
    big = resize_kernels(k, 61)  # zero-padded, same shape
    assert float(shape_error(big, resize_kernels(k, 61))) < 1e-4 and big.shape == (1, 61, 61)
    half = resize_kernels(k, 21, 0.5)
    assert float(half.sum()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("kernel,rmap_side", [("line", 0), ("shake", 0), ("shake", 3)])
def test_refinement_turns_a_blob_into_the_true_shape(kernel, rmap_side):
    """Started from a blob (what the network paints for shake), the refined kernel is far closer to the truth."""
    img = skdata.astronaut()[::2, ::2]  # 256 x 256 real photo
    true = linear_kernel(17, 35.0) if kernel == "line" else shake_kernel(3, 11)
    blurred = apply_kernel(img, true)
    truth = resize_kernels(torch.from_numpy(true)[None], 41)
    start = _blob()
    refined, ok = refine_kernels(_grey(blurred), start, RefineConfig(iters=10, levels=3, shock_steps=1, beta=0.03,
                                                                    balance=2.0e-3, starts=(1.0,), rmap=rmap_side))
    before, after = float(shape_error(start, truth)), float(shape_error(refined, truth))
    assert bool(ok[0])
    assert after < 0.6 * before, (before, after)
    assert float(refined.sum()) == pytest.approx(1.0, abs=1e-4) and float(refined.min()) >= 0


def _spread(k: torch.Tensor) -> tuple[float, float, float]:
    """(variance along x, along y, covariance) of a (k,k) kernel."""
    return tuple(float(v) for v in kernel_moments(k[None])[0, 2:])


def test_starts_are_the_kernel_scaled_or_a_gaussian_as_wide_without_its_direction():
    line = resize_kernels(torch.from_numpy(linear_kernel(15, 30.0))[None], 41)
    assert scaled_start(line, 1.0) is line
    vx, vy, _ = _spread(line[0])
    vx2, vy2, _ = _spread(scaled_start(line, 2.0)[0])
    assert (vx2 + vy2) ** 0.5 == pytest.approx(2 * (vx + vy) ** 0.5, rel=0.1)
    ix, iy, cov = _spread(scaled_start(line, 0.0)[0])
    assert ix == pytest.approx(iy, rel=1e-3) and abs(cov) < 1e-3  # no direction left
    assert (ix + iy) ** 0.5 == pytest.approx((vx + vy) ** 0.5 / 2 ** 0.5, rel=0.1)  # half the spread in x and in y
    with pytest.raises(ValueError, match="refine.starts"):
        RefineConfig(starts=(1.0, -0.5))
    with pytest.raises(ValueError, match="refine.starts"):
        RefineConfig(starts=())


def test_a_wrong_kernel_overshoots_the_frames_range_more_than_the_true_one():
    img = skdata.astronaut()[::2, ::2]
    grey = _grey(apply_kernel(img, linear_kernel(17, 35.0)))
    truth = resize_kernels(torch.from_numpy(linear_kernel(17, 35.0))[None], 41)
    turned = resize_kernels(torch.from_numpy(linear_kernel(17, 80.0))[None], 41)
    long = resize_kernels(torch.from_numpy(linear_kernel(31, 35.0))[None], 41)
    batch = grey.expand(3, -1, -1, -1)
    over = overshoot(batch, torch.cat([truth, turned, long]), 1e-2)
    assert float(over[0]) < 0.5 * float(over[1]) and float(over[0]) < 0.5 * float(over[2]), over
    # the frame's own range, not [0, 1]: the same on a frame at a tenth of the contrast
    dim = overshoot(0.4 + 0.1 * batch, torch.cat([truth, turned, long]), 1e-2)
    assert torch.allclose(dim, over, rtol=0.05, atol=1e-5), (dim, over)


def test_several_starts_keep_the_refined_kernel_that_overshoots_least():
    img = skdata.coffee()[::2, ::2]
    true = shake_kernel(4, 11)
    grey = _grey(apply_kernel(img, true)).expand(2, -1, -1, -1).contiguous()
    start = torch.stack([_blob(41, 2.0)[0], resize_kernels(torch.from_numpy(linear_kernel(15, 125.0))[None], 41)[0]])
    cfg = RefineConfig(iters=3, levels=2, starts=(1.0,))  # each start on its own
    one = {f: refine_kernels(grey, scaled_start(start, f), cfg)[0] for f in (1.0, 2.0, 0.0)}
    both, ok = refine_kernels(grey, start, dataclasses.replace(cfg, starts=(1.0, 2.0, 0.0), pick_ratio=1.0))
    assert ok.all()
    over = torch.stack([overshoot(grey, one[f], cfg.pick_balance) for f in one], 1)  # (2 frames, 3 starts)
    for i in range(2):
        picked = list(one)[int(over[i].argmin())]
        assert torch.allclose(both[i], one[picked][i], atol=1e-5), (i, picked, over[i])
    assert (over.amax(1) > 1.01 * over.amin(1)).all()  # the starts' kernels differ: the pick is not a tie
    assert not torch.allclose(both, one[1.0], atol=1e-5)  # another start's kernel won somewhere
    # with pick_ratio, another start must overshoot clearly less than the first to replace it
    ratio = min(1.0, max(0.01, float((over[:, 1:].amin(1) / over[:, 0].clamp_min(1e-12)).amin()) * 0.99))
    first, _ = refine_kernels(grey, start, dataclasses.replace(cfg, starts=(1.0, 2.0, 0.0), pick_ratio=ratio))
    assert torch.allclose(first, one[1.0], atol=1e-5)
    with pytest.raises(ValueError, match="refine.pick_ratio"):
        RefineConfig(pick_ratio=0.0)


def test_a_frame_too_small_to_refine_keeps_the_first_start():
    """No pyramid level fits: no start is refined, so none is picked; the network's kernel comes back as it was."""
    start = resize_kernels(torch.from_numpy(linear_kernel(15, 30.0))[None], 41)
    grey = _grey(apply_kernel(skdata.astronaut()[:60, :60], linear_kernel(15, 30.0)))
    refined, ok = refine_kernels(grey, start, RefineConfig())
    assert len(RefineConfig().starts) > 1 and bool(ok[0])
    assert torch.allclose(refined, start, atol=1e-6)


def test_a_failed_refinement_falls_back_to_the_start():
    grey = torch.full((2, 1, 96, 96), float("nan"))
    grey[1] = 0.5  # flat: nothing to learn a kernel from
    start = _blob(21, 2.0).expand(2, -1, -1).clone()
    refined, ok = refine_kernels(grey, start, RefineConfig(iters=2, levels=2))
    assert not bool(ok[0])
    assert torch.allclose(refined[0], start[0], atol=1e-6)
    assert torch.isfinite(refined).all()


def test_zero_iterations_is_the_start_and_bad_options_are_refused():
    start = _blob(21, 2.0)
    refined, ok = refine_kernels(torch.rand(1, 1, 64, 64), start, RefineConfig(iters=0))
    assert torch.allclose(refined, start, atol=1e-6) and bool(ok[0])
    with pytest.raises(ValueError, match="refine.size"):
        RefineConfig(size=40)
    with pytest.raises(ValueError, match="refine.shock_dt"):
        RefineConfig(shock_dt=1.5)
    with pytest.raises(ValueError, match="refine_kernels expects"):
        refine_kernels(torch.rand(1, 3, 64, 64), start)


def test_the_deblurrer_with_refinement_restores_camera_shake_better():
    """The shipped estimator paints a blob for curved shake; refining it restores a real photo far better."""
    from deblur.kernel_deblur import KernelDeblurrer
    from deblur.metrics import psnr

    sharp = skdata.chelsea()  # 300 x 451 real photo
    blurred = apply_kernel(sharp, shake_kernel(3, 5))
    x = torch.from_numpy(np.ascontiguousarray(blurred)).permute(2, 0, 1)[None].float() / 255.0
    ref = torch.from_numpy(np.ascontiguousarray(sharp)).permute(2, 0, 1)[None].float() / 255.0
    gains = {}
    for iters in (0, 10):
        deblurrer = KernelDeblurrer(device="cpu", runtime="torch", refine=RefineConfig(iters=iters))
        out = deblurrer.restore(x)
        r = 24  # metrics skip the border, as deblur.evaluate does
        gains[iters] = float(psnr(out[..., r:-r, r:-r], ref[..., r:-r, r:-r], data_range=1.0)) - float(
            psnr(x[..., r:-r, r:-r], ref[..., r:-r, r:-r], data_range=1.0))
        assert deblurrer.counters()["refine_failed"] == 0 and deblurrer.last_kernels.shape == (1, 41, 41)
    assert gains[10] > gains[0] + 1.0, gains


def test_the_evaluation_compares_kernel_options_in_one_run():
    from configs import load_config
    from evaluation import EvalConfig

    cfg = load_config(EvalConfig, overrides=["deblur.compare={refined: est.pt refine.iters=7 gate_px=2.0}"])
    path, kernel = cfg.deblur.compare_entry("refined")
    assert path == "est.pt" and kernel.refine.iters == 7 and kernel.gate_px == 2.0
    assert cfg.deblur.kernel.refine.iters == 10 and cfg.deblur.kernel.gate_px == 3.0  # the run's own are untouched
    with pytest.raises(ValueError, match=r"deblur.compare.refined.*refine.iterz"):
        load_config(EvalConfig, overrides=["deblur.compare={refined: est.pt refine.iterz=7}"])


def test_deblur_evaluate_reports_the_kernel_shape_of_each_option_set(tmp_path):
    """python -m deblur.evaluate --options: a column per option set, and the kernel shape table (the default,
    refined, < the network's own kernel on camera shake, where the network paints a blob)."""
    import json

    from deblur.evaluate import main

    assert main(["--limit", "1", "--severities", "3", "--options", "refine.iters=0", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "report.json").read_text())
    shake = result["table"]["shake/3"]
    assert set(result["weights"]) == {"kernel_estimator", "kernel_estimator refine.iters=0"}
    assert shake["kernel_estimator"]["shape"] < shake["kernel_estimator refine.iters=0"]["shape"]
    assert "shape" not in shake["wiener"] and "Kernel shape error" in (tmp_path / "report.md").read_text()


def test_video_refinement_warm_starts_between_full_refinements():
    """refine.every=3: frame 1 is refined coarse to fine, frames 2-3 start from its kernel (one full-resolution
    iteration each) and stay on the true shape; frame 4 is refined in full again; reset() forgets it all."""
    from deblur.kernel_deblur import KernelDeblurrer

    sharp = skdata.chelsea()
    true = shake_kernel(3, 5)
    x = torch.from_numpy(np.ascontiguousarray(apply_kernel(sharp, true))).permute(2, 0, 1)[None].float() / 255.0
    truth = resize_kernels(torch.from_numpy(true)[None], 41)
    deblurrer = KernelDeblurrer(device="cpu", runtime="torch", refine=RefineConfig(iters=10, every=3, warm_iters=1,
                                                                                  starts=(1.0,)))
    errors, since = [], []
    for _ in range(4):
        deblurrer.restore(x)
        errors.append(float(shape_error(deblurrer.last_kernels, truth)))
        since.append(deblurrer._since)
    assert since == [1, 2, 3, 1]
    plain = KernelDeblurrer(device="cpu", runtime="torch", refine=RefineConfig(iters=0))
    plain.restore(x)
    blob = float(shape_error(plain.last_kernels, truth))
    assert max(errors) < 0.5 * blob, (errors, blob)
    deblurrer.reset()
    assert deblurrer._refined is None and deblurrer._since == 0


def test_background_refinement_reaches_the_warm_start_without_holding_up_a_frame():
    """refine.background: frame 1 hands its full refinement to the thread and gets one iteration from the network's
    kernel; once the refinement has finished, later frames warm-start from it and reach the synchronous video mode's
    shape; a frame never waits (its call returns before a full refinement could finish); close() ends the thread."""
    import time

    from deblur.kernel_deblur import KernelDeblurrer

    x = torch.from_numpy(np.ascontiguousarray(apply_kernel(skdata.chelsea(), shake_kernel(3, 5)))).permute(2, 0, 1)
    x = x[None].float() / 255.0
    truth = resize_kernels(torch.from_numpy(shake_kernel(3, 5))[None], 41)
    sync = KernelDeblurrer(device="cpu", runtime="torch", refine=RefineConfig(iters=10, every=4, starts=(1.0,)))
    sync.restore(x)
    full_error = float(shape_error(sync.last_kernels, truth))
    t0 = time.perf_counter()
    sync.restore(x)  # a warm frame, for the time of one
    warm_s = time.perf_counter() - t0
    back = KernelDeblurrer(device="cpu", runtime="torch", refine=RefineConfig(iters=10, every=4, background=True,
                                                                             starts=(1.0,)))
    back.restore(x)
    assert back._job is not None and back._refined is None  # handed over, nothing finished yet
    back._job[0].result()  # (the test waits for it; the pipeline does not)
    t0 = time.perf_counter()
    back.restore(x)  # adopts the finished refinement and warm-starts from it
    assert time.perf_counter() - t0 < 3 * warm_s + 0.05
    assert back._refined is not None and back._job is None
    error = float(shape_error(back.last_kernels, truth))
    assert error < full_error + 0.05, (error, full_error)
    back.restore(x), back.restore(x), back.restore(x)
    assert back._job is not None  # every 4 frames the next one goes to the thread
    back.close()
    assert back._pool is None and back._job is None


def test_a_background_refinement_that_raises_is_counted_and_the_stream_goes_on(monkeypatch):
    import threading

    import deblur.kernel_deblur as kd

    real = kd.refine_kernels

    def broken_in_the_thread(*args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("simulated failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(kd, "refine_kernels", broken_in_the_thread)
    x = torch.from_numpy(np.ascontiguousarray(apply_kernel(skdata.chelsea(), shake_kernel(3, 5)))).permute(2, 0, 1)
    x = x[None].float() / 255.0
    deblurrer = kd.KernelDeblurrer(device="cpu", runtime="torch", refine=RefineConfig(iters=2, every=4, background=True))
    deblurrer.restore(x)
    assert isinstance(deblurrer._job[0].exception(), RuntimeError)  # (waits for it)
    out = deblurrer.restore(x)  # reads the failed job: counted, not raised
    assert deblurrer.counters()["refine_failed"] == 1 and torch.isfinite(out).all()
    assert deblurrer._refined is None  # nothing adopted; a new job was handed over
    deblurrer.close()


def test_a_frame_after_a_slow_one_reuses_the_kernel_without_warm_iterations():
    """refine.budget_ms (a live feed): once a refined kernel is there, a frame whose predecessor took longer than the
    budget gets that kernel as it is (counted as refine_skipped); without a budget every frame iterates."""
    from deblur.kernel_deblur import KernelDeblurrer

    x = torch.from_numpy(np.ascontiguousarray(apply_kernel(skdata.chelsea(), shake_kernel(3, 5)))).permute(2, 0, 1)
    x = x[None].float() / 255.0
    for budget, skipped in ((1e-3, 3), (0.0, 0)):  # (the frame that adopts the full refinement skips too)
        deblurrer = KernelDeblurrer(device="cpu", runtime="torch",
                                    refine=RefineConfig(iters=2, every=16, background=True, budget_ms=budget))
        deblurrer.restore(x)
        deblurrer._job[0].result()
        deblurrer.restore(x)  # adopts the full refinement: a kernel to go on from
        before = deblurrer._refined.clone()
        deblurrer.restore(x), deblurrer.restore(x)
        assert deblurrer.counters()["refine_skipped"] == skipped
        assert torch.equal(deblurrer.last_kernels[0], before[0]) == bool(skipped)
        deblurrer.close()


def test_a_slow_frame_before_the_first_full_refinement_gives_the_network_kernel_as_such(monkeypatch):
    """refine.budget_ms while the first full refinement is still running: the next frame skips its warm iterations
    and is deconvolved with the network's kernel as an unrefined one (network_balance)."""
    import threading

    import deblur.kernel_deblur as kd

    real, release = kd.refine_kernels, threading.Event()

    def slow_in_the_thread(*args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(kd, "refine_kernels", slow_in_the_thread)
    x = torch.from_numpy(np.ascontiguousarray(apply_kernel(skdata.chelsea(), shake_kernel(3, 5)))).permute(2, 0, 1)
    x = x[None].float() / 255.0
    deblurrer = kd.KernelDeblurrer(device="cpu", runtime="torch",
                                   refine=RefineConfig(iters=2, every=16, background=True, budget_ms=1e-3))
    deblurrer.restore(x)  # hands the full refinement over (it waits), two iterations from the network's kernel
    seen = []
    real_deconvolve = deblurrer._deconvolve
    monkeypatch.setattr(deblurrer, "_deconvolve", lambda *a, **k: seen.append(a[4].clone()) or real_deconvolve(*a, **k))
    deblurrer.restore(x)  # over budget, nothing refined yet: the network's kernel as it is
    assert deblurrer.counters()["refine_skipped"] == 1 and deblurrer._refined is None
    assert seen and not bool(seen[0].any())  # not deconvolved as a refined kernel
    torch.testing.assert_close(deblurrer.last_kernels, resize_kernels(deblurrer.estimate(x), 41))
    release.set()
    deblurrer.close()


def test_strongest_takes_the_top_fraction_of_each_orientation_bin():
    """The vectorised gradient selection equals the per-bin definition: in each of the bins, the gradients at or
    above the bin's (keep / bins) quantile of the sampled magnitudes, never a zero one."""
    from deblur.kernel_refine import _strongest

    g = torch.Generator().manual_seed(0)
    lx, ly = torch.randn(2, 1, 60, 70, generator=g), torch.randn(2, 1, 60, 70, generator=g)
    lx[0, 0, :10] = 0.0
    ly[0, 0, :10] = 0.0  # flat rows: zero gradients are never kept
    mag = lx * lx + ly * ly
    bins, keep, stride = 4, 0.1, 3
    mask = _strongest(lx, ly, mag, keep, bins, stride)
    which = (torch.remainder(torch.atan2(ly, lx), torch.pi) / (torch.pi / bins)).long().clamp(0, bins - 1)
    for i in range(2):
        for b in range(bins):
            sample = torch.where(which[i] == b, mag[i], 0.0).flatten()[::stride]
            n = max(1, int(keep * sample.numel() / bins))
            thr = sample.topk(n).values.min()
            expect = (which[i] == b) & (mag[i] >= thr) & (mag[i] > 0)
            assert torch.equal(mask[i] & (which[i] == b), expect), (i, b)
    assert not mask[0, 0, :10].any()


def test_a_wiener_plan_reused_for_many_kernels_gives_each_kernels_own_result():
    """The refinement deconvolves one tile by a new kernel every iteration from one plan; each result must be the
    one-off deconvolution's, whatever came before."""
    from deblur.deconv import WienerPlan, wiener_deconvolve

    y = _grey(apply_kernel(skdata.astronaut()[::4, ::4], linear_kernel(9, 20.0)))
    plan = WienerPlan(y, 41, pad=20)
    for k in (resize_kernels(torch.from_numpy(linear_kernel(9, 20.0))[None], 41), _blob(), _blob(sigma=1.0)):
        assert torch.allclose(plan(k, 5e-3), wiener_deconvolve(y, k, balance=5e-3, pad=20), atol=1e-6)


@pytest.mark.parametrize("work_side", [0, 640])
def test_video_refinement_keeps_its_canvas_on_large_frames(work_side):
    """At 1280x720 the auto canvas is 81 px (at work_side 640, 41): the warm-started frames keep that canvas (an
    auto size computed again from the refined 81-px kernel would grow it to 161 and force a full refinement on every
    other frame), so frames 2-3 are warm and frame 4 is refined in full."""
    import cv2

    from deblur.kernel_deblur import KernelDeblurrer

    img = cv2.resize(skdata.chelsea(), (1280, 720), interpolation=cv2.INTER_CUBIC)
    x = torch.from_numpy(np.ascontiguousarray(apply_kernel(img, linear_kernel(25, 30.0)))).permute(2, 0, 1)[None]
    deblurrer = KernelDeblurrer(device="cpu", runtime="torch", work_side=work_side,
                                refine=RefineConfig(iters=2, every=3, warm_iters=1, tile=256))
    sides, since = [], []
    for _ in range(4):
        deblurrer.restore(x.float() / 255.0)
        sides.append(deblurrer.last_kernels.shape[-1])
        since.append(deblurrer._since)
    assert since == [1, 2, 3, 1]
    assert sides == [81 if not work_side else 41] * 4
    # in the background mode too: the finished full refinement is taken up and no other one is started before
    # `every` frames (a kernel refined at full resolution was once compared with the copy's canvas, found unusable,
    # and a full refinement ran after every other)
    deblurrer = KernelDeblurrer(device="cpu", runtime="torch", work_side=work_side,
                                refine=RefineConfig(iters=2, every=3, warm_iters=1, background=True))
    deblurrer.restore(x.float() / 255.0)
    deblurrer._job[0].result()  # the first full refinement, finished
    deblurrer.restore(x.float() / 255.0)
    assert deblurrer._job is None and deblurrer._refined.shape[-1] == 81
    deblurrer.close()


def test_the_refined_kernel_grows_with_the_frame_and_reaches_large_blur():
    """refine.size 0 (auto): the estimator's 41 taps up to ~900 px, 81 at 1280x720, 121 at 1920x1080; on a 1280x720
    photo blurred by a 61 px line, started from a 41-tap blob, the refined kernel is 81 px and holds the long line."""
    from deblur.archs.kernel_arch import kernel_extent, kernel_moments
    from deblur.kernel_refine import refined_size

    auto = RefineConfig()
    assert [refined_size(auto, 41, s) for s in ((360, 640), (576, 768), (720, 1280), (1080, 1920))] == [41, 41, 81, 121]
    assert refined_size(RefineConfig(size=61), 41, (720, 1280)) == 61
    import cv2

    img = cv2.resize(skdata.astronaut(), (1280, 720), interpolation=cv2.INTER_CUBIC)
    true = linear_kernel(61, 25.0)
    refined, ok = refine_kernels(_grey(apply_kernel(img, true)), _blob(), RefineConfig(starts=(1.0,), tile=256))
    assert bool(ok[0]) and refined.shape == (1, 81, 81)
    assert float(shape_error(refined, torch.from_numpy(true)[None])) < 0.3
    assert float(kernel_extent(kernel_moments(refined))[0]) > 45  # a 41-tap kernel cannot hold it


def test_the_default_refines_on_the_whole_frame_where_one_tile_sees_one_edge_direction():
    """A 512x384 frame: its left half (the most textured 256-px tile) holds only vertical stripes (gradients along x
    alone, which say nothing about the blur along y); the rest is a photo. Blurred by a diagonal line, the kernel
    refined on one 256-px tile is the stripes' guess, while the default's tile (768: this whole frame) recovers it."""
    import cv2

    photo = cv2.resize(skdata.astronaut(), (512, 384), interpolation=cv2.INTER_AREA)
    img = (0.35 * photo + 40).astype(np.float32)  # a softer photo: the stripes hold the most gradient energy
    x = np.arange(256)
    stripes = np.where((x // 9 + x // 23) % 2 == 0, 250.0, 5.0).astype(np.float32)  # irregular bars
    img[:, :256] = stripes[None, :, None]
    true = linear_kernel(17, 45.0)
    grey = _grey(apply_kernel(img.astype(np.uint8), true))
    errors = {}
    for tile in (256, RefineConfig().tile):
        refined, ok = refine_kernels(grey, _blob(), RefineConfig(tile=tile))
        assert bool(ok[0])
        errors[tile] = float(shape_error(refined, torch.from_numpy(true)[None]))
    assert RefineConfig().tile >= 512
    assert errors[RefineConfig().tile] < 0.25 and errors[256] > 0.4, errors


@pytest.mark.parametrize("hw,tile", [((360, 640), 128), ((200, 640), 256)])  # grid blocks; a tile taller than the frame
def test_the_most_textured_tile_is_the_one_holding_the_detail(hw, tile):
    """A flat frame with one textured patch, in two frames: the tile returned is the one that holds the patch, in
    each (the block sum on every second pixel and the integral-image path alike)."""
    from deblur.kernel_refine import most_textured_tile

    h, w = hw
    g = torch.Generator().manual_seed(1)
    grey = torch.full((2, 1, h, w), 0.5)
    th, step = min(tile, h), tile // 2
    spots = [(0, step), ((h - th) // step * step, (w - tile) // step * step)]  # (y0, x0) on the search grid
    for i, (y0, x0) in enumerate(spots):
        grey[i, 0, y0 + 8 : y0 + th - 8, x0 + 8 : x0 + tile - 8] += 0.2 * torch.rand(th - 16, tile - 16, generator=g)
    got = most_textured_tile(grey, tile)
    assert got.shape == (2, 1, th, tile)
    for i, (y0, x0) in enumerate(spots):
        assert torch.equal(got[i], grey[i, :, y0 : y0 + th, x0 : x0 + tile]), i


def test_the_rmap_keeps_lone_edges_and_discounts_fine_texture():
    """Xu & Jia's r-map: a lone edge's gradients all point one way (r near 1); fine texture's cancel (r near 0)."""
    frame = torch.full((1, 1, 64, 128), 0.2)
    frame[..., 16:48, 80:112] = 0.8  # a lone bright square on the right
    frame[..., 8:56, 8:56] = 0.2 + 0.6 * ((torch.arange(48)[:, None] + torch.arange(48)[None]) % 2)  # 1-px checks
    r = rmap(*_gradients(frame), 5)
    assert r.shape == frame.shape
    assert float(r[0, 0, 32, 79]) > 0.7 and float(r[0, 0, 15, 96]) > 0.7  # the square's left and top edges
    assert float(r[0, 0, 20:44, 20:44].max()) < 0.1  # inside the checks
    assert float(r.min()) >= 0.0 and float(r.max()) < 1.0
    with pytest.raises(ValueError, match="refine.rmap"):
        RefineConfig(rmap=4)


def test_the_rmap_with_several_starts_refines_each_frame_against_its_own_map():
    """Each frame's r-map is computed once and shared by its starts: two frames refined together from four starts
    give what each gives alone."""
    frames = [skdata.astronaut()[::4, ::4], skdata.chelsea()[::2, ::2][:128, :128]]
    kernels = [shake_kernel(3, 11), linear_kernel(9, 60.0)]
    greys = torch.cat([_grey(apply_kernel(f[:128, :128], k)) for f, k in zip(frames, kernels)])
    cfg = RefineConfig(iters=3, levels=2, rmap=3, starts=(1.0, 0.5, 2.0, 0.0))
    start = _blob(21, 2.0).expand(2, -1, -1)
    both, _ = refine_kernels(greys, start, cfg)
    for i in range(2):
        alone, _ = refine_kernels(greys[i : i + 1], start[i : i + 1], cfg)
        assert torch.allclose(both[i], alone[0], atol=1e-5), i
    plain, _ = refine_kernels(greys, start, dataclasses.replace(cfg, rmap=0))
    assert not torch.allclose(both, plain, atol=1e-4)  # the map changed which gradients were kept


def test_the_shock_step_size_reaches_the_refinement():
    """shock_dt=0 leaves the smoothed latent as shock_steps=0 does; another step size gives another kernel."""
    grey = _grey(apply_kernel(skdata.astronaut()[::4, ::4], shake_kernel(3, 11)))
    cfg = RefineConfig(iters=3, levels=2, starts=(1.0,))
    no_step, _ = refine_kernels(grey, _blob(21, 2.0), dataclasses.replace(cfg, shock_steps=0))
    zero_dt, _ = refine_kernels(grey, _blob(21, 2.0), dataclasses.replace(cfg, shock_dt=0.0))
    half, _ = refine_kernels(grey, _blob(21, 2.0), cfg)
    assert torch.equal(no_step, zero_dt)
    assert not torch.allclose(half, zero_dt, atol=1e-4)
