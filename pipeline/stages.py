"""Pipeline stages: plain callables ``__call__(batch) -> batch``, no threads inside (the runner and the sources own every thread), and
``build_stages(cfg)``, which builds them (and the models) from a PipelineConfig, independent of the source.

    SimulateBlur -> Preprocess -> Deblur | Detect -> Postprocess   front: inference thread | back: detect thread
    Annotate                                                       sink loop (calling thread)

The batch stays on the device from Preprocess to Detect: the uint8 frames are uploaded once
(on CUDA from pinned host memory, non-blocking, on their own stream) and converted there; the
deblurred tensor is mapped from [-1,1] to [0,1] and letterboxed to a stride multiple on the
device, then handed to the detector; boxes are mapped back to original-frame pixels.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from deblur.frames import SmallFrames, shrink_bgr
from deblur.kernel_deblur import luma_bgr, shrink, work_size
from detect import letterbox_tensor, scale_detections
from pipeline.config import PipelineConfig, machine_threads
from pipeline.sources import Frame

if TYPE_CHECKING:
    from detect import Detection

logger = logging.getLogger(__name__)



@dataclass
class Batch:
    """Frames travelling through the stages together (all the same size).

    frames: the input frames (after SimulateBlur: the blurred ones), (H,W,3) uint8 BGR each.
    blur: (B,3,h,w) RGB float [-1,1] on the device: the deblur input (h,w = the deblur size for a generator; for the
        kernel-aware deblurrer the frame's own, or on a CPU its work size, with the full frame's luma in ``grey``).
    grey: (B,1,H,W) float [0,1]: the full frame's luma, when ``blur`` is the kernel-aware deblurrer's work-size copy
        (it estimates the kernel on the full frame); else None.
    restored: (B,3,h',w') RGB float [-1,1] on the device: the deblurred frames (= blur with --no-deblur); h',w' = the
        deblur size (the frame's own when the kernel-aware deblurrer passed every frame of the batch through, but for
        its copy made by Preprocess: that copy).
    detections: one list of Detection per frame, in original-frame pixels.
    restored_bgr: (H,W,3) uint8 BGR per frame at the original size (only when an output shows images).
    canvases: the annotated output images (Annotate).
    kernels: (B,k,k) blur kernels the kernel-aware deblurrer estimated (None for a generator).
    input_detections: with --compare, one list of Detection per frame found on the input frame.
    """

    frames: list[Frame]
    blur: torch.Tensor | None = None
    grey: torch.Tensor | None = None
    restored: torch.Tensor | None = None
    detections: list[list["Detection"]] = field(default_factory=list)
    restored_bgr: list[np.ndarray] | None = None
    canvases: list[np.ndarray] | None = None
    kernels: torch.Tensor | None = None
    input_detections: list[list["Detection"]] | None = None

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def frame_size(self) -> tuple[int, int]:
        """(H, W) of the original frames."""
        return self.frames[0].bgr.shape[:2]


def scaled_size(h: int, w: int, long_side: int | None) -> tuple[int, int]:
    """(h, w) scaled so that max(h, w) == long_side (None: unchanged); at least 32 px each side."""
    if long_side is None or max(h, w) == long_side:
        return h, w
    g = long_side / max(h, w)
    return max(32, int(round(h * g))), max(32, int(round(w * g)))


class SimulateBlur:
    """Synthetic camera shake on every input frame (deblur.data.blur_synth), one fixed kernel per run."""

    def __init__(self, severity: int, seed: int = 0) -> None:
        from deblur.data.blur_synth import apply_kernel, shake_kernel

        self.kernel = shake_kernel(severity, seed)
        self._apply = apply_kernel
        self.severity = severity

    def __call__(self, batch: Batch) -> Batch:
        for f in batch.frames:
            f.bgr = self._apply(f.bgr, self.kernel)
        return batch


class Preprocess:
    """Frames (H,W,3) uint8 BGR -> batch.blur (B,3,h,w) RGB float [-1,1] on `device`.

    work_side (the kernel-aware deblurrer's on a CPU, deconvolving the luma): batch.blur is its work-size copy, shrunk
    from the uint8 frames (deblur.frames.shrink_bgr), and batch.grey the full frames' luma (deblur.kernel_deblur.
    luma_bgr): no RGB tensor of a full frame, and no [-1,1] round trip of one; at 1280x720 that saved ~5 ms of each
    frame's ~40 on one thread.

    On CUDA the uint8 batch is copied into pinned host memory, uploaded non-blocking on its own
    CUDA stream and converted (and resized) on the GPU. long_side resizes on the device
    (bilinear, antialiased) so the long side is that many pixels (never enlarging); None keeps the full frame.
    """

    def __init__(self, device: torch.device, long_side: int | None = None, channels_last: bool = True,
                 work_side: int = 0) -> None:
        self.device = device
        self.long_side = long_side
        self.work_side = work_side
        self.channels_last = channels_last
        self.cuda = device.type == "cuda"
        self._stream = torch.cuda.Stream(device) if self.cuda else None
        self._pinned: list[torch.Tensor] = []  # two host buffers, used in turn
        self._events: list[Any] = []
        self._turn = 0
        self._rgb: torch.Tensor | None = None  # BGR -> RGB channel index on the device

    def _upload(self, batch_bhwc: np.ndarray) -> torch.Tensor:
        """(B,H,W,3) uint8 -> the same on the device."""
        if not self.cuda:
            return torch.from_numpy(batch_bhwc)
        if not self._pinned or self._pinned[0].shape != batch_bhwc.shape:
            self._pinned = [torch.empty(batch_bhwc.shape, dtype=torch.uint8).pin_memory() for _ in range(2)]
            self._events = [None, None]
        i = self._turn = 1 - self._turn
        if self._events[i] is not None:
            self._events[i].synchronize()  # the previous upload from this buffer has finished
        host = self._pinned[i]
        host.numpy()[...] = batch_bhwc
        with torch.cuda.stream(self._stream):
            dev = host.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self._stream)
            self._events[i] = event
        torch.cuda.current_stream(self.device).wait_stream(self._stream)
        dev.record_stream(torch.cuda.current_stream(self.device))
        return dev

    def __call__(self, batch: Batch) -> Batch:
        frames = [f.bgr for f in batch.frames]
        work = work_size(frames[0].shape[:2], self.work_side)
        if work != frames[0].shape[:2]:  # the kernel deblurrer's copy and the full frame's luma, from the uint8 frames
            batch.grey = luma_bgr(frames)
            frames = [shrink_bgr(f, work) for f in frames]
        frames_bhwc = np.stack(frames)  # (B,H,W,3) uint8 BGR
        x = self._upload(frames_bhwc)
        x = x.permute(0, 3, 1, 2)  # (B,3,H,W) BGR uint8, pixel-interleaved strides (channels_last)
        if self.channels_last:
            x = x.flip(1).float()  # RGB float [0,255], still channels_last, as the generator takes it
        else:  # NCHW-contiguous: the channel gather changes the layout on the way (the kernel deblurrer's full-frame
            # ops run 2-4x slower on interleaved strides); an index tensor on the device, so CUDA does not sync
            if self._rgb is None or self._rgb.device != x.device:
                self._rgb = torch.tensor([2, 1, 0], device=x.device)
            x = x.index_select(1, self._rgb).float()
        # frames are never enlarged (a frame no longer than long_side keeps its size, as in the kernel deblurrer)
        small = not self.long_side or max(x.shape[2], x.shape[3]) <= self.long_side
        h, w = tuple(x.shape[2:]) if small else scaled_size(x.shape[2], x.shape[3], self.long_side)
        resized = (h, w) != tuple(x.shape[2:])
        if resized:
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        x = x.mul_(2.0 / 255.0).sub_(1.0)  # RGB [-1,1]
        if resized:  # antialiased bilinear can overshoot a little
            x = x.clamp_(-1.0, 1.0)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        batch.blur = x
        return batch


class Deblur:
    """batch.blur -> batch.restored with the generator ((B,3,H,W) RGB [-1,1] in and out).

    amp: 'fp32', 'bf16' (autocast; CPUs with AVX512-BF16/AMX, or CUDA) or 'fp16' (CUDA: the model is
    converted to half), as runtime.resolve_amp resolved it. channels_last converts the model's weights' layout.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, amp: str = "fp32", channels_last: bool = True) -> None:
        if amp not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"Deblur amp must be 'fp32', 'bf16' or 'fp16' (resolve 'auto' with runtime.resolve_amp), got {amp!r}")
        self.device = device
        self.amp = amp
        model = model.eval().to(device)
        if amp == "fp16":
            model = model.half()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model
        self.small = SmallFrames(32, "the generator")

    def __call__(self, batch: Batch) -> Batch:
        x, crop = self.small.pad(batch.blur)
        if self.amp == "fp16":
            out = self.model(x.half())
        elif self.amp == "bf16":
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                out = self.model(x)
        else:
            out = self.model(x)
        if out.shape != x.shape:
            raise ValueError(f"The deblur model returned shape {tuple(out.shape)} for input {tuple(x.shape)}; it must keep the shape.")
        batch.restored = crop(out.float().clamp_(-1.0, 1.0))
        return batch

    def counters(self) -> dict[str, int]:
        return {"small_frames": self.small.count}


