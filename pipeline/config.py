"""Typed config of the streaming pipeline: one frozen dataclass, every default lives here.

Keys match the command-line flags (``--save-json`` -> ``save_json``) and, where Ultralytics has
a name, Ultralytics' names. The detector's own options (conf, iou, classes, imgsz, device, half)
live in the nested ``detector`` section, a :class:`detect.DetectorConfig`; the deblur model runs
on ``detector.device`` so the batch is handed from deblur to detect without leaving the device.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Literal

from configs.loader import check_range
from deblur.kernel_deblur import KernelDeblurConfig
from deblur.kernel_refine import VIDEO_REFINE
from detect.config import DetectorConfig
from pipeline.sources import is_streams_file
from runtime import CPU_ONLY, PRECISIONS, RUNTIMES, check_precision, resolve_device


def machine_threads() -> int:
    """The CPUs this process may run on: its affinity mask (what taskset or a container's cpuset allows), which can
    be fewer than the host's cores; os.cpu_count() where there is no affinity call (macOS, Windows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# The pipeline's kernel refinement: the video mode with its full refinements in a background thread, every 32 frames,
# and two warm-started iterations on every frame. Introduced at every 16: on bench/temporal.py's drifting blur
# (640x360, 1 thread) it gained +3.29 dB [2.83, 3.63] over no refinement (+0.06 dB) for 31 against 18 ms a frame;
# the synchronous --refine-every 8 gained +3.68 dB at 24 ms a frame on average but stalls a frame for each full
# refinement: on a live 640x360 feed (25 fps, shake 3) it dropped 17 of 150 frames (p95 latency 118 ms), this
# default none (p50 52, p95 89 ms); no refinement (--refine 0): none, p50 37 ms. On a live source the runner also sets
# refine.budget_ms (KernelDeblur.keep_up_with), so that a loaded machine skips warm iterations rather than frames.
# docs/results/2026-12-07_hot_path.md
# The warm iterations run on a 256-px tile at every size: at 1280x720 (where a full refinement's tile is 384 px) it
# gained the same (+4.00 against +3.98 dB) at 69 against 84 ms a frame (1 thread); 192 px lost 0.9 dB.
# Every 32 rather than 16 frames: on the drifting blur (1 thread, deblurring at the detector's scale) the same gain at
# 640x360, 1280x720 and 1920x1080 (-0.05 [-0.18, +0.08], +0.02 [-0.05, +0.12], +0.03 [+0.00, +0.06] dB) for half the
# background thread's work: +0.8 and +1.6 fps at 1280x720 in two alternated pairs of bench/realtime.py rows
# One start for the full refinements (images refine from four, refine.starts): four gained +0.16 dB [+0.02, +0.32] on
# the drifting blur (bench/temporal.py, 640x360, foreground every 32), but at 1280x720 the pipeline fell from 27-30 to
# 22-24 fps with them (bench/realtime.py --kernel-options "refine.starts=[1,0.5,2,0]", two runs; target 25)
# The full refinements on a 256-px tile (images: up to the whole frame, refine.tile)
PIPELINE_REFINE = dataclasses.replace(VIDEO_REFINE, every=32, warm_iters=2, warm_tile=256, background=True)


@dataclass(frozen=True)
class PipelineConfig:
    """Options of `python -m pipeline` (see `python -m pipeline --help` for the flag of each)."""

    # --- input
    source: str = "demo"  # demo | cam0 | 0 | video file | image/dir/glob | rtsp:// rtmp:// http(s):// | list.streams
    vid_stride: int = 1  # keep every Nth frame of the source (indices stay the source's)
    max_frames: int = 0  # stop after this many frames (0 = until the source ends)
    queue_size: int = 8  # frames a file/image source decodes ahead (blocking put: backpressure)
    realtime: bool = False  # play a video file at its frame rate as a live feed: newest frame wins, late ones dropped
    reconnect_attempts: int = 5  # camera/stream: reconnects (exponential backoff) before giving up
    reconnect_delay: float = 0.5  # seconds before the first reconnect; doubles each time (max 8 s)
    open_timeout: float = 10.0  # seconds to open a network stream / wait for its next packet
    simulate_blur: int = 0  # synthetic camera-shake blur on every input frame: 0 = off, 1..5 severity
    blur_seed: int = 0  # seed of the (fixed per run) shake kernel
    # --- deblur
    deblur: bool = True  # False: the same pipeline without the deblurring stage
    deblur_weights: str = ""  # a kernel estimator or a generator file; "" = the shipped kernel estimator
    # full: deblur the full frame; N or detector (= detector.imgsz): the kernel-aware deblurrer estimates and refines
    # the kernel on the full frame and deconvolves a copy whose long side is N (its work_side); a generator deblurs
    # such a copy. auto: detector when no sink shows or saves the deblurred frames, else full (a generator: full).
    # At the detector's scale detection stayed within 0.02 mAP@0.5 of full-resolution deconvolution on the
    # evaluation images (docs/results/2026-12-07_detection_scale.md), at a fraction of the FFT work on HD frames
    deblur_size: int | Literal["auto", "full", "detector"] = "auto"
    # options of the kernel-aware deblurrer (deblur.kernel_deblur.KernelDeblurConfig). On video the kernel
    # refinement runs in its video mode (PIPELINE_REFINE above). The bundled refiner runs on CUDA only (refiner auto:
    # on a CPU it costs the real-time budget; --refiner runs it anyway), and the luma alone is deconvolved (a third
    # of the FFT work of rgb, the library's default for images)
    kernel: KernelDeblurConfig = field(default_factory=lambda: KernelDeblurConfig(refine=PIPELINE_REFINE, refiner="auto",
                                                                                  channels="luma"))
    amp: str = "auto"  # a name in runtime.PRECISIONS; auto: fp16 on CUDA, bf16 on CPUs that have it, else fp32
    channels_last: bool = True
    runtime: str = "auto"  # auto (the fastest correct here: openvino on CPUs) | torch | torch_compile | onnxruntime | openvino; also the darknet detector's
    # (when detector.runtime is left at "torch"); exports cached in $BLURDET_CACHE or ~/.cache/blurdet
    # --- batching / threads
    batch: int = 1  # frames per inference batch (at most)
    max_latency: float = 50.0  # ms to wait for a batch to fill before running it
    threads: int = 0  # torch intra-op threads for the whole process (0 = every CPU this process may use); halved per stage with overlap
    overlap: bool = True  # deblur and detect in two threads (pipelined); False = one after the other in one thread
    warmup: bool = True  # one untimed pass on a frame of the source's size before the loop
    # --- detector (Ultralytics names: conf, iou, classes, imgsz, device, half)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    # --- outputs
    show: bool = False  # window: input | deblurred side by side, boxes, fps; q or Esc quits
    compare: bool = False  # A/B: also detect on the input frame and draw its boxes on the input pane
    show_max_width: int = 1920  # the shown canvas is scaled down to at most this width
    save: str = ""  # H.264 video of input | output with boxes (e.g. runs/demo/demo.mp4)
    save_fps: float = 0.0  # frame rate of --save (0 = the source's, 25 when unknown)
    save_crf: int = 23  # libx264 constant rate factor (0 = lossless .. 51 = worst)
    save_preset: str = "veryfast"  # libx264 preset
    save_json: str = ""  # one JSON line per frame: index, timestamp, detections
    # --- several machines (pipeline/distributed.py; pip install -r requirements-ray.txt)
    ray: str = ""  # "" = this process; "local" = start a Ray runtime here; else the address of a Ray cluster to join
    ray_actors: int = 0  # pipelines the streams are spread over (0 = one per stream, at most the cluster's CPUs)
    ray_cpus: float = 1.0  # CPUs Ray reserves for each pipeline actor
    ray_max_restarts: int = 2  # times Ray restarts a pipeline actor that died; its streams then start again
    summary: str = ""  # JSON summary: frames in/out, dropped, fps, ms/frame per stage, latency
    log_every: float = 5.0  # seconds between progress log lines (0 = off)

    @property
    def deblur_side(self) -> int:
        """The long side deblurring works at: 0 = the full frame (``deblur_size`` full, or auto with --show or
        --save), else N or detector.imgsz."""
        if self.deblur_size == "full" or (self.deblur_size == "auto" and (self.show or self.save)):
            return 0
        return self.detector.imgsz if self.deblur_size in ("auto", "detector") else int(self.deblur_size)

    def __post_init__(self) -> None:
        for name in ("vid_stride", "queue_size", "batch"):
            check_range(name, getattr(self, name), 1)
        for name in ("max_frames", "reconnect_attempts", "threads", "blur_seed"):
            check_range(name, getattr(self, name), 0)
        check_range("simulate_blur", self.simulate_blur, 0, 5)
        check_range("reconnect_delay", self.reconnect_delay, 0.0, 60.0)
        check_range("open_timeout", self.open_timeout, 0.1)
        check_range("max_latency", self.max_latency, 0.0, 10_000.0)
        check_range("save_fps", self.save_fps, 0.0, 1000.0)
        check_range("save_crf", self.save_crf, 0, 51)
        check_range("show_max_width", self.show_max_width, 64)
        check_range("log_every", self.log_every, 0.0)
        if not self.source.strip():
            raise ValueError("'source' is empty. Give --source demo, cam0, a file, a directory, a glob or a URL.")
        if self.deblur_size not in ("auto", "full", "detector") and (not isinstance(self.deblur_size, int)
                                                             or isinstance(self.deblur_size, bool) or self.deblur_size < 32):
            raise ValueError(f"'deblur_size' must be 'auto', 'full', 'detector' or an integer >= 32 (the long side in pixels), "
                             f"got {self.deblur_size!r}")
        if self.kernel.work_side:
            raise ValueError(f"'kernel.work_side' ({self.kernel.work_side}) is set by 'deblur_size' in the pipeline. "
                             f"Fix: deblur_size={self.kernel.work_side} (or --deblur-size detector).")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"'runtime' {self.runtime!r} is not available. Valid: {list(RUNTIMES)}")
        on_cpu = self.detector.device == "cpu" or (self.detector.device == "auto" and resolve_device("auto").type == "cpu")
        if self.runtime in CPU_ONLY and not on_cpu:
            raise ValueError(
                f"'runtime'={self.runtime!r} runs the deblur model on the CPU, but detector.device={self.detector.device!r}: "
                "the batch could not stay on one device. Fix: runtime=torch with a GPU, or --device cpu."
            )
        object.__setattr__(self, "amp", check_precision(self.amp, key="amp", int8=False))  # 'none' -> 'fp32', warned
        if self.amp == "fp16" and on_cpu:
            raise ValueError(
                f"'amp'='fp16' with detector.device={self.detector.device!r} (the CPU here): fp16 is CUDA only. "
                "Fix: amp=auto, amp=bf16 (CPU) or --device cuda."
            )
        if self.save and not self.save.lower().endswith((".mp4", ".mkv", ".mov")) and not (
                self.save.endswith(("/", "\\")) and is_streams_file(self.source)):
            raise ValueError(f"'save' {self.save!r} must end in .mp4, .mkv or .mov (H.264 video), or, with a .streams "
                             "source, be a folder ending in / (one video per stream). Fix: --save out.mp4")
        check_range("ray_actors", self.ray_actors, 0)
        check_range("ray_cpus", self.ray_cpus, 0.0)
        check_range("ray_max_restarts", self.ray_max_restarts, 0)
        if self.ray and self.show:
            raise ValueError("'show' opens a window in this process, but 'ray' runs the pipelines in Ray actors. "
                             "Fix: drop --show (use --save DIR/), or drop --ray.")
        if self.save and self.save_json and self.save == self.save_json:
            raise ValueError(f"'save' and 'save_json' are the same file {self.save!r}: give two paths")
