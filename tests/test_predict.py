"""Image predictor: Deblurrer class and the `python -m deblur.predict` CLI on real photos (CPU)."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata

from deblur.config import GeneratorConfig
from deblur.models import build_generator, save_generator
from deblur.predict import Deblurrer, collect_images, main, read_image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def identity_weights(tmp_path_factory):
    """An untrained fpn_mobilenet_v2 with zero_init_last (exactly the identity), exported."""
    cfg = GeneratorConfig(name="fpn_mobilenet_v2", zero_init_last=True)
    torch.manual_seed(0)
    return save_generator(build_generator(cfg), cfg, tmp_path_factory.mktemp("w") / "identity.pt")


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """A non-identity generator (random last conv), exported: outputs differ from inputs."""
    cfg = GeneratorConfig(name="fpn_mobilenet_v2_dsc", zero_init_last=False)
    torch.manual_seed(0)
    return save_generator(build_generator(cfg), cfg, tmp_path_factory.mktemp("w") / "random.pt")


def _chelsea_bgr():
    """A real photo, cropped small for CPU speed: (150, 201, 3) BGR uint8 (odd size: padded inside)."""
    return np.ascontiguousarray(cv2.cvtColor(skdata.chelsea(), cv2.COLOR_RGB2BGR)[60:210, 150:351])


def test_identity_model_preserves_colours(identity_weights):
    photo_bgr = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)
    deblurrer = Deblurrer(identity_weights, device="cpu")
    (out,) = deblurrer([photo_bgr])
    assert out.shape == photo_bgr.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - photo_bgr.astype(int)).max() <= 1  # no colour shift, no BGR/RGB swap


def test_bf16_autocast_runs_in_bf16_and_stays_close_to_fp32(random_weights):
    """A non-identity model: with identity weights the residual is exactly 0, so a wrong bf16 path could not show."""
    frame = np.ascontiguousarray(_chelsea_bgr()[:32, :48])  # bf16 is emulated (slow) on CPUs without AVX512-bf16/AMX
    (ref,) = Deblurrer(random_weights, device="cpu", amp="fp32")([frame])
    bf16 = Deblurrer(random_weights, device="cpu", amp="bf16")
    dtypes = set()
    for conv in (m for m in bf16.model.modules() if isinstance(m, torch.nn.Conv2d)):
        conv.register_forward_hook(lambda module, args, out: dtypes.add(out.dtype))
    (out,) = bf16([frame])
    assert dtypes == {torch.bfloat16}  # every convolution ran in bf16
    assert out.shape == frame.shape and out.dtype == np.uint8
    changed = np.abs(ref.astype(int) - frame.astype(int))
    diff = np.abs(out.astype(int) - ref.astype(int))
    # measured: the model changes the crop by 42 grey levels on average; bf16 differs from fp32 by 1.3 (max 9)
    assert changed.mean() > 20
    assert diff.mean() <= 4 and diff.max() <= 32


def test_batches_by_size_and_keeps_order(random_weights):
    deblurrer = Deblurrer(random_weights, device="cpu", max_batch=2)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (40, 64, 3), np.uint8) for _ in range(3)]
    frames.insert(1, rng.integers(0, 256, (64, 33, 3), np.uint8))
    outs = deblurrer(frames)
    assert [o.shape for o in outs] == [f.shape for f in frames]
    assert any(not np.array_equal(o, f) for o, f in zip(outs, frames))  # really a non-identity model
    for frame, out in zip(frames, outs):  # batch-invariant: alone == inside a batch
        (alone,) = deblurrer([frame])
        assert np.abs(alone.astype(int) - out.astype(int)).max() <= 1


def test_rejects_bad_frames(identity_weights):
    deblurrer = Deblurrer(identity_weights, device="cpu")
    with pytest.raises(ValueError, match="frame 0"):
        deblurrer([np.zeros((64, 64), np.uint8)])
    with pytest.raises(ValueError, match="float32"):
        deblurrer([np.zeros((64, 64, 3), np.float32)])


def test_cli_writes_outputs_named_after_inputs(tmp_path, identity_weights):
    photo = _chelsea_bgr()
    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "cat.png"), photo)
    assert main([str(src / "cat.png"), "--weights", str(identity_weights), "--device", "auto"]) == 0
    beside = src / "cat_deblurred.png"
    assert np.abs(read_image(beside).astype(int) - photo.astype(int)).max() <= 1

    out = tmp_path / "out"
    assert main([str(src), "--weights", str(identity_weights), "--out", str(out), "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cat.png"]  # cat_deblurred.png was skipped as an output
    assert np.abs(read_image(out / "cat.png").astype(int) - photo.astype(int)).max() <= 1


def test_cli_errors_name_the_input(tmp_path, identity_weights, caplog):
    caplog.set_level(logging.ERROR)
    w = ["--weights", str(identity_weights)]
    assert main([str(tmp_path / "missing.jpg"), *w]) == 1
    assert "missing.jpg" in caplog.text
    assert main([str(tmp_path / "*.png"), *w]) == 1
    assert "*.png" in caplog.text and "glob" in caplog.text
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    assert main([str(empty), *w]) == 1
    assert "empty_dir" in caplog.text
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    assert main([str(broken), *w]) == 1
    assert "broken.jpg" in caplog.text
    assert main([str(broken), "--weights", str(tmp_path / "nope.pt")]) == 1
    assert "nope.pt" in caplog.text


def test_collect_images_glob_and_dedup(tmp_path):
    for name in ("a.jpg", "b.png", "b_deblurred.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    found = collect_images([str(tmp_path / "*"), str(tmp_path / "a.jpg")])
    assert [p.name for p in found] == ["a.jpg", "b.png"]


def test_cli_subprocess_end_to_end(tmp_path, identity_weights):
    cv2.imwrite(str(tmp_path / "cat.jpg"), _chelsea_bgr())
    env = dict(os.environ, OMP_NUM_THREADS="2")
    proc = subprocess.run(
        [sys.executable, "-m", "deblur.predict", str(tmp_path / "*.jpg"), "--weights", str(identity_weights),
         "--out", str(tmp_path / "out")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("cat.jpg")
    assert read_image(tmp_path / "out" / "cat.jpg").shape == (150, 201, 3)


def test_small_images_are_deblurred_padded(tmp_path, identity_weights, caplog):
    """A 32x24 image is valid input. The default (the shipped 41-tap kernel estimator) deconvolves it padded; a
    generator, which needs 32x32, runs it padded too: the identity generator gives it back unchanged. Small frames are
    counted and logged once."""
    caplog.set_level(logging.INFO)
    photo = np.ascontiguousarray(_chelsea_bgr()[40:64, 60:92])  # 24 rows, 32 columns
    cv2.imwrite(str(tmp_path / "small.png"), photo)
    assert main([str(tmp_path / "small.png"), "--out", str(tmp_path / "out"), "--device", "cpu", "--runtime", "torch"]) == 0
    assert read_image(tmp_path / "out" / "small.png").shape == (24, 32, 3)

    deblurrer = Deblurrer(identity_weights, device="cpu")
    frames = [photo, np.ascontiguousarray(photo[:9, :13]), photo]
    out = deblurrer(frames)
    assert all(np.array_equal(o, f) for o, f in zip(out, frames))
    assert deblurrer.small_frames == 3
    assert len([r for r in caplog.records if "smaller than the generator" in r.getMessage()]) == 1
