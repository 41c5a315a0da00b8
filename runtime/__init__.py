"""Inference runtimes behind one call: ``compile_module(module, example_shape, runtime, ...)`` -> callable.

    from runtime import compile_module
    engine = compile_module(generator, (1, 3, 360, 640), runtime="auto", device="cpu", spatial_multiple=32)
    restored = engine(blur)          # (B,3,H,W) float tensor -> float32 tensor on the device; engine.name

Runtimes (``RUNTIMES``): ``torch`` (eager, channels_last; on CUDA fp16 + CUDA graphs), ``torch_compile``
(torch.compile; mode="reduce-overhead" on CUDA), ``onnxruntime`` (CPU), ``openvino`` (CPU) and ``auto``:
the fastest available for the device, measured by bench/realtime.py: CPU -> openvino, else onnxruntime,
else torch; CUDA -> torch (fp16 + CUDA graphs). ONNX exports are cached on disk (``cache_dir``, default
``$BLURDET_CACHE`` or ``~/.cache/blurdet``), keyed by the weights' sha256, the input (C,H,W), the opset and
the torch/onnx versions; a stale or corrupt entry is deleted and rebuilt.

The device and precision policy live here too, one function each: ``resolve_device`` ('auto' = CUDA when
available, else the CPU; the default of every entry point) and ``resolve_precision`` (names in ``PRECISIONS``;
``resolve_amp`` for the deblur models and training, ``TORCH_DTYPES`` for name -> dtype, ``native_bf16`` the
one bf16 probe).

This package imports torch (and onnx/onnxruntime/openvino when they are used), never our other packages.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from runtime.cache import CACHE_ENV, default_cache_dir, remove_entry, weights_digest
from runtime.memory import keep_large_allocations
from runtime.quantize import Calibration, quantize_onnx

logger = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "torch_compile", "onnxruntime", "openvino")
# The one list of precision names: every config check and every --amp/--precision choice uses it.
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
PRECISION_ALIASES = {"none": "fp32"}  # deprecated names -> PRECISIONS ('none' meant no autocast: fp32)
# The one precision name -> torch dtype mapping (autocast, weight conversion); int8 has no torch dtype here.
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICE_CHOICES = "'auto' (CUDA when available, else the CPU), 'cpu', 'cuda' or 'cuda:N'"
CPU_ONLY = ("onnxruntime", "openvino")
AUTO_ORDER = {"cpu": ("openvino", "onnxruntime", "torch"), "cuda": ("torch",)}
_NEEDS = {"onnxruntime": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino")}
_LOGGED_DEVICES: set[str] = set()  # the resolved devices this process has logged
_WARNED_ALIASES: set[str] = set()  # deprecated precision names this process has warned about

__all__ = [
    "AUTO_ORDER", "CACHE_ENV", "DEVICE_CHOICES", "PRECISIONS", "PRECISION_ALIASES", "RUNTIMES", "TORCH_DTYPES",
    "CompiledModule", "available_runtimes", "check_precision", "compile_module", "default_cache_dir",
    "keep_large_allocations", "native_bf16", "resolve_amp", "resolve_device", "resolve_precision", "resolve_runtime",
    "weights_digest",
]


def resolve_device(device: str | torch.device = "auto", key: str = "device") -> torch.device:
    """The one device choice, as Ultralytics' select_device: 'auto' -> CUDA when torch sees a GPU, else the CPU;
    'cpu', 'cuda' and 'cuda:N' are checked against this machine. ``key`` names the setting in errors (ValueError
    naming the value, the valid choices and the fix). Each choice is logged once per process."""
    asked = str(device)
    if asked == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"{key}={asked!r} is not a device. Valid: {DEVICE_CHOICES}. Fix: {key}=auto.") from e
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(f"{key}={asked!r} is not supported. Valid: {DEVICE_CHOICES}. Fix: {key}=auto.")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"{key}={asked!r} but CUDA is not available on this machine (torch sees no GPU). "
                             f"Fix: {key}=auto (the CPU here) or {key}=cpu.")
        count = torch.cuda.device_count() if dev.type == "cuda" else 0
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"{key}={asked!r} but only {count} CUDA device(s) exist here: cuda:0 .. cuda:{count - 1}. "
                             f"Fix: {key}=cuda:0 (or auto).")
    if str(dev) not in _LOGGED_DEVICES:
        _LOGGED_DEVICES.add(str(dev))
        if dev.type == "cuda":
            try:
                what = torch.cuda.get_device_name(dev)
            except (AssertionError, RuntimeError):  # a torch built without CUDA, or no driver
                what = "GPU"
        else:
            what = "CUDA not available" if asked == "auto" else "asked for"
        logger.info("Device: %s (%s; %s=%s)", dev, what, key, asked)
    return dev


def native_bf16(device: str | torch.device = "cpu", runtime: str = "torch") -> bool:
    """The one bf16 probe: True where ``runtime`` runs bf16 natively on ``device``; elsewhere bf16 is emulated and
    slower than fp32 (CPU) or fp16 (GPU).

    cuda: compute capability >= 8 (Ampere on). cpu with runtime 'openvino': OpenVINO's CPU plugin reports BF16.
    cpu otherwise: torch sees AMX or AVX512-BF16.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(dev)[0] >= 8
    if runtime == "openvino":
        from runtime.openvino_core import core

        return "BF16" in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def check_precision(precision: str, key: str = "precision", int8: bool = True) -> str:
    """A precision name -> its name in PRECISIONS. A deprecated alias ('none' = fp32) is accepted, with a warning
    once per process; anything else is a ValueError naming ``key``, the valid names and the closest one.
    int8=False: the setting of a deblur model or of training, where int8 (the detector's, NNCF-calibrated
    OpenVINO) is an error too."""
    if precision == "int8" and not int8:
        raise ValueError(f"{key}='int8': int8 is the detector's precision (detect.precision, OpenVINO, calibrated); "
                         f"the deblur models and training run fp32, bf16 or fp16. Fix: {key}=auto.")
    if precision in PRECISIONS:
        return precision
    if precision in PRECISION_ALIASES:
        new = PRECISION_ALIASES[precision]
        if precision not in _WARNED_ALIASES:
            _WARNED_ALIASES.add(precision)
            logger.warning("%s=%r is deprecated: it means %r. Fix: write %s=%s", key, precision, new, key, new)
        return new
    close = difflib.get_close_matches(str(precision), PRECISIONS, n=2, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"{key}={precision!r} is not a precision. Valid: {list(PRECISIONS)}.{hint} "
                     f"Fix: {key}=auto (the policy picks per device and runtime).")


