"""One engine per runtime: callables ``(B,C,H,W) float tensor -> float32 tensor`` for one input (C,H,W).

torch          eager PyTorch, channels_last; bf16 autocast on CPUs with native bf16; on CUDA fp16
               weights + a CUDA graph per input shape seen twice (replayed; the input is copied into a static
               buffer), at most GRAPH_CACHE_SIZE of them (least recently used evicted).
torch_compile  torch.compile(dynamic=False); mode="reduce-overhead" (CUDA graphs) on CUDA.
onnxruntime    ONNX export (cached) -> ORT CPUExecutionProvider, intra_op_num_threads pinned, dynamic batch.
openvino       the same ONNX export -> OpenVINO CPU, compiled per static input shape, INFERENCE_NUM_THREADS
               and INFERENCE_PRECISION_HINT set explicitly (f32, or bf16 where the CPU has it).
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from runtime.cache import cached_file, weights_digest

logger = logging.getLogger(__name__)

ONNX_OPSET = 17


def _frozen_copy(module: nn.Module, device: torch.device, dtype: torch.dtype | None = None,
                 channels_last: bool = False) -> nn.Module:
    """A deep copy in eval mode without gradients (the caller's module is never changed)."""
    m = copy.deepcopy(module).eval().to(device)
    if dtype is not None:
        m = m.to(dtype)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    for p in m.parameters():
        p.requires_grad_(False)
    return m


# ---- torch -----------------------------------------------------------------------------------------
RECOMPILE_LIMIT = 64  # torch_compile: compiled shapes per function before dynamo gives up (its default is 8)
GRAPH_CACHE_SIZE = 8  # CUDA graphs kept per engine (one per input shape, each with its own memory pool)


class _GraphCache:
    """At most ``capacity`` captured graphs, least recently used evicted first; a shape is captured only
    the second time it is seen, so one-off shapes (a partial last batch, a folder of mixed sizes) run
    eagerly and never pin a graph and its private memory pool.

    ``capture(x) -> graph`` builds a graph for ``x``'s shape; an evicted graph's ``close()`` is called.
    """

    def __init__(self, capture: Callable[[torch.Tensor], Any], capacity: int = GRAPH_CACHE_SIZE) -> None:
        if capacity < 1:
            raise ValueError(f"graph cache capacity must be >= 1, got {capacity}")
        self.capture = capture
        self.capacity = capacity
        self.graphs: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._seen: OrderedDict[tuple[int, ...], None] = OrderedDict()  # shapes seen once (bounded as well)

    def get(self, x: torch.Tensor) -> Any | None:
        """The graph for ``x``'s shape (captured now on its second sighting), or None: run ``x`` eagerly."""
        key = tuple(x.shape)
        graph = self.graphs.get(key)
        if graph is not None:
            self.graphs.move_to_end(key)
            return graph
        if key not in self._seen:
            self._seen[key] = None
            if len(self._seen) > 4 * self.capacity:
                self._seen.popitem(last=False)
            return None
        del self._seen[key]
        graph = self.graphs[key] = self.capture(x)
        if len(self.graphs) > self.capacity:
            old_key, old = self.graphs.popitem(last=False)
            old.close()
            logger.info("CUDA graph for input %s evicted (cache holds %d shapes)", old_key, self.capacity)
        return graph


class TorchEngine:
    """Eager (or torch.compile'd) PyTorch. fp16 converts the weights (CUDA); bf16 uses autocast."""

    def __init__(self, module: nn.Module, device: torch.device, precision: str, compile_mode: str | None = None,
                 cuda_graphs: bool = False) -> None:
        self.device = device
        self.precision = precision
        weight_dtype = torch.float16 if precision == "fp16" else torch.float32
        self.in_dtype = weight_dtype
        self.model = _frozen_copy(module, device, weight_dtype, channels_last=True)
        self.fn: Callable[[torch.Tensor], torch.Tensor] = self.model
        if compile_mode is not None:
            self.fn = torch.compile(self.model, mode=compile_mode, dynamic=False)
            # dynamic=False compiles once per input shape, and the pipeline warms every batch size 1..batch:
            # past dynamo's default of 8 recompiles a function falls back to eager for good
            from torch._dynamo import config as dynamo

            dynamo.recompile_limit = max(dynamo.recompile_limit, RECOMPILE_LIMIT)
        self.cuda_graphs = cuda_graphs and device.type == "cuda" and compile_mode is None
        self._graphs = _GraphCache(self._capture)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, self.in_dtype, non_blocking=True).contiguous(memory_format=torch.channels_last)
        if self.precision == "bf16":
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                return self.fn(x).float()
        return self.fn(x).float()

    def _capture(self, x: torch.Tensor) -> _CudaGraph:
        graph = _CudaGraph(self._forward, x.to(self.device))
        logger.info("CUDA graph captured for input %s (%s)", tuple(x.shape), self.precision)
        return graph

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        graph = self._graphs.get(x) if self.cuda_graphs else None
        if graph is not None:
            return graph(x)
        out = self._forward(x)
        # reduce-overhead (CUDA graph trees) reuses its output buffers on the next call
        return out.clone() if self.device.type == "cuda" and self.fn is not self.model else out


