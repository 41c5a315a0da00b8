"""The trainer on CPU with tiny crops: exact resume, atomic checkpoints, bad input, export, DDP, Ctrl-C."""

import dataclasses
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata
from torch import nn

from configs import ConfigError, load_config
from deblur import load_generator
from deblur.config import TrainConfig
from deblur.train.gan_trainer import Trainer, atomic_save, lr_factor

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Six real photos, shrunk to ~96 px, as a tiny training corpus."""
    folder = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "colorwheel"):
        rgb = getattr(skdata, name)()[..., :3]
        h, w = rgb.shape[:2]
        small = cv2.resize(rgb, (96 * w // max(h, w) + 32, 96 * h // max(h, w) + 32), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    return folder


def tiny_cfg(photos: Path, run_root: Path, *extra: str) -> TrainConfig:
    src = str(photos / "*.png")
    overrides = [
        f"project={run_root}", "name=tiny", f"train.sources=[{src}]", f"val.sources=[{src}]",
        "train.bounds=[0.0, 1.0]", "val.bounds=[0.0, 1.0]", "train.preload=false", "val.preload=false",
        "image_size=64", "batch_size=2", "train_batches_per_epoch=3", "val_batches_per_epoch=1", "num_epochs=2",
        "device=cpu", "amp=fp32", "threads=1", "save_every=1", "log_every=1", "image_every=2",
        "optimizer.lr=1.0e-3", "model.zero_init_last=false", *extra,
    ]
    return load_config(TrainConfig, ROOT / "configs" / "deblur_train.yaml", overrides)


def _tiny_estimator(path: Path) -> Path:
    """An untrained 15-tap kernel estimator saved to ``path``: a refiner's frozen first stage, quick on the CPU."""
    from deblur.config import EstimatorConfig
    from deblur.models import build_estimator, save_estimator

    est_cfg = EstimatorConfig(kernel_size=15, width_mult=0.25, depth=7, hidden=16)
    return save_estimator(build_estimator(est_cfg).eval(), est_cfg, path)


def _weights(trainer: Trainer) -> dict:
    return {k: v.detach().clone() for k, v in trainer.G.state_dict().items()}


@pytest.mark.parametrize("gan", ["no_gan", "patch_gan"])
def test_two_steps_resume_two_steps_equals_four(photos, tmp_path, gan):
    d = [f"model.d_name={gan}"]
    straight = Trainer(tiny_cfg(photos, tmp_path / "a", "max_steps=4", *d))
    straight.fit()
    first = Trainer(tiny_cfg(photos, tmp_path / "b", "max_steps=2", *d))
    first.fit()
    resumed = Trainer(tiny_cfg(photos, tmp_path / "b", "max_steps=4", *d), resume=True)
    assert resumed.step == 2
    resumed.fit()
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{k} differs after resume")
    # and training changed the weights at all (the test could not pass with a frozen model)
    init = Trainer(tiny_cfg(photos, tmp_path / "c", "max_steps=4", *d))
    assert any(not torch.equal(init.G.state_dict()[k], a[k]) for k in a)


def test_run_folder_holds_config_logs_checkpoints_and_export_loads(photos, tmp_path):
    trainer = Trainer(tiny_cfg(photos, tmp_path, "max_steps=3"))
    val = trainer.fit()
    run = tmp_path / "tiny"
    assert (run / "config.yaml").is_file() and (run / "last.pt").is_file() and (run / "best.pt").is_file()
    assert list(run.glob("events.out.tfevents.*"))
    assert np.isfinite(val["psnr"]) and np.isfinite(val["psnr_blur"])
    out = trainer.export(tmp_path / "g.pt", half=True)
    model, gcfg = load_generator(out)
    assert gcfg.name == "fpn_mobilenet_v2"
    x = torch.rand(1, 3, 40, 56) * 2 - 1
    assert model(x).shape == x.shape
    # a training checkpoint loads as a generator too
    load_generator(run / "last.pt")


