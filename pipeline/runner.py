"""The runner: source -> deblur -> detect -> sink, on four threads, timed stage by stage.

    run_pipeline(cfg)
        source = open_source(cfg.source)          held, then opened (a bad input fails before any model is built)
        stages = build_stages(cfg)                pipeline/stages.py: the models and stages, source-independent
        sinks  = open_sinks(cfg, source)          --save, --save-json, --show
        Loop(cfg, source, stages, sinks).run()    the threads and queues below; after the warm-up the source starts:
                                                  its reader thread decodes/captures into the source queue
        return Summary.of(loop, ...).to_dict()

A live source (camera, stream, --realtime file) is held (Source.hold) and starts only once the models are built and
warmed up, so the frames that arrive meanwhile are not counted as dropped (pipeline/sources.py). After each warm-up
every stage with a ``reset()`` forgets what the warm-up frames left (the kernel deblurrer's temporal smoother), and
the stages' ``counters()`` (frames handled specially, e.g. frames smaller than the deblur kernel) are reported in the
summary (``deblur_counters``) without the warm-up frames.

    source queue --> inference thread --(mid queue)--> detect thread --(out queue)--> sink loop (calling thread)
                     SimulateBlur, Preprocess,          Detect, Postprocess            Annotate, --save,
                     Deblur (stages.front)              (stages.back)                  --save-json, --show

Deblur and detect overlap (``overlap``, the default): each runs in its own thread with half of the intra-op
threads, so on N cores throughput approaches the slower of the two instead of their sum. Queues keep every
frame of a file in order (blocking puts); a live source still keeps only its newest frame. With
``overlap=False`` the inference thread runs every stage.

The sink loop runs in the calling (main) thread: OpenCV's window must live in the main thread and Ctrl-C is
delivered there. The first Ctrl-C (SIGINT/SIGTERM) only sets the stop event: the inference thread finishes the
batch in hand, every result already produced is written, and all outputs are closed properly (the video keeps
its trailer). A second Ctrl-C raises KeyboardInterrupt (outputs are still closed by the ExitStack). An error in
a stage stops the loop; the outputs are closed and the error is re-raised.

CUDA: only the threads that queue device work wait for it (each syncs its own current stream to charge the
work to its stage); the sink loop never touches the device, so it can never sync while another thread
captures a CUDA graph. Warm-up runs every stage in the thread that runs it later (CUDA-graph trees and
torch.compile keep per-thread state), for every batch size that can occur when engines are built per input
shape, one thread at a time, before any real frame of that size.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import os
import queue
import signal
import threading
import time
from typing import Any, Callable

import numpy as np
import torch

from configs import to_dict
from detect import PAD_GRAY
from pipeline.config import PipelineConfig
from pipeline.sources import EndOfStream, Frame, Source, mask_url, open_source
from pipeline.stages import Batch, Stages, build_stages, stage_threads
from runtime import keep_large_allocations
from runtime.files import atomic_write_text

logger = logging.getLogger(__name__)

_END = object()  # end of a worker thread's output
LATENCY_WINDOW = 100_000  # latencies kept for p50/p95 (the most recent ones)


def run_pipeline(
    cfg: PipelineConfig,
    *,
    source: Source | None = None,
    deblur_model: torch.nn.Module | None = None,
    detector: Any = None,
    capture_factory: Callable[[int], Any] | None = None,
    request: "StopRequest | None" = None,
) -> dict:
    """Run until the source ends, q/Esc, Ctrl-C, max_frames or an error; returns the summary (Summary.to_dict).

    Injection points (tests, embedding): source (a pipeline.sources.Source), deblur_model (an nn.Module:
    (B,3,H,W) RGB [-1,1] -> same), detector (the detect.Detector interface), capture_factory (camera sources),
    request (a StopRequest another thread may ask to stop the run, as Ctrl-C does: pipeline/distributed.py).
    """
    if cfg.show:
        from pipeline.display import check_display

        check_display()  # before anything heavy, and long before any cv2.imshow
    apply_threads(stage_threads(cfg))
    keep_large_allocations()  # frame-sized temporaries reuse freed memory instead of faulting in fresh pages
    source = source or open_source(
        cfg.source, vid_stride=cfg.vid_stride, queue_size=cfg.queue_size, realtime=cfg.realtime,
        reconnect_attempts=cfg.reconnect_attempts, reconnect_delay=cfg.reconnect_delay,
        open_timeout=cfg.open_timeout, capture_factory=capture_factory,
    )
    stop = request or StopRequest()
    with _signals(stop), contextlib.ExitStack() as stack:  # closes the sinks (video trailer, JSON lines), the source
        stack.enter_context(source.hold())  # opened now (a bad input fails before any model is built), read later
        stages = build_stages(cfg, deblur_model=deblur_model, detector=detector)
        for _, stage in stages.front + stages.back:
            if callable(getattr(stage, "close", None)):
                stack.callback(stage.close)  # e.g. the kernel deblurrer's background refinement thread
            if getattr(source, "live", False) and callable(getattr(stage, "keep_up_with", None)):
                stage.keep_up_with(getattr(source, "fps", None) or 30.0)  # a camera that does not say: 30 fps
        loop = Loop(cfg, source, stages, open_sinks(cfg, source, stack), stop)
        loop.run()
    t_end = time.perf_counter()
    if loop.failure is not None:
        raise loop.failure
    summary = Summary.of(loop, t_end)
    if cfg.summary:
        summary.write(cfg.summary)
    summary.log()
    return summary.to_dict()


def open_sinks(cfg: PipelineConfig, source: Source, stack: contextlib.ExitStack) -> dict[str, Any]:
    """The outputs cfg asks for, entered on ``stack`` so that every way out closes them."""
    from pipeline.sinks import JsonlSink, StreamVideoSinks, VideoSink

    sinks: dict[str, Any] = {}
    streams = getattr(source, "sources", None)  # a MultiSource's streams
    if cfg.save:
        def rate(src: Source) -> float:
            return cfg.save_fps or (src.fps / cfg.vid_stride if src.fps else 25.0)

        if streams is None:
            sinks["save"] = stack.enter_context(VideoSink(cfg.save, fps=rate(source), crf=cfg.save_crf, preset=cfg.save_preset))
        else:
            sinks["save"] = stack.enter_context(StreamVideoSinks(cfg.save, [s.name for s in streams], [rate(s) for s in streams],
                                                                 crf=cfg.save_crf, preset=cfg.save_preset,
                                                                 stream_ids=source.stream_ids))
    if cfg.save_json:
        sinks["save_json"] = stack.enter_context(JsonlSink(
            cfg.save_json, source.name, stream_names=[s.name for s in streams] if streams else None,
            stream_ids=source.stream_ids if streams else None))
    if cfg.show:
        from pipeline.display import Display

        sinks["show"] = stack.enter_context(Display(title="pipeline: " + source.name, max_width=cfg.show_max_width))
    return sinks


def apply_threads(n: int) -> None:
    """torch's process-wide intra-op thread count (re-applied: Ultralytics lowers it on its first call)."""
    if torch.get_num_threads() != n:
        logger.debug("torch threads %d -> %d", torch.get_num_threads(), n)
        torch.set_num_threads(n)


