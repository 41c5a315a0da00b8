"""INT8: NNCF post-training quantization behind runtime.compile_module, the detector's calibration set
(training-corpus files that PyPI packages ship), and the detector_variants experiment that measures its cost."""

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from detect import Detection, DetectorConfig, build_detector
from detect.assets import ultralytics_asset
from runtime import compile_module, resolve_precision
from runtime.quantize import Calibration

ROOT = Path(__file__).resolve().parents[1]


def _smooth_inputs(n: int, chw=(3, 32, 32), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.uniform(0, 1, (chw[0], 4, 4)).astype(np.float32)
        big = np.stack([cv2.resize(c, chw[1:][::-1], interpolation=cv2.INTER_CUBIC) for c in small])
        out.append(np.clip(big, 0, 1)[None].astype(np.float32))
    return out


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.LeakyReLU(0.1), nn.Conv2d(16, 16, 3, padding=1),
                                  nn.LeakyReLU(0.1), nn.Conv2d(16, 4, 1))

    def forward(self, x):
        return self.body(x)


def test_int8_precision_rules():
    assert resolve_precision("int8", "openvino", "cpu") == "int8"
    with pytest.raises(ValueError, match="runtime 'openvino'"):
        resolve_precision("int8", "onnxruntime", "cpu")
    with pytest.raises(ValueError, match="runtime 'openvino'"):
        resolve_precision("int8", "torch", "cpu")
    with pytest.raises(ValueError, match="calibration"):
        compile_module(SmallNet(), None, "openvino", "cpu", "int8")


def test_int8_engine_is_quantized_close_to_fp32_and_cached(tmp_path, monkeypatch):
    net = SmallNet().eval()
    calls = []

    def samples(chw):
        calls.append(chw)
        return _smooth_inputs(16, chw)

    calibration = Calibration(samples=samples, key=lambda chw: f"smooth-16-seed0-{chw}")
    engine = compile_module(net, None, "openvino", "cpu", "int8", cache_dir=tmp_path, calibration=calibration)
    x = torch.from_numpy(_smooth_inputs(1, seed=1)[0])
    out = engine(x)
    with torch.no_grad():
        ref = net(x)
    assert engine.name == "openvino-int8" and calls == [(3, 32, 32)]
    err = (out - ref).abs().mean() / ref.abs().mean()
    assert 0 < err < 0.05, err  # int8 is not fp32 (> 0), but close to it
    packed = list((tmp_path / "int8").glob("*.ovir"))
    assert len(packed) == 1 and b"FakeQuantize" in packed[0].read_bytes()

    # a second engine finds the cached model: NNCF is not run again
    import nncf

    monkeypatch.setattr(nncf, "quantize", lambda *a, **k: pytest.fail("quantized again despite the cache"))
    again = compile_module(net, None, "openvino", "cpu", "int8", cache_dir=tmp_path, calibration=calibration)
    torch.testing.assert_close(again(x), out)
    assert calls == [(3, 32, 32)]  # a hit builds no calibration samples either
    monkeypatch.undo()

    # a truncated cache entry is not trusted: it is rebuilt
    packed[0].write_bytes(packed[0].read_bytes()[:1000])
    rebuilt = compile_module(net, None, "openvino", "cpu", "int8", cache_dir=tmp_path, calibration=calibration)
    torch.testing.assert_close(rebuilt(x), out)


def test_read_packed_rejects_other_files(tmp_path):
    from runtime.openvino_core import core
    from runtime.quantize import PACK_MAGIC, read_packed

    other = tmp_path / "model.onnx"
    other.write_bytes(b"\x08\x07onnx")
    with pytest.raises(ValueError, match="not a packed"):
        read_packed(core(), other)
    cut = tmp_path / "cut.ovir"
    cut.write_bytes(PACK_MAGIC + (5000).to_bytes(8, "little") + b"<xml")
    with pytest.raises(ValueError, match="truncated"):
        read_packed(core(), cut)