def test_nan_loss_stops_with_clear_message_and_keeps_last_good(photos, tmp_path):
    trainer = Trainer(tiny_cfg(photos, tmp_path, "max_steps=2"))
    trainer.fit()
    good = torch.load(tmp_path / "tiny" / "last.pt", weights_only=True)["step"]
    bad = Trainer(tiny_cfg(photos, tmp_path, "max_steps=6"), resume=True)
    with torch.no_grad():
        next(bad.G.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="last good checkpoint"):
        bad.fit()
    assert torch.load(tmp_path / "tiny" / "last.pt", weights_only=True)["step"] == good


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"step": 1}, path)

    def full_disk(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="previous last.pt is intact"):
        atomic_save({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert not list(tmp_path.glob(".*.tmp"))


def test_resume_with_other_architecture_names_both(photos, tmp_path):
    Trainer(tiny_cfg(photos, tmp_path, "max_steps=1")).fit()
    with pytest.raises(ValueError, match="fpn_mobilenet_v2'.*fpn_mobilenet_v2_dsc"):
        Trainer(tiny_cfg(photos, tmp_path, "max_steps=2", "model.g_name=fpn_mobilenet_v2_dsc"), resume=True)
    with pytest.raises(FileNotFoundError, match="last.pt"):
        Trainer(tiny_cfg(photos, tmp_path / "nothing"), resume=True)


def test_glob_matching_nothing_is_named(photos, tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        Trainer(tiny_cfg(photos, tmp_path, f"train.sources=[{tmp_path}/no_such_dir/*.png]"))


def test_unknown_key_and_bad_value_in_overrides(photos, tmp_path):
    with pytest.raises(ConfigError, match="Did you mean 'batch_size'"):
        tiny_cfg(photos, tmp_path, "batchsize=3")
    with pytest.raises(ConfigError, match="optimizer.name"):
        tiny_cfg(photos, tmp_path, "optimizer.name=sgd")


def test_lr_schedule_shapes(photos, tmp_path):
    cfg = tiny_cfg(photos, tmp_path, "scheduler.name=linear", "scheduler.start_epoch=1", "scheduler.min_lr=0.0", "scheduler.warmup_steps=0")
    assert lr_factor(0, cfg) == 1.0 and lr_factor(2, cfg) == 1.0  # flat through epoch 0
    assert lr_factor(3, cfg) == 1.0 and lr_factor(6, cfg) == pytest.approx(0.0)  # then linear to min_lr
    cos = tiny_cfg(photos, tmp_path, "scheduler.name=cosine", "scheduler.warmup_steps=2", "scheduler.min_lr=0.0")
    assert lr_factor(0, cos) == 0.5 and lr_factor(1, cos) == 1.0 and lr_factor(6, cos) == pytest.approx(0.0)


def _train_cmd(photos: Path, run_root: Path, *extra: str) -> list[str]:
    src = str(photos / "*.png")
    return [
        f"project={run_root}", "name=tiny", f"train.sources=[{src}]", f"val.sources=[{src}]",
        "train.bounds=[0.0, 1.0]", "val.bounds=[0.0, 1.0]", "train.preload=false", "val.preload=false",
        "image_size=64", "batch_size=1", "val_batches_per_epoch=1", "device=cpu", "amp=fp32", "threads=1", *extra,
    ]


@pytest.mark.parametrize("warmup_num,port", [(0, 29517), (1, 29527)])
def test_torchrun_two_processes_gloo(photos, tmp_path, warmup_num, port):
    """Two processes (gloo). warmup_num=1: the backbone is frozen for epoch 0 after DDP wrapped the model,
    then thawed; step 2 failed with 'Expected to have finished reduction in the prior iteration'."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    epochs = warmup_num + 1
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(ROOT / "train_deblur.py"), *_train_cmd(photos, tmp_path, "train_batches_per_epoch=2",
                                                      f"num_epochs={epochs}", f"warmup_num={warmup_num}")]
    proc = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(tmp_path / "tiny" / "last.pt", weights_only=True)
    assert ckpt["step"] == 2 * epochs


def test_ctrl_c_saves_last_and_exits_cleanly(photos, tmp_path):
    cmd = [sys.executable, str(ROOT / "train_deblur.py"),
           *_train_cmd(photos, tmp_path, "train_batches_per_epoch=100000", "save_every=100000")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((tmp_path / "tiny").glob("events.out.tfevents.*")):
        time.sleep(0.2)
    time.sleep(2.0)  # a few steps in
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    ckpt = torch.load(tmp_path / "tiny" / "last.pt", weights_only=True)
    assert ckpt["step"] >= 1


def test_cpu_minutes_budget_stops_early_and_saves_last(photos, tmp_path):
    # 6 planned steps; a budget of 1e-4 CPU-minutes (6 ms) is spent by the first step, which takes ~100 ms
    trainer = Trainer(tiny_cfg(photos, tmp_path, "num_epochs=2", "max_cpu_minutes=0.0001"))
    trainer.fit()
    assert trainer.step == 1
    assert torch.load(tmp_path / "tiny" / "last.pt", weights_only=True)["step"] == 1
    with pytest.raises(ConfigError, match="max_cpu_minutes"):
        tiny_cfg(photos, tmp_path, "max_cpu_minutes=-1")


def test_lr_zero_does_not_divide_by_zero(photos, tmp_path):
    cfg = tiny_cfg(photos, tmp_path, "optimizer.lr=0.0", "scheduler.name=cosine", "scheduler.warmup_steps=0")
    assert lr_factor(4, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 6)), abs=1e-6)  # decays to 0
    Trainer(cfg)  # the schedulers are built without a ZeroDivisionError


def test_validation_scores_every_held_out_image_once(photos, tmp_path):
    """6 held-out images, batch 4, 16 val batches: batches [0..3] and [4, 5], nothing scored twice."""
    trainer = Trainer(tiny_cfg(photos, tmp_path, "batch_size=4", "val_batches_per_epoch=16"))
    seen = []
    batch = trainer._batch

    def record(indices, dataset, key):
        if dataset is trainer.val_set:
            seen.extend(indices)
        return batch(indices, dataset, key)

    trainer._batch = record
    trainer.validate()
    assert sorted(seen) == list(range(len(trainer.val_set))) == list(range(6))


def test_ranks_agree_to_stop_on_the_time_budget(photos, tmp_path, monkeypatch):
    """Under DDP each rank checks its own clock; the decision is all-reduced (MAX), so when any rank's budget
    is spent they all stop at the same step (one rank stopping alone would leave the others hanging)."""
    import deblur.train.gan_trainer as train_mod

    trainer = Trainer(tiny_cfg(photos, tmp_path, "max_minutes=60"))
    trainer._t_start, trainer._cpu_start = time.monotonic(), time.process_time()
    assert trainer._budget_spent() is False
    calls = []

    def other_rank_is_done(flag, op):  # this rank is within budget, another rank is not
        calls.append(op)
        flag.fill_(1.0)

    trainer.distributed = True
    monkeypatch.setattr(train_mod.dist, "all_reduce", other_rank_is_done)
    assert trainer._budget_spent() is True and calls == [train_mod.dist.ReduceOp.MAX]


def test_cuda_rng_state_is_the_training_devices_only(monkeypatch, caplog):
    """Checkpoints hold the CUDA RNG state of the training device only (was: every GPU's, as a list, which
    cannot be restored on a machine with another GPU count). Older list-form states still load. CUDA faked:
    a state is a one-byte tensor holding its GPU's index."""
    import deblur.train.gan_trainer as train_mod

    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state",
                        lambda device="cuda": torch.tensor([torch.device(device).index], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device="cuda": restored.append((int(state[0]), torch.device(device))))
    gpu0, gpu1, cpu = torch.device("cuda", 0), torch.device("cuda", 1), torch.device("cpu")
    state = train_mod._rng_state(gpu1)
    assert torch.equal(state["cuda"], torch.tensor([1], dtype=torch.uint8))
    assert train_mod._rng_state(cpu)["cuda"] is None
    train_mod._set_rng_state(state, gpu0)  # resumed on a machine with one GPU: the state goes to that GPU
    assert restored == [(1, gpu0)]
    restored.clear()
    old = {**state, "cuda": [torch.tensor([10 + i], dtype=torch.uint8) for i in range(3)]}  # saved with 3 GPUs
    train_mod._set_rng_state(old, gpu1)
    assert restored == [(11, gpu1)]
    restored.clear()
    train_mod._set_rng_state(old, cpu)  # a CPU run has no CUDA generator to restore
    train_mod._set_rng_state({**state, "cuda": []}, gpu0)  # older CPU checkpoints: an empty list
    with caplog.at_level("WARNING", logger="deblur.train.gan_trainer"):
        train_mod._set_rng_state({**state, "cuda": old["cuda"][:1]}, gpu1)  # saved with 1 GPU, resumed on cuda:1
    assert restored == [] and "CUDA RNG starts afresh" in caplog.text


def test_resume_from_a_checkpoint_with_old_per_gpu_rng_states(photos, tmp_path):
    """A checkpoint written by the old code on a 2-GPU machine (rng['cuda'] a list of 2 states) resumes."""
    Trainer(tiny_cfg(photos, tmp_path, "max_steps=1")).fit()
    path = tmp_path / "tiny" / "last.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8), torch.ones(16, dtype=torch.uint8)]
    atomic_save(ckpt, path)
    resumed = Trainer(tiny_cfg(photos, tmp_path, "max_steps=2"), resume=True)
    assert resumed.step == 1
    resumed.fit()
    assert torch.load(path, weights_only=True)["rng"]["cuda"] is None  # re-saved in the new form


def test_sync_batchnorm_only_under_ddp_on_cuda():
    """BatchNorm becomes SyncBatchNorm only for DDP on CUDA (gloo/CPU cannot run it), keeping the very
    Parameter objects (the optimizer holds them) and the state_dict keys (checkpoints stay compatible)."""
    from deblur.train.gan_trainer import sync_batchnorm

    def model():
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))

    for distributed, device in [(False, "cuda"), (True, "cpu"), (False, "cpu")]:
        m = model()
        assert sync_batchnorm(m, distributed, torch.device(device)) is m
        assert not any(isinstance(x, nn.SyncBatchNorm) for x in m.modules())
    m = model()
    params, keys = list(m.parameters()), list(m.state_dict())
    synced = sync_batchnorm(m, True, torch.device("cuda", 0))  # converting needs no GPU, running does
    assert sum(isinstance(x, nn.SyncBatchNorm) for x in synced.modules()) == 2
    assert all(a is b for a, b in zip(params, synced.parameters())) and list(synced.state_dict()) == keys


# ---- CUDA (skipped without a GPU) ----------------------------------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_two_steps_resume_two_steps_equals_four(photos, tmp_path, amp):
    """The CPU resume test on CUDA, with a WGAN-GP critic (it draws from the CUDA RNG, which the checkpoint
    carries) and the AMP scaler (fp16): bit-identical weights. Deterministic kernels only, restored after."""
    extra = ["device=cuda", f"amp={amp}", "model.d_name=patch_gan", "model.disc_loss=wgan-gp"]
    before = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.are_deterministic_algorithms_enabled()
    env_before = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    torch.use_deterministic_algorithms(True, warn_only=True)  # warns naming any op without a deterministic kernel
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            straight = Trainer(tiny_cfg(photos, tmp_path / "a", "max_steps=4", *extra))
            straight.fit()
            first = Trainer(tiny_cfg(photos, tmp_path / "b", "max_steps=2", *extra))
            first.fit()
            resumed = Trainer(tiny_cfg(photos, tmp_path / "b", "max_steps=4", *extra), resume=True)
            assert resumed.step == 2 and resumed.device.type == "cuda"
            resumed.fit()
        nondeterministic = sorted({str(w.message)[:200] for w in caught if "deterministic" in str(w.message)})
        a, b = _weights(straight), _weights(resumed)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0,
                                       msg=f"{k} differs after resume; nondeterministic ops: {nondeterministic}")
        ckpt = torch.load(tmp_path / "b" / "tiny" / "last.pt", weights_only=True)
        assert isinstance(ckpt["rng"]["cuda"], torch.Tensor)  # this GPU's state, not a list of all GPUs'
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[:2]
        torch.use_deterministic_algorithms(before[2])
        if env_before is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_torchrun_two_gpus_nccl_sync_batchnorm_and_warmup(photos, tmp_path):
    """NCCL DDP on two GPUs: SyncBatchNorm in the generator, a frozen-backbone warm-up epoch, then thawed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29537",
           str(ROOT / "train_deblur.py"), *_train_cmd(photos, tmp_path, "train_batches_per_epoch=2", "num_epochs=2",
                                                      "warmup_num=1", "device=cuda", "amp=bf16")]
    proc = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert torch.load(tmp_path / "tiny" / "last.pt", weights_only=True)["step"] == 4


@pytest.mark.parametrize("residual_map, channels", [(False, 6), (True, 7)])
def test_a_refiner_trains_on_the_estimators_deconvolution_and_exports(photos, tmp_path, residual_map, channels):
    from deblur.kernel_deblur import KernelDeblurrer

    est = _tiny_estimator(tmp_path / "est.pt")
    trainer = Trainer(tiny_cfg(photos, tmp_path, "max_steps=2", f"model.estimator={est}",
                               f"model.residual_map={str(residual_map).lower()}"))
    blur, sharp = trainer._batch([0, 1], trainer.train_set, 0)
    assert blur.shape[1] == channels and trainer.G.in_channels == channels
    deconv, res = KernelDeblurrer(str(est), device="cpu", gate_px=0.0, refiner="none",
                                  refine=trainer.kernel_deblurrer.cfg.refine).restore((blur[:, :3] + 1) / 2, residual=True)
    torch.testing.assert_close(blur[:, 3:6], deconv * 2 - 1)  # the deconvolution, on the images' scale
    if residual_map:
        torch.testing.assert_close(blur[:, 6:], res * 2)
        assert res.abs().mean() > 1e-4  # a blurred crop leaves a residual: the channel carries something
    val = trainer.fit()
    assert np.isfinite(val["psnr"]) and np.isfinite(val["psnr_deconv"])
    out = trainer.export(tmp_path / "refiner.pt", "last.pt")
    model, gen_cfg = load_generator(out)
    assert gen_cfg.in_channels == channels
    (restored,) = KernelDeblurrer(str(est), device="cpu", gate_px=0.0, refiner=str(out))(
        [cv2.imread(str(next(photos.glob("*.png"))))])
    assert restored.dtype == np.uint8


def test_fpn_inception_trains_by_config(photos, tmp_path):
    trainer = Trainer(tiny_cfg(photos, tmp_path, "max_steps=1", "model.g_name=fpn_inception", "model.num_filters=16",
                               "model.num_filters_fpn=16", "val_batches_per_epoch=0"))
    before = _weights(trainer)
    trainer.fit()
    after = _weights(trainer)
    assert type(trainer.G).__name__ == "FPNInception"
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))


def test_a_refiner_trains_on_perturbed_true_kernels_too(photos, tmp_path):
    from deblur.data.dataset import collate

    est = _tiny_estimator(tmp_path / "est.pt")

    def first_batch(*extra):
        t = Trainer(tiny_cfg(photos, tmp_path / str(len(extra)) / extra[-1].replace("=", "_") if extra else tmp_path,
                             "max_steps=1", f"model.estimator={est}", *extra))
        t.train_set.set_epoch(3)
        batch = collate([t.train_set[i] for i in (0, 1)])
        return t, batch, t._to_device(batch, train=True)[0]

    t, batch, estimated = first_batch("model.true_kernel_prob=0.0")
    assert batch["kernel"].shape[0] == 2 and torch.allclose(batch["kernel"].sum((1, 2)), torch.ones(2))
    t, batch, exact = first_batch("model.true_kernel_prob=1.0", "model.true_kernel_perturb=[0.0, 0.0]")
    truth = t.kernel_deblurrer.deconvolve((batch["blur"] + 1) / 2, batch["kernel"])
    torch.testing.assert_close(exact[:, 3:6], truth * 2 - 1, atol=1e-5, rtol=0)  # the true kernel's deconvolution
    assert (exact[:, 3:6] - estimated[:, 3:6]).abs().mean() > 1e-3  # not the estimator's
    t, batch, wrong = first_batch("model.true_kernel_prob=1.0", "model.true_kernel_perturb=[10.0, 0.3]")
    assert (wrong[:, 3:6] - exact[:, 3:6]).abs().mean() > 1e-4  # perturbed: another kernel
    val = t._batch([0, 1], t.train_set, 3)[0]  # validation crops always get the estimator's kernels
    torch.testing.assert_close(val, estimated)


def test_a_refiner_can_train_on_refined_kernels_as_inference_sees_them(photos, tmp_path):
    from deblur.data.dataset import collate
    from deblur.kernel_deblur import KernelDeblurrer
    from deblur.kernel_refine import RefineConfig

    est = _tiny_estimator(tmp_path / "est.pt")
    t = Trainer(tiny_cfg(photos, tmp_path / "run", "max_steps=1", f"model.estimator={est}", "model.estimator_refine=true"))
    t.train_set.set_epoch(3)
    batch = collate([t.train_set[i] for i in (0, 1)])
    got = t._to_device(batch)[0][:, 3:6]
    blurred = (batch["blur"] + 1) / 2
    # refinement on, from one start (as the pipeline, where a refiner runs)
    refined = KernelDeblurrer(est, gate_px=0.0, refiner="none", refine=RefineConfig(starts=(1.0,))).restore(blurred)
    unrefined = KernelDeblurrer(est, gate_px=0.0, refiner="none", refine=RefineConfig(iters=0)).restore(blurred)
    torch.testing.assert_close(got, refined * 2 - 1, atol=1e-5, rtol=0)
    assert (refined - unrefined).abs().mean() > 1e-4


def test_a_refiners_crop_is_cut_from_the_first_stage_on_the_larger_crop(photos, tmp_path):
    """model.refiner_crop: the first stage deconvolves the 128-px crop; the refiner gets a 64-px window of it and of
    the sharp crop, the same window for both: centred in validation, random per crop in training; and a run trains."""
    from deblur.data.dataset import collate

    est = _tiny_estimator(tmp_path / "est.pt")
    t = Trainer(tiny_cfg(photos, tmp_path / "run", "max_steps=2", f"model.estimator={est}", "image_size=128",
                         "model.refiner_crop=64", "model.zero_init_last=true"))
    t.train_set.set_epoch(3)
    batch = collate([t.train_set[i] for i in (0, 1)])
    full_in, full_sharp = t._to_device(batch)
    t.cfg = load_config(TrainConfig, data=dataclasses.asdict(t.cfg), overrides=["model.refiner_crop=0"])
    whole_in, whole_sharp = t._to_device(batch)
    assert full_in.shape == (2, 6, 64, 64) and whole_in.shape == (2, 6, 128, 128)
    torch.testing.assert_close(full_in, whole_in[..., 32:96, 32:96])
    torch.testing.assert_close(full_sharp, whole_sharp[..., 32:96, 32:96])
    t.cfg = load_config(TrainConfig, data=dataclasses.asdict(t.cfg), overrides=["model.refiner_crop=64"])
    got_in, got_sharp = t._to_device(batch, train=True)
    for i in range(2):  # each crop: one window, found in the whole sharp crop, holds the matching input
        hits = [(y, x) for y in range(65) for x in range(65)
                if torch.equal(whole_sharp[i, :, y:y + 64, x:x + 64], got_sharp[i])]
        assert hits and any(torch.equal(whole_in[i, :3, y:y + 64, x:x + 64], got_in[i, :3]) for y, x in hits)
    t.fit()
    assert t.step == 2
    with pytest.raises(ConfigError, match="refiner_crop"):  # no smaller than the crops it is cut from
        tiny_cfg(photos, tmp_path / "bad", f"model.estimator={est}", "image_size=128", "model.refiner_crop=128")
    with pytest.raises(ConfigError, match="set model.estimator"):  # a refiner's option on a plain generator
        tiny_cfg(photos, tmp_path / "bad", "model.refiner_crop=32")