class RuntimeDeblur:
    """batch.blur -> batch.restored through runtime.compile_module: onnxruntime / openvino (CPU; exported
    once per frame size and cached on disk), torch_compile, or torch on CUDA (fp16 + CUDA graphs).

    amp: 'fp32', 'bf16' or 'fp16' (resolved by runtime.resolve_amp). threads: intra-op threads of
    onnxruntime/openvino. The generator's pad-to-32 happens outside the exported graph.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, runtime: str, amp: str = "fp32",
                 threads: int = 0) -> None:
        from runtime import compile_module

        if amp not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"RuntimeDeblur amp must be 'fp32', 'bf16' or 'fp16' (resolve 'auto' with runtime.resolve_amp), got {amp!r}")
        self.engine = compile_module(model, None, runtime, device, amp, threads=threads, spatial_multiple=32)
        self.runtime = self.engine.runtime
        self.small = SmallFrames(32, "the generator")

    def __call__(self, batch: Batch) -> Batch:
        x, crop = self.small.pad(batch.blur)
        batch.restored = crop(self.engine(x).float().clamp_(-1.0, 1.0))
        return batch

    def counters(self) -> dict[str, int]:
        return {"small_frames": self.small.count}


class KernelDeblur:
    """batch.blur -> batch.restored with deblur.KernelDeblurrer (estimate the kernel, deconvolve); the
    kernels go to batch.kernels (the --show thumbnail). Sharp frames pass through (blur gating)."""

    def __init__(self, deblurrer: Any) -> None:
        self.deblurrer = deblurrer
        self._states: dict[int, tuple] = {}  # several streams: each keeps its own temporal state

    def __call__(self, batch: Batch) -> Batch:
        x01 = batch.blur.float().add(1.0).mul_(0.5)
        grey = batch.grey
        batch.grey = None  # a full-resolution float per frame: not carried on to the detector and the sinks
        bright = None if grey is None else self.deblurrer.bright_bgr([f.bgr for f in batch.frames], grey)
        streams = [f.stream for f in batch.frames]
        if not self.deblurrer.stateful or (not self._states and not any(streams)):  # stateless, or one stream so far
            batch.restored = self.deblurrer.restore(x01, grey=grey, bright=bright).mul_(2.0).sub_(1.0)
            batch.kernels = self.deblurrer.last_kernels
            return batch
        if not self._states:  # the first batch with another stream: the state so far was stream 0's
            self._states[0] = self.deblurrer.video_state()
        parts, kernels = [], [None] * len(streams)
        for stream in dict.fromkeys(streams):  # in order of first appearance; each stream's frames in their order
            idx = [i for i, s in enumerate(streams) if s == stream]
            self.deblurrer.set_video_state(self._states.get(stream))
            sub = (None, None) if grey is None else (grey[idx], None if bright is None else bright[idx])
            parts.append((idx, self.deblurrer.restore(x01[idx], grey=sub[0], bright=sub[1])))
            self._states[stream] = self.deblurrer.video_state()
            for j, i in enumerate(idx):
                kernels[i] = self.deblurrer.last_kernels[j]
        # a deblurrer with a work size returns sharp streams' frames at their size and the others' at the work size
        hw = min((tuple(p.shape[-2:]) for _, p in parts), key=lambda s: s[0] * s[1])
        restored = x01.new_empty((len(streams), 3, *hw))
        for idx, part in parts:
            restored[idx] = part if tuple(part.shape[-2:]) == hw else shrink(part, hw)
        size = max(k.shape[-1] for k in kernels)
        batch.restored = restored.mul_(2.0).sub_(1.0)
        batch.kernels = torch.stack([F.pad(k, [(size - k.shape[-1]) // 2] * 4) for k in kernels])
        return batch

    def reset(self) -> None:
        """After a warm-up: the temporal smoother forgets the warm-up frame's kernel (in every stream)."""
        self.deblurrer.reset()
        self._states.clear()

    def keep_up_with(self, fps: float) -> None:
        """A live source at ``fps``: unless refine.budget_ms is set, frames skip the refinement's warm iterations
        after a frame that took more than 0.8 of the frame interval (the deblurrer falls behind otherwise)."""
        r = self.deblurrer.cfg.refine
        if r.iters and r.background and not r.budget_ms:
            self.deblurrer.cfg = dataclasses.replace(
                self.deblurrer.cfg, refine=dataclasses.replace(r, budget_ms=800.0 / fps))
            logger.info("Kernel refinement keeps up with %.1f fps: warm iterations skipped after a frame over %.0f ms",
                        fps, 800.0 / fps)

    def close(self) -> None:
        """At the end of a run: stop the deblurrer's background refinement thread (refine.background)."""
        self.deblurrer.close()

    def counters(self) -> dict[str, int]:
        """KernelDeblurrer.counters(): nonfinite, small_frames, refine_failed, refine_skipped (in the run summary)."""
        return self.deblurrer.counters()