def resolve_amp(amp: str, device: str | torch.device, runtime: str = "torch", training: bool = False,
                key: str = "amp") -> str:
    """The precision a deblur model or training runs in: ``amp`` (a name in PRECISIONS, or a deprecated alias)
    -> 'fp32', 'bf16' or 'fp16' by resolve_precision, for ``runtime`` (already resolved) on ``device``. The caller
    maps the name to a dtype with TORCH_DTYPES. int8 is the detector's alone (NNCF-calibrated OpenVINO):
    ValueError here. Other errors name ``key`` and the fix."""
    amp = check_precision(amp, key, int8=False)
    try:
        return resolve_precision(amp, runtime, device, training=training)
    except ValueError as e:
        raise ValueError(f"{key}={amp!r} on {torch.device(device)}: {e}") from e


def available_runtimes(device: str | torch.device = "cpu") -> dict[str, str | None]:
    """Every concrete runtime -> None if it can run on ``device`` here, else the reason it cannot."""
    dev = torch.device(device)
    out: dict[str, str | None] = {}
    for name in RUNTIMES[1:]:
        missing = [m for m in _NEEDS.get(name, ()) if importlib.util.find_spec(m) is None]
        if missing:
            out[name] = f"Python package(s) {missing} not installed (pip install {' '.join(missing)})"
        elif name in CPU_ONLY and dev.type != "cpu":
            out[name] = f"{name} runs on the CPU only here (device is {dev})"
        else:
            out[name] = None
    return out