class _CudaGraph:
    """Capture ``fn`` on a static input buffer once; each call copies the input in and replays.

    Everything is made on the input's GPU: the static buffers, the warm-up and capture stream, the graph
    and its memory pool. Left to defaults, ``torch.cuda.graph`` captures on a stream of the *current*
    device (cuda:0 unless set), which fails or replays a stale output for an input on cuda:1 or higher.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor) -> None:
        self.device = example.device
        with torch.cuda.device(self.device):
            self.static_in = example.clone()
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(3):  # warm-up off the default stream (cuDNN autotune, allocator)
                    fn(self.static_in)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            # thread_local: the pipeline's other stage thread keeps running CUDA work (replays, copies) while
            # this one captures a new shape; the default global mode would make those calls illegal
            with torch.cuda.graph(self.graph, stream=stream, capture_error_mode="thread_local"):
                self.static_out = fn(self.static_in)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.cuda.device(self.device):
            self.static_in.copy_(x, non_blocking=True)
            self.graph.replay()
            return self.static_out.clone()

    def close(self) -> None:
        """Drop the graph and its static buffers; its private memory pool is then released by the next
        ``torch.cuda.empty_cache()`` (``torch.cuda.graph`` runs one as each capture starts) or when an allocation needs it."""
        self.graph.reset()
        self.static_in = self.static_out = None


# ---- ONNX export (shared by onnxruntime and openvino) ---------------------------------------------
def _library_versions(*names: str) -> dict[str, str]:
    import importlib.metadata as md

    out = {"torch": torch.__version__}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "absent"
    return out


def onnx_export(module: nn.Module, chw: tuple[int, int, int], cache_dir: Path, key_extra: str = "") -> Path:
    """Cached ONNX file of ``module`` (fp32, CPU) for inputs (B,C,H,W): batch dynamic, C,H,W fixed."""
    import onnx

    fields = {
        "weights": weights_digest(module),
        "chw": list(chw),
        "opset": ONNX_OPSET,
        "versions": _library_versions("onnx"),
        "extra": key_extra,
    }

    def build(tmp: Path) -> None:
        m = _frozen_copy(module, torch.device("cpu"), torch.float32)
        example = torch.zeros(1, *chw)
        logger.info("Exporting %s to ONNX for input (B,%d,%d,%d)", type(module).__name__, *chw)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python ints in shape arithmetic
            torch.onnx.export(m, (example,), str(tmp), dynamo=False, opset_version=ONNX_OPSET,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})

    def verify(path: Path) -> None:
        onnx.checker.check_model(onnx.load(str(path)))

    return cached_file(cache_dir, "onnx", ".onnx", fields, build, verify)


# ---- onnxruntime --------------------------------------------------------------------------------
class OnnxRuntimeEngine:
    """ONNX Runtime on the CPU (fp32). Batch is dynamic; one session per (C,H,W)."""

    def __init__(self, onnx_path: Path, threads: int) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no spin-waiting after a run: the detector, the decoder and the encoder share these cores
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.threads = threads

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().float().cpu().numpy())
        out = self.session.run(None, {self.input_name: arr})[0]
        return torch.from_numpy(out)


# ---- openvino -----------------------------------------------------------------------------------
class OpenVINOEngine:
    """OpenVINO on the CPU: the ONNX graph reshaped to each static input shape seen and compiled once for it."""

    OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}

    def __init__(self, onnx_path: Path, threads: int, precision: str) -> None:
        from runtime.openvino_core import core

        self.core = core()  # the process's one Core (runtime/openvino_core.py says why)
        self.onnx_path = onnx_path
        self.config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            "INFERENCE_NUM_THREADS": threads,
            "INFERENCE_PRECISION_HINT": self.OV_PRECISION[precision],
            "ENABLE_CPU_PINNING": False,  # the cores are shared with torch, the decoder and the encoder
        }
        self._requests: dict[tuple[int, ...], Any] = {}
        self.compiled: Any = None
        self._read()  # fail now (not on the first frame) if the file does not load

    def _read(self) -> Any:
        """The model: an ONNX export, or a packed int8 IR (runtime.quantize)."""
        if self.onnx_path.suffix == ".ovir":
            from runtime.quantize import read_packed

            return read_packed(self.core, self.onnx_path)
        return self.core.read_model(str(self.onnx_path))

    def _request(self, shape: tuple[int, ...]) -> Any:
        req = self._requests.get(shape)
        if req is None:
            from runtime.openvino_core import compile_model

            model = self._read()
            model.reshape({model.inputs[0].get_any_name(): list(shape)})  # static shapes compile to faster code
            self.compiled = compile_model(model, "CPU", self.config)
            req = self._requests[shape] = self.compiled.create_infer_request()
            logger.info("OpenVINO compiled for input %s: precision %s, %s threads", shape,
                        self.compiled.get_property("INFERENCE_PRECISION_HINT"),
                        self.compiled.get_property("INFERENCE_NUM_THREADS"))
        return req

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().float().cpu().numpy())
        req = self._request(tuple(arr.shape))
        out = req.infer({0: arr})[0]
        return torch.from_numpy(np.array(out, dtype=np.float32, copy=True))