class DetectInput:
    """--compare: batch.blur (the input, as the deblurrer got it) -> batch.input_detections."""

    def __init__(self, detect: "Detect") -> None:
        self.detect = detect

    def __call__(self, batch: Batch) -> Batch:
        batch.input_detections = self.detect.run(batch.blur, batch.frame_size)
        return batch


class Identity:
    """--no-deblur: batch.restored = batch.blur."""

    def __call__(self, batch: Batch) -> Batch:
        batch.restored = batch.blur
        return batch


class Detect:
    """batch.restored (B,3,h,w) RGB [-1,1] on the device -> batch.detections in original-frame pixels.

    The tensor is mapped to [0,1], resized so the frame fits detector.imgsz (keeping the aspect)
    and padded with gray to imgsz x imgsz (or only to a stride multiple when detector.rect) on the
    device, then passed to the detector; boxes are mapped back (un-pad, un-scale, clip).
    """

    def __init__(self, detector: Any) -> None:
        self.detector = detector
        self.rect = bool(getattr(detector, "rect", False))

    def run(self, x: torch.Tensor, frame_size: tuple[int, int]) -> list[list["Detection"]]:
        """(B,3,h,w) RGB [-1,1] -> one list of Detection per frame, in original-frame pixels."""
        imgsz, stride = self.detector.imgsz, self.detector.stride
        x, info = letterbox_tensor(x.float(), (imgsz, imgsz), orig_hw=frame_size, auto=self.rect, stride=stride,
                                   signed=True)  # resized, then mapped to RGB [0,1]
        return [scale_detections(d, info) for d in self.detector(x)]

    def __call__(self, batch: Batch) -> Batch:
        batch.detections = self.run(batch.restored, batch.frame_size)
        return batch