def resolve_runtime(runtime: str, device: str | torch.device = "cpu") -> str:
    """'auto' -> the fastest runtime available for ``device``; a named one is checked. ValueError otherwise."""
    dev = torch.device(device)
    if runtime not in RUNTIMES:
        raise ValueError(f"Unknown runtime {runtime!r}. Valid: {list(RUNTIMES)} ('auto' picks the fastest here).")
    avail = available_runtimes(dev)
    if runtime == "auto":
        for name in AUTO_ORDER.get(dev.type, ("torch",)):
            if avail[name] is None:
                return name
        return "torch"
    if avail[runtime] is not None:
        usable = [k for k, v in avail.items() if v is None]
        raise ValueError(f"runtime {runtime!r} cannot run on {dev}: {avail[runtime]}. Usable here: {usable}; "
                         "or use runtime='auto'.")
    return runtime


def resolve_precision(precision: str, runtime: str, device: str | torch.device = "cpu", training: bool = False) -> str:
    """'auto' | 'fp32' | 'bf16' | 'fp16' | 'int8' -> the precision ``runtime`` (already resolved) uses on ``device``.

    The one precision policy: the pipeline, Deblurrer, the darknet backend and training all ask here.

        asked  device  runtime                    -> precision
        auto   cuda    torch, torch_compile       -> fp16; training: bf16 on GPUs with native bf16, else fp16
        auto   cpu     torch, torch_compile       -> bf16 on CPUs with native bf16 (AMX/AVX512-BF16), else fp32
        auto   cpu     openvino                   -> bf16 where OpenVINO's CPU plugin reports it, else fp32
        auto   cpu     onnxruntime                -> fp32 (its CPU provider runs fp32 only)
        fp16   cpu     any                        -> ValueError: fp16 needs CUDA
        bf16   cpu     onnxruntime                -> ValueError: fp32 only
        bf16   cpu/cuda without native bf16       -> bf16, with a warning: emulated, several times slower
        int8   cpu     openvino                   -> int8 (NNCF-quantized, calibrated; never picked by 'auto' here:
                                                     the model's owner says where its cost was measured)
        int8   any     others                     -> ValueError: int8 runs on OpenVINO only
        any    cuda    onnxruntime, openvino      -> ValueError: CPU-only runtimes

    Inference takes fp16 on CUDA: on every GPU, as fast as bf16 on tensor cores, 3 more mantissa bits. Training
    takes bf16 where it is native: fp32's range, so no loss scaling, and GAN losses cannot overflow it.
    """
    dev = torch.device(device)
    precision = check_precision(precision)
    if runtime in CPU_ONLY and dev.type != "cpu":
        raise ValueError(f"runtime {runtime!r} runs on the CPU only; device is {dev}. "
                         "Fix: runtime='torch' (or 'auto') on CUDA, or device='cpu'.")
    if precision == "auto":
        if dev.type == "cuda":
            return "bf16" if training and native_bf16(dev) else "fp16"
        if runtime == "onnxruntime":
            return "fp32"
        return "bf16" if native_bf16(dev, runtime) else "fp32"
    if precision == "int8" and runtime != "openvino":
        raise ValueError(f"precision 'int8' runs on runtime 'openvino' only (an NNCF-quantized OpenVINO model); got "
                         f"runtime {runtime!r}. Fix: runtime='openvino' (or 'auto') on the CPU, or precision='auto'.")
    if precision == "fp16" and dev.type != "cuda":
        raise ValueError(f"precision 'fp16' with runtime {runtime!r} needs CUDA (device is {dev}). "
                         "Fix: precision='fp32' (or 'bf16' on AMX/AVX512-BF16 CPUs) or 'auto'.")
    if precision == "bf16" and runtime == "onnxruntime":
        raise ValueError("onnxruntime (CPU provider) runs fp32 only; got precision 'bf16'. "
                         "Fix: precision='fp32', or runtime='openvino' for bf16.")
    if precision == "bf16" and dev.type == "cpu" and not native_bf16(dev, runtime):
        logger.warning("precision bf16 on a CPU without AMX/AVX512-BF16: emulated, expect it several times "
                       "slower than fp32 (use precision='auto' or 'fp32')")
    if precision == "bf16" and dev.type == "cuda" and not native_bf16(dev):
        logger.warning("precision bf16 on %s, a GPU without native bf16 (compute capability < 8): emulated, "
                       "expect it slower than fp16 (use precision='auto' or 'fp16')", dev)
    return precision