def stream_sync(device: torch.device) -> Callable[[], None] | None:
    """What a worker thread calls to wait for the CUDA work it queued: its own current stream, never the whole
    device (a device-wide sync while another thread captures a CUDA graph breaks the capture). None on the CPU."""
    if device.type != "cuda":
        return None
    return lambda: torch.cuda.current_stream(device).synchronize()


class StageTimer:
    """Seconds and frames per stage name, for one thread; ``sync`` (if any) runs before each stop time."""

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.frames: dict[str, int] = collections.defaultdict(int)
        self.sync = sync

    @contextlib.contextmanager
    def time(self, name: str, n: int):
        t0 = time.perf_counter()
        yield
        if self.sync is not None:
            self.sync()  # CUDA work is asynchronous: charge it to the stage that queued it
        self.add(name, time.perf_counter() - t0, n)

    def add(self, name: str, seconds: float, n: int) -> None:
        self.seconds[name] += seconds
        self.frames[name] += n


class StopRequest:
    """Every thread's cue to stop taking new frames (Ctrl-C/SIGTERM, q/Esc, max_frames, an error), and when and
    how a person asked for it (the summary reports both)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.interrupted = False  # Ctrl-C / SIGTERM
        self.quit_by_user = False  # q / Esc in the window
        self.t_asked: float | None = None

    def ask(self, *, interrupted: bool = False, quit_by_user: bool = False) -> None:
        self.interrupted |= interrupted
        self.quit_by_user |= quit_by_user
        self.t_asked = self.t_asked or time.perf_counter()
        self.event.set()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Warmup:
    """A warm-up batch for the detect thread (None: a barrier); ``done`` is set once the detect thread is through it."""

    def __init__(self, batch: Batch | None) -> None:
        self.batch = batch
        self.done = threading.Event()


class Loop:
    """The threads and queues of one run: the inference and detect threads, and the sink loop (in ``run``)."""

    def __init__(self, cfg: PipelineConfig, source: Source, stages: Stages, sinks: dict[str, Any],
                 request: StopRequest | None = None) -> None:
        self.cfg, self.source, self.stages, self.sinks = cfg, source, stages, sinks
        self.threads = stage_threads(cfg)
        self.request = request or StopRequest()
        self.stop = self.request.event  # stop taking new frames (Ctrl-C, q, max_frames, error)
        self._abandon = threading.Event()  # the sink loop stopped consuming: do not block on a queue
        self._mid: queue.Queue = queue.Queue(maxsize=2)  # deblurred batches waiting for the detect thread
        self._out: queue.Queue = queue.Queue(maxsize=2)  # batches ready for the sink loop
        self._sync = stream_sync(stages.device)
        self.timers = {"inference": StageTimer(self._sync), "detect": StageTimer(self._sync),
                       "sink": StageTimer()}  # the sink loop never syncs
        self.frames_in = self.frames_out = 0
        self.t_start = self.t_first_out = self.t_last_out = None
        self.warmup_s: float | None = None
        self.latencies: collections.deque = collections.deque(maxlen=LATENCY_WINDOW)
        self.failure: BaseException | None = None
        self._warm: set[tuple[int, int]] = set()  # frame sizes warmed up
        self._warm_counts: collections.Counter = collections.Counter()  # stage counters added by warm-up frames
        self._pending: Frame | None = None
        self._ended = False
        self._out_times: collections.deque = collections.deque(maxlen=30)
        self._last_log = time.perf_counter()
        self.n_streams = len(getattr(source, "sources", None) or [source])
        self.per_stream = [{"frames_out": 0, "latencies": collections.deque(maxlen=LATENCY_WINDOW), "t_first": None,
                            "t_last": None} for _ in range(self.n_streams)]
        self._tiles: list[np.ndarray | None] = [None] * self.n_streams  # --show with several streams

    # ---- the sink loop (calling thread) --------------------------------------------------------------
    def run(self) -> None:
        """Start the worker threads, write every result as it comes; the failure (if any) is kept in .failure."""
        workers = [threading.Thread(target=self._infer_loop, name="inference", daemon=True)]
        if self.cfg.overlap:
            workers.append(threading.Thread(target=self._detect_loop, name="detect", daemon=True))
        self.t_start = time.perf_counter()
        for w in workers:
            w.start()
        try:
            while True:
                try:
                    item = self._out.get(timeout=0.1)
                except queue.Empty:
                    if not any(w.is_alive() for w in workers) and self._out.empty():
                        break
                    continue
                if item is _END:
                    break
                if isinstance(item, _Failed):
                    self.failure = item.exc
                    continue
                self._emit(item)
        finally:
            self._abandon.set()
            self.stop.set()
            for w in workers:
                w.join(timeout=10.0)
                if w.is_alive():
                    logger.warning("The %s thread did not stop within 10 s", w.name)

    def _emit(self, batch: Batch) -> None:
        timer, sinks = self.timers["sink"], self.sinks
        if self.stages.annotate is not None:
            with timer.time("annotate", len(batch)):
                batch = self.stages.annotate(batch)
        multi = self.n_streams > 1
        for i, frame in enumerate(batch.frames):
            if "save" in sinks:
                with timer.time("save", 1):
                    if multi:
                        sinks["save"].write(batch.canvases[i], frame.stream)
                    else:
                        sinks["save"].write(batch.canvases[i])
            if "show" in sinks and not self.request.quit_by_user:
                with timer.time("show", 1):
                    shown = batch.canvases[i]
                    if multi:  # the newest canvas of every stream, tiled
                        self._tiles[frame.stream] = shown
                        shown = tile(self._tiles)
                    if not sinks["show"].show(shown, self._fps_now()):
                        self.request.ask(quit_by_user=True)
            t_out = time.perf_counter()  # the frame's output time: its JSON line and the summary both use it
            if "save_json" in sinks:
                with timer.time("save_json", 1):
                    sinks["save_json"].write(frame, batch.detections[i] if batch.detections else [], t_out)
            self.latencies.append(t_out - frame.t_capture)
            per = self.per_stream[frame.stream]
            per["latencies"].append(t_out - frame.t_capture)
            per["frames_out"] += 1
            per["t_first"] = per["t_first"] or t_out
            per["t_last"] = t_out
            self.frames_out += 1
            self._out_times.append(t_out)
            self.t_first_out = self.t_first_out or t_out
            self.t_last_out = t_out
        self._maybe_log()

    def _fps_now(self) -> float | None:
        if len(self._out_times) < 2:
            return None
        span = self._out_times[-1] - self._out_times[0]
        return (len(self._out_times) - 1) / span if span > 0 else None

    def _maybe_log(self) -> None:
        now = time.perf_counter()
        if self.cfg.log_every and now - self._last_log >= self.cfg.log_every:
            self._last_log = now
            fps = self._fps_now()
            logger.info("%d frames in, %d out, %d dropped, %s fps", self.frames_in, self.frames_out,
                        self.source.dropped, f"{fps:.1f}" if fps else "?")

    # ---- the inference thread ------------------------------------------------------------------------
    @torch.inference_mode()
    def _infer_loop(self) -> None:
        """Collect batches and run the front stages; with overlap, hand them to the detect thread."""
        hand_on = self._mid if self.cfg.overlap else self._out
        try:
            if self.cfg.warmup and self.source.frame_size and all(self.source.frame_size):
                self._warm_up(*self.source.frame_size)
            self.source.start()  # a live source delivers (and counts drops) from here: the models are ready
            while not self.stop.is_set() and not self._ended:
                frames = self._collect()
                if not frames:
                    break
                if self.cfg.warmup:
                    self._warm_up(*frames[0].bgr.shape[:2])
                batch = self._run_stages(Batch(frames), self.stages.front, self.timers["inference"])
                if not self.cfg.overlap:
                    batch = self._run_stages(batch, self.stages.back, self.timers["inference"])
                if self.frames_in == len(batch):
                    apply_threads(self.threads)  # Ultralytics lowers the thread count on its first call
                self._put(hand_on, batch)
        except BaseException as e:  # handed on to the sink loop, which re-raises it after closing the outputs
            self.stop.set()
            self._put(hand_on, _Failed(e))
        finally:
            self._put(hand_on, _END)

    def _warm_up(self, h: int, w: int) -> None:
        """Untimed passes for every batch size that can occur at this frame size, each stage in its own thread.

        Engines built per input shape (CUDA graphs, torch_compile, openvino) get every size 1..batch, the partial
        batches included, in ascending order (a least-recently-used graph cache then keeps the full batch), twice
        on CUDA (runtime/ captures a CUDA graph on a shape's second sighting, CUDA-graph trees record on a later
        call), and a new frame size mid-stream is warmed too; eager engines get one pass at cfg.batch for the
        first size. The detect thread is idle meanwhile, so a capture or compile never overlaps other device work.
        """
        if (h, w) in self._warm or (self._warm and not self.stages.per_shape):
            return
        self._warm.add((h, w))
        t0 = time.perf_counter()
        sizes = [self.cfg.batch]
        if self.stages.per_shape:
            passes = 2 if self.stages.device.type == "cuda" else 1
            sizes = [n for n in range(1, self.cfg.batch + 1) for _ in range(passes)]
        if self.cfg.overlap:
            self._wait_detect_thread(_Warmup(None))  # the detect thread has finished every real batch before
        counts = self.stage_counters()
        for n in sizes:
            if self.stop.is_set():
                return
            batch = Batch([Frame(-1, t0, np.full((h, w, 3), PAD_GRAY, np.uint8)) for _ in range(n)])
            batch = self._run_stages(batch, [s for s in self.stages.front if s[0] != "simulate_blur"])
            if self.cfg.overlap:
                self._wait_detect_thread(_Warmup(batch))
            else:
                self._run_stages(batch, self.stages.back)
        self._warm_counts.update({k: v - counts.get(k, 0) for k, v in self.stage_counters().items()})
        for _, stage in self.stages.front + self.stages.back:
            if hasattr(stage, "reset"):
                stage.reset()  # the warm-up frames are no real frame's predecessors
        apply_threads(self.threads)  # Ultralytics lowers the thread count on its first call
        dt = time.perf_counter() - t0
        self.warmup_s = (self.warmup_s or 0.0) + dt
        logger.info("Warm-up at %dx%d, batch sizes %s: %.2f s", w, h, sorted(set(sizes)), dt)

    def _wait_detect_thread(self, item: _Warmup) -> None:
        self._put(self._mid, item)
        while not item.done.wait(0.1):
            if self._abandon.is_set() or self.stop.is_set():
                return

    def _next_frame(self, timeout: float) -> Frame | None | object:
        """A frame, None (nothing within timeout) or _END (source finished or max_frames reached)."""
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        if self.cfg.max_frames and self.frames_in >= self.cfg.max_frames:
            return _END
        try:
            frame = self.source.get(timeout=timeout)
        except EndOfStream:
            return _END
        if frame is not None:
            self.frames_in += 1
        return frame

    def _collect(self) -> list[Frame] | None:
        """Up to cfg.batch same-size frames, waiting at most max_latency ms after the first. None: the end."""
        t0 = time.perf_counter()
        first = None
        while first is None:
            if self.stop.is_set():
                return None
            first = self._next_frame(0.1)
            if first is _END:
                return None
        frames = [first]
        deadline = time.perf_counter() + self.cfg.max_latency / 1000.0
        while len(frames) < self.cfg.batch and not self.stop.is_set():
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            nxt = self._next_frame(remaining)
            if nxt is None:
                break
            if nxt is _END:
                self._ended = True
                break
            if nxt.bgr.shape != first.bgr.shape:  # a new size starts a new batch
                self._pending = nxt
                break
            frames.append(nxt)
        self.timers["inference"].add("read", time.perf_counter() - t0, len(frames))
        return frames

    # ---- the detect thread (overlap) -----------------------------------------------------------------
    @torch.inference_mode()
    def _detect_loop(self) -> None:
        """Detect and Postprocess on each deblurred batch, in order; warm-up batches are run and dropped."""
        first = True
        while True:
            try:
                item = self._mid.get(timeout=0.1)
            except queue.Empty:
                if self._abandon.is_set():
                    return
                continue
            if item is _END or isinstance(item, _Failed):
                self._put(self._out, item)
                if item is _END:
                    return
                continue
            try:
                if isinstance(item, _Warmup):
                    try:
                        if item.batch is not None:
                            self._run_stages(item.batch, self.stages.back)
                    finally:
                        item.done.set()
                    continue
                item = self._run_stages(item, self.stages.back, self.timers["detect"])
                if first:
                    apply_threads(self.threads)  # Ultralytics lowers the thread count on its first call
                    first = False
                self._put(self._out, item)
            except BaseException as e:
                self.stop.set()
                self._put(self._out, _Failed(e))

    # ---- shared by the worker threads ----------------------------------------------------------------
    def _run_stages(self, batch: Batch, stages: list, timer: StageTimer | None = None) -> Batch:
        """Run ``stages`` in order; timed by ``timer`` (the calling thread's), or untimed but waited for (warm-up)."""
        for name, stage in stages:
            if timer is None:
                batch = stage(batch)
            else:
                with timer.time(name, len(batch)):
                    batch = stage(batch)
        if timer is None and self._sync is not None:
            self._sync()
        return batch

    def _put(self, q: queue.Queue, item: Any) -> None:
        """Blocking put (a file's frames are never dropped) that gives up once the sink loop has stopped."""
        while not self._abandon.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def stage_counters(self) -> dict[str, int]:
        """The stages' ``counters()`` (frames handled specially, e.g. deblurred padded), summed by name."""
        total: collections.Counter = collections.Counter()
        for _, stage in self.stages.front + self.stages.back:
            if hasattr(stage, "counters"):
                total.update(stage.counters())
        return dict(total)

    def real_frame_counters(self) -> dict[str, int]:
        """stage_counters() without what the warm-up frames added."""
        return {k: v - self._warm_counts.get(k, 0) for k, v in self.stage_counters().items()}

    def ms_per_frame(self) -> dict[str, float]:
        """Mean ms per frame of each stage, over the three threads' timers (in pipeline order)."""
        out = {}
        for timer in self.timers.values():
            out.update({k: round(1000.0 * s / timer.frames[k], 3) for k, s in timer.seconds.items() if timer.frames[k]})
        return out


@contextlib.contextmanager
def _signals(request: StopRequest):
    """First SIGINT/SIGTERM: ask to stop (graceful); second: KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        if request.interrupted:
            raise KeyboardInterrupt
        request.ask(interrupted=True)
        logger.warning("%s: stopping, flushing outputs (press Ctrl-C again to abort)", signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@dataclasses.dataclass
class Summary:
    """The run summary; ``to_dict()`` gives the JSON that --summary writes (bench/ and tests read these keys)."""

    source: str
    source_kind: str
    live: bool
    frames_in: int
    frames_out: int
    dropped: int
    source_stopped_early: str | None
    interrupted: bool
    quit_by_user: bool
    stop_s: float | None  # stop request -> outputs closed
    wall_s: float  # the loop's time, warm-up excluded
    fps: float
    ms_per_frame: dict[str, float]
    latency_ms: dict[str, float | None]  # p50, p95, max: capture -> output (the time each JSON line reports)
    warmup_s: float | None
    deblur_counters: dict[str, int]  # frames the deblur stage handled specially (e.g. small_frames: padded to the kernel)
    streams: list[dict]  # per stream: source (masked), frames in/out, drops, fps, latency p50/p95, why it ended early
    device: str
    amp: str
    runtime: str | None
    detector_runtime: str
    threads: int
    peak_source_queue: int
    source_queue_max: int
    config: dict

    @classmethod
    def of(cls, loop: Loop, t_end: float) -> "Summary":
        """The summary of a finished loop; t_end: when its outputs were closed."""
        cfg, src, stages = loop.cfg, loop.source, loop.stages
        wall = max(0.0, t_end - (loop.t_start or t_end) - (loop.warmup_s or 0.0))
        lat = np.array(loop.latencies, dtype=np.float64) * 1000.0

        def ms(q: float) -> float | None:
            return round(float(np.percentile(lat, q)), 3) if lat.size else None

        span = (loop.t_last_out - loop.t_first_out) if loop.t_first_out is not None else 0.0
        if loop.frames_out > 1 and span > 0:
            fps = (loop.frames_out - 1) / span
        else:
            fps = loop.frames_out / wall if wall > 0 else 0.0
        config = to_dict(cfg)
        config["source"] = mask_url(config["source"])
        return cls(
            source=src.name, source_kind=src.kind, live=src.live, frames_in=loop.frames_in, frames_out=loop.frames_out,
            dropped=src.dropped, source_stopped_early=src.stopped_early, interrupted=loop.request.interrupted,
            quit_by_user=loop.request.quit_by_user,
            stop_s=None if loop.request.t_asked is None else round(t_end - loop.request.t_asked, 3),
            wall_s=round(wall, 3), fps=round(fps, 3), ms_per_frame=loop.ms_per_frame(),
            latency_ms={"p50": ms(50), "p95": ms(95), "max": ms(100)},
            warmup_s=None if loop.warmup_s is None else round(loop.warmup_s, 3),
            deblur_counters=loop.real_frame_counters(), streams=_per_stream(loop), device=str(stages.device),
            amp=stages.amp, runtime=stages.runtime if cfg.deblur else None, detector_runtime=stages.detector_runtime,
            threads=torch.get_num_threads(), peak_source_queue=src.peak_queued, source_queue_max=src.maxsize,
            config=config,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def write(self, path: str | os.PathLike) -> None:
        """The JSON file, written to a temp file and renamed (never half-written)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def log(self) -> None:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in self.ms_per_frame.items())
        logger.info(
            "Done: %s: %d frames in, %d out, %d dropped, %.2f fps; ms/frame: %s; latency p50 %s ms, p95 %s ms%s",
            self.source, self.frames_in, self.frames_out, self.dropped, self.fps, stages,
            self.latency_ms["p50"], self.latency_ms["p95"], " (interrupted)" if self.interrupted else "",
        )
        if len(self.streams) > 1:
            for st in self.streams:
                logger.info("  stream %d %s: %d in, %d out, %d dropped, %.2f fps, latency p95 %s ms%s", st["stream"],
                            st["source"], st["frames_in"], st["frames_out"], st["dropped"], st["fps"],
                            st["latency_ms"]["p95"], f" (ended early: {st['error']})" if st["error"] else "")
        if self.source_stopped_early:
            logger.warning("The source ended early: %s", self.source_stopped_early)