def test_calibration_set_is_the_training_corpus_from_pypi():
    """Every calibration photo is one that scripts/fetch_data.py puts in data/train (never data/eval), and
    the frames come from the bikes clip, every 5th as the training corpus takes them."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import fetch_data

    from detect import calibration

    train_files = ({f"data/{n}" for n in fetch_data.SKIMAGE_PHOTOS} | {f"datasets/images/{n}" for n in fetch_data.SKLEARN_PHOTOS}
                   | {f"mpl-data/sample_data/{n}" for n in fetch_data.MPL_PHOTOS})
    assert {rel for _, rel in calibration.PHOTOS} <= train_files
    assert calibration.CLIP_STEP == fetch_data.VIDEO_STEP
    frames = calibration.calibration_frames(20)
    assert len(frames) == 20
    assert all(f.dtype == np.uint8 and f.ndim == 3 for f in frames)
    assert sum(f.shape[:2] == (272, 640) for f in frames) == 20 - len(calibration.PHOTOS)  # bikes.mp4 frames
    key = calibration.calibration_key((3, 64, 96))
    assert key == calibration.calibration_key((3, 64, 96)) != calibration.calibration_key((3, 96, 64))
    inputs = calibration.calibration_inputs((3, 64, 96), 10)
    assert len(inputs) == 10 and inputs[0].shape == (1, 3, 64, 96) and inputs[0].dtype == np.float32
    assert 0.0 <= min(a.min() for a in inputs) and max(a.max() for a in inputs) <= 1.0


def test_int8_darknet_finds_what_fp32_finds_on_a_real_photo(tmp_path, monkeypatch):
    monkeypatch.setenv("BLURDET_CACHE", str(tmp_path))
    img = cv2.imread(str(ultralytics_asset("bus.jpg")))
    dets = {}
    for precision in ("fp32", "int8"):
        det = build_detector(DetectorConfig(runtime="openvino", precision=precision, conf=0.3))  # imgsz 416: what ships
        assert det.engine.name == f"openvino-{precision}"
        dets[precision] = det([img])[0]
    ref = max(dets["fp32"], key=lambda d: d.conf)
    assert ref.name == "person" and ref.conf > 0.5
    best = max((d for d in dets["int8"] if d.cls == ref.cls), key=lambda d: _iou(d.xyxy, ref.xyxy))
    assert _iou(best.xyxy, ref.xyxy) > 0.75 and abs(best.conf - ref.conf) < 0.1


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.parametrize("kw,match", [
    ({"precision": "int4"}, "not a precision"),
    ({"precision": "int8", "half": True, "device": "auto"}, "half=True"),
    ({"precision": "int8", "backend": "ultralytics"}, "darknet backend only"),
])
def test_detector_precision_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        DetectorConfig(**kw)


# ---- the detector_variants experiment -------------------------------------------------------------
class BoxDetector:
    """Finds the bright rectangle of each frame (the bounding box of pixels above mid-grey) as a 'person',
    shifted right by ``shift`` of its width. It reads the pixels, so a variant fed other frames than the
    reference (another image, the sharp frame instead of the blurred one, an empty frame) finds other boxes."""

    names = ["person", "car"]

    def __init__(self, shift: float = 0.0) -> None:
        self.shift = shift
        self.calls = 0

    def __call__(self, frames):
        self.calls += len(frames)
        out = []
        for f in frames:
            ys, xs = np.nonzero(f.max(axis=2) > 127)
            if not len(xs):
                out.append([])
                continue
            x0, x1, y0, y1 = xs.min(), xs.max() + 1.0, ys.min(), ys.max() + 1.0
            dx = (x1 - x0) * self.shift
            out.append([Detection((x0 + dx, y0, x1 + dx, y1), 0.9, 0, "person")])
        return out


def _rectangles(folder, n=6, shape=(64, 80)):
    """n black frames, each with one white rectangle at its own place and size."""
    rng = np.random.default_rng(0)
    for i in range(n):
        img = np.zeros((*shape, 3), np.uint8)
        h, w = rng.integers(16, 28), rng.integers(16, 28)
        y, x = rng.integers(4, shape[0] - h - 4), rng.integers(4, shape[1] - w - 4)
        img[y:y + h, x:x + w] = 255
        cv2.imwrite(str(folder / f"im{i}.png"), img)


def test_detector_variants_scores_each_variant_against_the_reference(tmp_path):
    from configs import load_config
    from evaluation import EvalConfig
    from evaluation.detectors import run_detector_variants

    folder = tmp_path / "imgs"
    folder.mkdir()
    _rectangles(folder)
    cfg = load_config(EvalConfig, None, [f"data.sources=[{folder}/*.png]", f"out={tmp_path / 'run'}",
                                         "blur.severities=[0,3]", "bootstrap=40", "variants_gt=[]",
                                         "detector_variants={same: [imgsz=320], moved: [imgsz=320]}"])
    dets = {"reference": BoxDetector(), "same": BoxDetector(), "moved": BoxDetector(shift=1.0)}
    report = run_detector_variants(cfg, progress=False, detectors=dets)
    for sev in ("0", "3"):
        r = report["results"][sev]
        assert r["reference"]["map50"] == pytest.approx(1.0)
        assert r["same"]["delta_map50"] == pytest.approx(0.0)
        assert r["moved"]["delta_map50"] == pytest.approx(-1.0)  # shifted by 40 % of the width: IoU < 0.5
        assert r["moved"]["delta_map50_ci"][1] == pytest.approx(-1.0)
    assert dets["moved"].calls == 6 * 2 and dets["reference"].calls == 6 + 6 * 2  # + the ground truth pass
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["detectors"]["moved"]["overrides"] == ["imgsz=320"]
    assert "| 3 | moved |" in (tmp_path / "run" / "report.md").read_text()


def test_detector_variants_bad_override_names_the_variant(tmp_path):
    from configs import load_config
    from evaluation import EvalConfig
    from evaluation.detectors import run_detector_variants

    cfg = load_config(EvalConfig, None, [f"out={tmp_path}", "detector_variants={small: [imgsz=33]}"])
    with pytest.raises(ValueError, match=r"detector_variants\.small.*imgsz"):
        run_detector_variants(cfg, progress=False)


@pytest.mark.parametrize("native_bf16", [False, True])
def test_auto_precision_is_int8_on_every_cpu(monkeypatch, native_bf16):
    """auto on OpenVINO on a CPU: int8, with or without native bf16 (the fastest on every CPU measured, no loss
    against independent ground truth); a named precision is kept."""
    import runtime

    monkeypatch.setattr(runtime, "native_bf16", lambda device="cpu", runtime="torch": native_bf16)
    det = build_detector(DetectorConfig(runtime="openvino"))  # engines are built on the first call: cheap here
    assert det.engine.name == "openvino-int8"
    if native_bf16:
        assert build_detector(DetectorConfig(runtime="openvino", precision="bf16")).engine.name == "openvino-bf16"
    assert build_detector(DetectorConfig(runtime="torch")).engine is None  # eager fp32: the reference