def _pad_to(x: torch.Tensor, multiple: int, mode: str, value: float) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not (ph or pw):
        return x
    if mode == "constant":
        return F.pad(x, (0, pw, 0, ph), mode="constant", value=value)
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class CompiledModule:
    """A module run by one runtime: ``__call__(x: (B,C,H,W) float tensor) -> float32 tensor on the device``.

    Inputs are padded right/bottom to a multiple of ``spatial_multiple`` outside the engine (reflect, or
    constant ``pad_value``); a 4-D output with the padded H,W is cropped back. Engines are built per input
    (C,H,W) on first use (torch: shape-agnostic). Attributes: name ('openvino-fp32', ...), runtime,
    precision, device, threads.
    """

    def __init__(self, module: nn.Module, runtime: str, device: torch.device, precision: str,
                 cache_dir: Path, key_extra: str, threads: int, spatial_multiple: int, pad_mode: str,
                 pad_value: float, cuda_graphs: bool,
                 calibration: Calibration | None = None,
                 int8_ignored: Sequence[str] = ()) -> None:
        self.module = module
        self.runtime = runtime
        self.device = device
        self.precision = precision
        self.cache_dir = Path(cache_dir)
        self.key_extra = key_extra
        self.threads = threads
        self.spatial_multiple = spatial_multiple
        self.pad_mode = pad_mode
        self.pad_value = pad_value
        self.cuda_graphs = cuda_graphs
        self.calibration = calibration
        self.int8_ignored = tuple(int8_ignored)
        self.name = f"{runtime}-{precision}" + ("-cudagraph" if runtime == "torch" and cuda_graphs and device.type == "cuda" else "")
        self._engines: dict[tuple[int, ...], Callable[[torch.Tensor], torch.Tensor]] = {}
        self._shared: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __repr__(self) -> str:
        return f"CompiledModule({type(self.module).__name__}, {self.name}, device={self.device}, threads={self.threads})"

    def _build(self, chw: tuple[int, int, int]) -> Callable[[torch.Tensor], torch.Tensor]:
        from runtime import engines

        if self.runtime in ("torch", "torch_compile"):
            if self._shared is None:
                mode = None
                if self.runtime == "torch_compile":
                    mode = "reduce-overhead" if self.device.type == "cuda" else "default"
                self._shared = engines.TorchEngine(self.module, self.device, self.precision, compile_mode=mode,
                                                   cuda_graphs=self.cuda_graphs)
            return self._shared
        for attempt in (1, 2):
            path = engines.onnx_export(self.module, chw, self.cache_dir, self.key_extra)
            if self.precision == "int8":
                path = quantize_onnx(path, self.calibration, chw, self.cache_dir, self.int8_ignored)  # type: ignore[arg-type]
            try:
                if self.runtime == "onnxruntime":
                    return engines.OnnxRuntimeEngine(path, self.threads)
                # int8: the FakeQuantize nodes carry the precision; the ops left in float run fp32
                return engines.OpenVINOEngine(path, self.threads, "fp32" if self.precision == "int8" else self.precision)
            except Exception as e:  # noqa: BLE001 - a file the runtime cannot load is rebuilt once
                if attempt == 2:
                    raise RuntimeError(f"{self.runtime} cannot load the fresh export {path}: {e}. Try runtime='torch'.") from e
                logger.warning("%s cannot load cached export %s (%s); deleting and rebuilding it", self.runtime, path, e)
                remove_entry(path)
        raise AssertionError("unreachable")

    def prepare(self, shape: Sequence[int]) -> None:
        """Build (or load from the cache) the engine for inputs of ``shape`` (B,C,H,W) and run it once."""
        x = torch.zeros(tuple(shape), device=self.device)
        self(x)
        if self.runtime == "torch" and self.cuda_graphs and self.device.type == "cuda":
            self(x)  # a shape is captured on its 2nd call (engines._GraphCache): capture it now, at warm-up

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"{self.name}: expected a (B,C,H,W) tensor, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        xp = _pad_to(x, self.spatial_multiple, self.pad_mode, self.pad_value) if self.spatial_multiple > 1 else x
        chw = tuple(int(s) for s in xp.shape[1:])
        engine = self._engines.get(chw)
        if engine is None:
            engine = self._engines[chw] = self._build(chw)  # type: ignore[arg-type]
        out = engine(xp)
        if out.device != self.device:
            out = out.to(self.device, non_blocking=True)
        if out.ndim == 4 and tuple(out.shape[-2:]) == tuple(xp.shape[-2:]) and xp is not x:
            out = out[..., :h, :w]
        return out