def _per_stream(loop: Loop) -> list[dict]:
    """Summary rows per stream (one row for a single source)."""
    src = loop.source
    rows = src.streams() if hasattr(src, "streams") else [
        {"stream": 0, "source": src.name, "kind": src.kind, "live": src.live, "frames_in": loop.frames_in,
         "dropped": src.dropped, "error": src.stopped_early}]
    for row, per in zip(rows, loop.per_stream):
        lat = np.array(per["latencies"], dtype=np.float64) * 1000.0
        span = (per["t_last"] - per["t_first"]) if per["t_first"] is not None else 0.0
        row["frames_out"] = per["frames_out"]
        row["fps"] = round((per["frames_out"] - 1) / span, 3) if per["frames_out"] > 1 and span > 0 else 0.0
        row["latency_ms"] = {q: (round(float(np.percentile(lat, v)), 3) if lat.size else None)
                             for q, v in (("p50", 50), ("p95", 95))}
    return rows


def tile(images: list[np.ndarray | None], width: int = 1280) -> np.ndarray:
    """The streams' newest canvases on one grid (about square; black where a stream has shown nothing yet),
    ``width`` pixels wide, each cell letterboxed."""
    import math

    from pipeline.sinks import fit_image

    n = len(images)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    known = [im for im in images if im is not None]
    aspect = known[0].shape[0] / known[0].shape[1] if known else 9 / 16
    cw = max(2, width // cols)
    ch = max(2, int(round(cw * aspect)))
    out = np.zeros((rows * ch, cols * cw, 3), np.uint8)
    for k, im in enumerate(images):
        if im is not None:
            r, c = divmod(k, cols)
            out[r * ch : (r + 1) * ch, c * cw : (c + 1) * cw] = fit_image(im, ch, cw)
    return out