class Postprocess:
    """batch.restored -> batch.restored_bgr: (H,W,3) uint8 BGR per frame at the original size.

    The conversion (resize back, [-1,1] -> uint8, RGB -> BGR) runs on the device; one copy to the host.
    """

    def __call__(self, batch: Batch) -> Batch:
        x = batch.restored
        h0, w0 = batch.frame_size
        if tuple(x.shape[2:]) != (h0, w0):
            x = F.interpolate(x.float(), size=(h0, w0), mode="bilinear", align_corners=False)
        x = ((x.float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
        x = x.flip(1).permute(0, 2, 3, 1).contiguous().cpu().numpy()  # (B,H,W,3) uint8 BGR
        batch.restored_bgr = list(x)
        if batch.kernels is not None:  # copied here, so that Annotate (sink loop) never touches the device
            batch.kernels = batch.kernels.detach().float().cpu()
        return batch


class Annotate:
    """-> batch.canvases: [input | deblurred] side by side (when deblurring) with boxes on the
    deblurred pane (the detector saw it), or the input with boxes (--no-deblur). With --compare the
    input pane gets the boxes found on the input; estimated kernels are drawn as a thumbnail in the
    deblurred pane's top-right corner."""

    def __init__(self, side_by_side: bool = True, labels: tuple[str, str] = ("input", "deblurred")) -> None:
        from detect import draw_detections

        self._draw = draw_detections
        self.side_by_side = side_by_side
        self.labels = labels

    def __call__(self, batch: Batch) -> Batch:
        canvases = []
        for i, frame in enumerate(batch.frames):
            dets = batch.detections[i] if batch.detections else []
            if self.side_by_side and batch.restored_bgr is not None:
                left = frame.bgr.copy() if batch.input_detections is None else self._draw(frame.bgr, batch.input_detections[i])
                left = _label(left, self.labels[0] + (f" ({len(batch.input_detections[i])})" if batch.input_detections else ""))
                right = self._draw(batch.restored_bgr[i], dets)
                if batch.kernels is not None:
                    draw_kernel(right, batch.kernels[i].detach().float().cpu().numpy())
                right = _label(right, self.labels[1] + (f" ({len(dets)})" if batch.input_detections else ""))
                canvases.append(np.concatenate([left, right], axis=1))
            else:
                canvases.append(self._draw(frame.bgr, dets))
        batch.canvases = canvases
        return batch


def draw_kernel(img_bgr: np.ndarray, kernel: np.ndarray, side: int = 0) -> np.ndarray:
    """Draw a (k,k) blur kernel as a white-on-black thumbnail in the top-right corner (in place).

    ``side`` 0 = about a sixth of the image's short side (at least 32 px); the kernel is scaled to its peak.
    """
    h, w = img_bgr.shape[:2]
    side = side or max(32, min(h, w) // 6)
    if side + 4 > min(h, w):
        return img_bgr
    peak = float(kernel.max()) if np.isfinite(kernel).all() else 0.0
    tile = np.zeros(kernel.shape, np.uint8) if peak <= 0 else np.clip(kernel / peak * 255.0, 0, 255).astype(np.uint8)
    tile = cv2.resize(tile, (side, side), interpolation=cv2.INTER_NEAREST)
    x0, y0 = w - side - 2, 2
    img_bgr[y0 : y0 + side, x0 : x0 + side] = tile[..., None]
    cv2.rectangle(img_bgr, (x0 - 1, y0 - 1), (x0 + side, y0 + side), (0, 200, 255), 1)
    return img_bgr


def _label(img_bgr: np.ndarray, text: str) -> np.ndarray:
    """Small white-on-black caption in the bottom-left corner (in place)."""
    h = img_bgr.shape[0]
    scale = max(0.35, h / 900)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(img_bgr, (0, h - th - base - 4), (tw + 4, h), (0, 0, 0), -1)
    cv2.putText(img_bgr, text, (2, h - base - 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return img_bgr


# ---- building the stages ---------------------------------------------------------------------------
Stage = Callable[[Batch], Batch]
SHAPE_SPECIALISED_RUNTIMES = ("torch_compile", "openvino")  # build an engine per input shape (as CUDA graphs do)


def stage_threads(cfg: PipelineConfig) -> int:
    """torch intra-op threads of each stage thread: ``threads`` (0 = this machine's CPUs), halved with overlap."""
    n = cfg.threads or machine_threads()
    return max(1, n // 2) if cfg.overlap else n


@dataclass
class Stages:
    """The source-independent part of a run: the stages in order and what the summary reports about them.

    front: [simulate_blur], preprocess, deblur (the inference thread).
    back: detect, [detect_input], [postprocess] (the detect thread with overlap, else the inference thread).
    annotate: the sink loop's stage (None when no output shows images).
    per_shape: an engine is built per input shape (CUDA graphs, torch_compile, openvino), so every batch size
    that can occur is warmed up ahead.
    """

    front: list[tuple[str, Stage]]
    back: list[tuple[str, Stage]]
    annotate: Annotate | None
    detector: Any
    device: torch.device
    amp: str
    runtime: str
    per_shape: bool

    @property
    def detector_runtime(self) -> str:
        return getattr(getattr(self.detector, "engine", None), "name", None) or "torch"


def build_stages(cfg: PipelineConfig, *, deblur_model: torch.nn.Module | None = None, detector: Any = None) -> Stages:
    """The models and stages ``cfg`` asks for. deblur_model: an nn.Module ((B,3,H,W) RGB [-1,1] -> same) instead of
    cfg.deblur_weights; detector: an object with the detect.Detector interface instead of cfg.detector."""
    from runtime import resolve_runtime

    if detector is None:
        from detect import build_detector

        det_cfg = cfg.detector
        if cfg.runtime != "torch" and det_cfg.backend == "darknet" and det_cfg.runtime == "torch":
            det_cfg = dataclasses.replace(det_cfg, runtime=cfg.runtime)  # --runtime applies to both models
        detector = build_detector(det_cfg)
    device = torch.device(getattr(detector, "device", "cpu"))
    runtime = resolve_runtime(cfg.runtime, device)
    amp, deblur = "fp32", Identity()
    if cfg.deblur:
        amp, deblur = _build_deblur(cfg, deblur_model, device, runtime)
    # a generator deblurs a copy of deblur_side (the full frame with auto: the detector-scale evidence is the kernel
    # deblurrer's); the kernel-aware deblurrer takes the full frame (its own work_side)
    generator = cfg.deblur and not isinstance(deblur, KernelDeblur)
    side = 0 if generator and cfg.deblur_size == "auto" else cfg.deblur_side
    long_side = (side if generator else 0) or None
    channels_last = cfg.channels_last and cfg.deblur and runtime == "torch"
    front: list[tuple[str, Stage]] = []
    if cfg.simulate_blur:
        front.append(("simulate_blur", SimulateBlur(cfg.simulate_blur, cfg.blur_seed)))
    # the kernel deblurrer's work-size copy is made here from the uint8 frames where that is its best (shrinks_uint8)
    kernel = deblur.deblurrer if isinstance(deblur, KernelDeblur) else None
    work_side = kernel.cfg.work_side if kernel is not None and kernel.shrinks_uint8 else 0
    front += [("preprocess", Preprocess(device, long_side, channels_last=channels_last, work_side=work_side)),
              ("deblur", deblur)]
    detect = Detect(detector)
    back: list[tuple[str, Stage]] = [("detect", detect)]
    if cfg.compare and cfg.deblur:
        back.append(("detect_input", DetectInput(detect)))
    need_images = bool(cfg.show or cfg.save)
    if need_images and cfg.deblur:
        back.append(("postprocess", Postprocess()))
    runtimes = (runtime if cfg.deblur else "torch", getattr(detector, "runtime", "torch"))
    per_shape = device.type == "cuda" or any(r in SHAPE_SPECIALISED_RUNTIMES for r in runtimes)
    logger.info("Pipeline: device=%s deblur=%s amp=%s deblur_size=%s batch=%d max_latency=%.0f ms threads=%d",
                device, cfg.deblur, amp, f"auto (long side {side or 'of the frame'})" if cfg.deblur_size == "auto"
                else cfg.deblur_size, cfg.batch, cfg.max_latency, stage_threads(cfg))
    return Stages(front, back, Annotate(side_by_side=cfg.deblur) if need_images else None, detector, device, amp,
                  runtime, per_shape)


def _build_deblur(cfg: PipelineConfig, model: torch.nn.Module | None, device: torch.device,
                  runtime: str) -> tuple[str, Stage]:
    """(amp, stage) for the weights: a kernel estimator file -> KernelDeblur (estimate the kernel, deconvolve);
    a generator file (or an injected model) -> Deblur (eager torch on the CPU) or RuntimeDeblur."""
    threads = stage_threads(cfg)
    if model is None:
        from deblur.models import DEFAULT_DEBLURRER, ESTIMATOR_FORMAT, file_format, load_generator

        weights = cfg.deblur_weights or str(DEFAULT_DEBLURRER)
        try:
            if file_format(weights) == ESTIMATOR_FORMAT:
                from deblur.kernel_deblur import KernelDeblurrer

                logger.info("Deblur: kernel estimate + Wiener deconvolution, estimator %s", weights)
                kernel_cfg = dataclasses.replace(cfg.kernel, work_side=cfg.deblur_side)
                deblurrer = KernelDeblurrer(weights, device=device, runtime=runtime, threads=threads, cfg=kernel_cfg)
                if kernel_cfg.refiner == "" and deblurrer.refiner is None:
                    logger.warning("--refiner: %s has no refiner bundled, so the deconvolution runs alone. Fix: bundle "
                                   "one (python -m deblur.models --bundle) or give kernel.refiner=PATH", weights)
                return "fp32", KernelDeblur(deblurrer)
            model, gen_cfg = load_generator(weights, device=str(device))
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"{e} -- For the pipeline: pass --deblur-weights PATH, or run without deblurring (--no-deblur)."
            ) from e
        logger.info("Deblur: %s from %s", gen_cfg.name, weights)
    from runtime import resolve_amp

    amp = resolve_amp(cfg.amp, device, runtime)
    if runtime != "torch" or device.type == "cuda":
        return amp, RuntimeDeblur(model, device, runtime, amp=amp, threads=threads)
    return amp, Deblur(model, device, amp=amp, channels_last=cfg.channels_last)