def compile_module(
    module: nn.Module,
    example_shape: Sequence[int] | None = None,
    runtime: str = "auto",
    device: str | torch.device = "auto",
    precision: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    key_extra: str = "",
    threads: int = 0,
    spatial_multiple: int = 1,
    pad_mode: str = "reflect",
    pad_value: float = 0.0,
    cuda_graphs: bool = True,
    calibration: Calibration | None = None,
    int8_ignored: Sequence[str] = (),
) -> CompiledModule:
    """Run ``module`` (eval mode; the caller's copy is not changed) with ``runtime`` on ``device``.

    example_shape: (B,C,H,W) to build and warm the engine for now (None: on the first call).
    precision: 'auto' | 'fp32' | 'bf16' | 'fp16' (see resolve_precision). threads: intra-op threads of
    onnxruntime/openvino (0 = torch.get_num_threads()); torch's own count is the process's to set.
    key_extra: anything else the export depends on (part of the cache key).
    spatial_multiple / pad_mode / pad_value: pad inputs outside the engine (see CompiledModule).
    cuda_graphs: runtime 'torch' on CUDA replays a CUDA graph per input shape seen twice (at most
    ``engines.GRAPH_CACHE_SIZE``, least recently used evicted).
    calibration: precision 'int8' only: a ``runtime.quantize.Calibration`` (the real inputs, already padded to
    ``spatial_multiple``, from the training corpus, never the evaluation set; built only on a cache miss).
    int8_ignored: substrings of ONNX node names that int8 keeps in float (e.g. the output heads).
    """
    dev = resolve_device(device)
    name = resolve_runtime(runtime, dev)
    prec = resolve_precision(precision, name, dev)
    if prec == "int8" and calibration is None:
        raise ValueError("precision 'int8' needs calibration samples (compile_module(..., calibration=Calibration(...))).")
    if pad_mode not in ("reflect", "replicate", "constant"):
        raise ValueError(f"Unknown pad_mode {pad_mode!r}. Valid: ['reflect', 'replicate', 'constant']")
    threads = threads or torch.get_num_threads()
    compiled = CompiledModule(module, name, dev, prec, Path(cache_dir) if cache_dir else default_cache_dir(),
                              key_extra, threads, max(1, int(spatial_multiple)), pad_mode, pad_value, cuda_graphs,
                              calibration, int8_ignored)
    logger.info("Runtime %s (asked %s/%s) on %s, %d thread(s), for %s", compiled.name, runtime, precision, dev,
                threads, type(module).__name__)
    if example_shape is not None:
        compiled.prepare(example_shape)
    return compiled
