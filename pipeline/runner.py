"""The runner: owns every thread and queue of the pipeline, times every stage, reports a summary.

    source reader --(source queue)--> deblur thread --(mid queue)--> detect thread --(out queue)--> sink loop
    decode/capture                    SimulateBlur, Preprocess,      Detect, Postprocess           Annotate, --save,
                                      Deblur                                                       --save-json, --show

Deblur and detect overlap (``overlap``, the default): each runs in its own thread with half of the intra-op
threads, so on N cores throughput approaches the slower of the two instead of their sum. Queues keep every
frame of a file in order (blocking puts); a live source still keeps only its newest frame. With
``overlap=False`` one inference thread runs every stage.

The sink loop runs in the calling (main) thread, beside the inference thread: OpenCV's window
must live in the main thread and Ctrl-C is delivered there. The first Ctrl-C (SIGINT/SIGTERM)
only sets the stop event: the inference thread finishes the batch in hand, every result already
produced is written, and all outputs are closed properly (the video keeps its trailer). A second
Ctrl-C raises KeyboardInterrupt (outputs are still closed by the `finally`).

Stages run under torch.inference_mode() after one untimed warm-up pass.
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
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from configs import to_dict
from pipeline.config import PipelineConfig
from pipeline.sources import EndOfStream, Frame, Source, mask_url, open_source
from pipeline.stages import (
    Annotate,
    Batch,
    Deblur,
    Detect,
    DetectInput,
    Identity,
    KernelDeblur,
    Postprocess,
    Preprocess,
    RuntimeDeblur,
    SimulateBlur,
    resolve_amp,
)

logger = logging.getLogger(__name__)

_END = object()  # end of the inference thread's output
LATENCY_WINDOW = 100_000  # latencies kept for p50/p95 (the most recent ones)


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class StageTimer:
    """Accumulates seconds and frames per stage name; ms_per_frame() reports the mean."""

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.frames: dict[str, int] = collections.defaultdict(int)
        self._sync = sync

    @contextlib.contextmanager
    def time(self, name: str, n: int):
        t0 = time.perf_counter()
        yield
        if self._sync is not None:
            self._sync()  # CUDA work is asynchronous: charge it to the stage that queued it
        self.seconds[name] += time.perf_counter() - t0
        self.frames[name] += n

    def ms_per_frame(self) -> dict[str, float]:
        return {k: round(1000.0 * self.seconds[k] / self.frames[k], 3) for k in self.seconds if self.frames[k]}


class Runner:
    """Build the stages from a PipelineConfig, run the loop, return the summary dict.

    Injection points (for tests and embedding): source (a pipeline.sources.Source), deblur_model
    (an nn.Module: (B,3,H,W) RGB [-1,1] -> same), detector (an object with the detect.Detector
    interface), capture_factory (camera sources).
    """

    def __init__(
        self,
        cfg: PipelineConfig,
        *,
        source: Source | None = None,
        deblur_model: torch.nn.Module | None = None,
        detector: Any = None,
        capture_factory: Callable[[int], Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self._source = source
        self._deblur_model = deblur_model
        self._detector = detector
        self._capture_factory = capture_factory
        self._stop = threading.Event()  # stop taking new frames (Ctrl-C, q, max_frames, error)
        self._abandon = threading.Event()  # the sink loop stopped consuming: do not block on the out queue
        self._out: queue.Queue = queue.Queue(maxsize=2)  # batches ready for the sink loop
        self._mid: queue.Queue = queue.Queue(maxsize=2)  # deblurred batches waiting for the detect thread
        self.frames_in = 0
        self.frames_out = 0
        self.interrupted = False
        self.quit_by_user = False
        self._t_stop_request: float | None = None  # when Ctrl-C / q asked to stop
        self._latencies: collections.deque = collections.deque(maxlen=LATENCY_WINDOW)
        self._pending: Frame | None = None

    # ---- building ----------------------------------------------------------------------------
    def _build_source(self) -> Source:
        if self._source is not None:
            return self._source
        c = self.cfg
        return open_source(
            c.source, vid_stride=c.vid_stride, queue_size=c.queue_size, realtime=c.realtime,
            reconnect_attempts=c.reconnect_attempts,
            reconnect_delay=c.reconnect_delay, open_timeout=c.open_timeout, capture_factory=self._capture_factory,
        )

    def _build_models(self) -> None:
        c = self.cfg
        if self._detector is None:
            from detect import build_detector

            det_cfg = c.detector
            if c.runtime != "torch" and det_cfg.backend == "darknet" and det_cfg.runtime == "torch":
                det_cfg = dataclasses.replace(det_cfg, runtime=c.runtime)  # --runtime applies to both models
            self._detector = build_detector(det_cfg)
        self.detector = self._detector
        self.device = torch.device(getattr(self.detector, "device", "cpu"))
        self.amp = "none"
        from runtime import resolve_runtime

        self.runtime = resolve_runtime(c.runtime, self.device)
        if c.deblur:
            deblur = self._build_deblur()
        else:
            deblur = Identity()
        long_side = None if (not c.deblur or c.deblur_size == "full") else int(c.deblur_size)
        stages: list[tuple[str, Callable[[Batch], Batch]]] = []
        if c.simulate_blur:
            stages.append(("simulate_blur", SimulateBlur(c.simulate_blur, c.blur_seed)))
        stages += [
            ("preprocess", Preprocess(self.device, long_side, channels_last=c.channels_last and c.deblur and self.runtime == "torch")),
            ("deblur", deblur),
            ("detect", Detect(self.detector)),
        ]
        if c.compare and c.deblur:
            stages.append(("detect_input", DetectInput(stages[-1][1])))
        self.need_images = bool(c.show or c.save)
        if self.need_images and c.deblur:
            stages.append(("postprocess", Postprocess()))
        self.infer_stages = stages
        split = next(i for i, (name, _) in enumerate(stages) if name == "detect")
        self.front_stages, self.back_stages = stages[:split], stages[split:]
        self.annotate = Annotate(side_by_side=c.deblur) if self.need_images else None
        logger.info(
            "Pipeline: device=%s deblur=%s amp=%s deblur_size=%s batch=%d max_latency=%.0f ms threads=%d",
            self.device, c.deblur, self.amp, c.deblur_size, c.batch, c.max_latency, torch.get_num_threads(),
        )

    def _build_deblur(self) -> Callable[[Batch], Batch]:
        """The deblur stage the weights ask for: a kernel estimator file -> KernelDeblur (estimate the
        kernel, deconvolve); a generator file -> Deblur / RuntimeDeblur."""
        c = self.cfg
        model = self._deblur_model
        if model is None:
            from deblur.models import DEFAULT_DEBLURRER, ESTIMATOR_FORMAT, file_format, load_generator

            weights = c.deblur_weights or str(DEFAULT_DEBLURRER)
            try:
                is_estimator = file_format(weights) == ESTIMATOR_FORMAT
                if is_estimator:
                    from deblur.kernel_deblur import KernelDeblurrer

                    logger.info("Deblur: kernel estimate + Wiener deconvolution, estimator %s", weights)
                    return KernelDeblur(KernelDeblurrer(weights, device=self.device, runtime=self.runtime,
                                                        threads=self.stage_threads))
                model, gen_cfg = load_generator(weights, device=str(self.device))
            except FileNotFoundError as e:
                raise FileNotFoundError(
                    f"{e} -- For the pipeline: pass --deblur-weights PATH, or run without deblurring (--no-deblur)."
                ) from e
            logger.info("Deblur: %s from %s", gen_cfg.name, weights)
        self.amp = resolve_amp(c.amp, self.device, self.runtime)
        if self.runtime != "torch" or self.device.type == "cuda":
            return RuntimeDeblur(model, self.device, self.runtime, amp=self.amp, threads=self.stage_threads)
        return Deblur(model, self.device, amp=self.amp, channels_last=c.channels_last)

    @property
    def stage_threads(self) -> int:
        """torch intra-op threads: ``threads`` (0 = leave as is), split between the two overlapped stages."""
        c = self.cfg
        if c.threads <= 0:
            return 0
        return max(1, c.threads // 2) if c.overlap else c.threads

    def _apply_threads(self) -> None:
        n = self.stage_threads
        if n > 0 and torch.get_num_threads() != n:
            logger.debug("torch threads %d -> %d", torch.get_num_threads(), n)
            torch.set_num_threads(n)

    # ---- inference thread ----------------------------------------------------------------------
    @torch.inference_mode()
    def _warmup(self, h: int, w: int) -> float:
        t0 = time.perf_counter()
        n = self.cfg.batch
        frames = [Frame(-1, t0, np.full((h, w, 3), 114, np.uint8)) for _ in range(n)]
        batch = Batch(frames)
        for name, stage in self.infer_stages:
            if name != "simulate_blur":
                batch = stage(batch)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._apply_threads()  # Ultralytics lowers the thread count on its first call
        dt = time.perf_counter() - t0
        logger.info("Warm-up at %dx%d, batch %d: %.2f s", w, h, n, dt)
        return dt

    def _next_frame(self, source: Source, timeout: float) -> Frame | None | object:
        """A frame, None (nothing within timeout) or _END (source finished or max_frames reached)."""
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        if self.cfg.max_frames and self.frames_in >= self.cfg.max_frames:
            return _END
        try:
            frame = source.get(timeout=timeout)
        except EndOfStream:
            return _END
        if frame is not None:
            self.frames_in += 1
        return frame

    def _collect(self, source: Source) -> list[Frame] | None:
        """Up to cfg.batch same-size frames, waiting at most max_latency ms after the first. None: the end."""
        t0 = time.perf_counter()
        first = None
        while first is None:
            if self._stop.is_set():
                return None
            first = self._next_frame(source, 0.1)
            if first is _END:
                return None
        frames = [first]
        deadline = time.perf_counter() + self.cfg.max_latency / 1000.0
        while len(frames) < self.cfg.batch and not self._stop.is_set():
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            nxt = self._next_frame(source, remaining)
            if nxt is None:
                break
            if nxt is _END:
                self._pending = None
                self._ended = True
                break
            if nxt.bgr.shape != first.bgr.shape:  # a new size starts a new batch
                self._pending = nxt
                break
            frames.append(nxt)
        self.timer.seconds["read"] += time.perf_counter() - t0
        self.timer.frames["read"] += len(frames)
        return frames

    @torch.inference_mode()
    def _infer_loop(self, source: Source) -> None:
        """Collect batches and run the stages up to Deblur; with overlap, hand them to the detect thread."""
        self._ended = False
        hand_on = self._put_mid if self.cfg.overlap else self._put_out
        try:
            while not self._stop.is_set() and not self._ended:
                frames = self._collect(source)
                if not frames:
                    break
                if self.warmup_s is None and self.cfg.warmup:
                    self.warmup_s = self._warmup(*frames[0].bgr.shape[:2])
                batch = self._run_stages(Batch(frames), self.front_stages)
                if not self.cfg.overlap:
                    batch = self._run_stages(batch, self.back_stages)
                if self.frames_in == len(batch):
                    self._apply_threads()
                hand_on(batch)
        except BaseException as e:  # handed on to the sink loop, which re-raises it after closing outputs
            hand_on(_Failed(e))
        finally:
            hand_on(_END)

    @torch.inference_mode()
    def _detect_loop(self) -> None:
        """The detect thread (overlap): Detect and Postprocess on each deblurred batch, in order."""
        first = True
        while True:
            try:
                item = self._mid.get(timeout=0.1)
            except queue.Empty:
                if self._abandon.is_set():
                    return
                continue
            if item is _END or isinstance(item, _Failed):
                self._put_out(item)
                if item is _END:
                    return
                continue
            try:
                item = self._run_stages(item, self.back_stages)
                if first:
                    self._apply_threads()  # Ultralytics lowers the thread count on its first call
                    first = False
                self._put_out(item)
            except BaseException as e:
                self._stop.set()
                self._put_out(_Failed(e))

    def _run_stages(self, batch: Batch, stages: list) -> Batch:
        for name, stage in stages:
            with self.timer.time(name, len(batch)):
                batch = stage(batch)
        return batch

    def _put_mid(self, item: Any) -> None:
        while not self._abandon.is_set():
            try:
                self._mid.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _put_out(self, item: Any) -> None:
        while not self._abandon.is_set():
            try:
                self._out.put(item, timeout=0.1)
            except queue.Full:
                continue
            return

    # ---- sink loop (calling thread) ------------------------------------------------------------
    def _emit(self, batch: Batch, sinks: dict[str, Any]) -> None:
        if self.annotate is not None:
            with self.timer.time("annotate", len(batch)):
                batch = self.annotate(batch)
        for i, frame in enumerate(batch.frames):
            dets = batch.detections[i] if batch.detections else []
            if "save" in sinks:
                with self.timer.time("save", 1):
                    sinks["save"].write(batch.canvases[i])
            t_out = time.perf_counter()
            if "save_json" in sinks:
                with self.timer.time("save_json", 1):
                    sinks["save_json"].write(frame, dets, t_out)
            if "show" in sinks and not self.quit_by_user:
                with self.timer.time("show", 1):
                    if not sinks["show"].show(batch.canvases[i], self._fps_now()):
                        self.quit_by_user = True
                        self._t_stop_request = time.perf_counter()
                        self._stop.set()
            t_out = time.perf_counter()
            self._latencies.append(t_out - frame.t_capture)
            self.frames_out += 1
            self._out_times.append(t_out)
            if self.t_first_out is None:
                self.t_first_out = t_out
            self.t_last_out = t_out
        self._maybe_log()

    def _fps_now(self) -> float | None:
        if len(self._out_times) < 2:
            return None
        span = self._out_times[-1] - self._out_times[0]
        return (len(self._out_times) - 1) / span if span > 0 else None

    def _maybe_log(self) -> None:
        every = self.cfg.log_every
        now = time.perf_counter()
        if every and now - self._last_log >= every:
            self._last_log = now
            fps = self._fps_now()
            logger.info(
                "%d frames in, %d out, %d dropped, %s fps", self.frames_in, self.frames_out,
                self.source.dropped, f"{fps:.1f}" if fps else "?",
            )

    def _open_sinks(self, stack: contextlib.ExitStack) -> dict[str, Any]:
        from pipeline.sinks import JsonlSink, VideoSink

        c = self.cfg
        sinks: dict[str, Any] = {}
        if c.save:
            fps = c.save_fps or (self.source.fps / c.vid_stride if self.source.fps else 25.0)
            sinks["save"] = stack.enter_context(VideoSink(c.save, fps=fps, crf=c.save_crf, preset=c.save_preset))
        if c.save_json:
            sinks["save_json"] = stack.enter_context(JsonlSink(c.save_json, self.source.name))
        if c.show:
            from pipeline.display import Display

            sinks["show"] = stack.enter_context(Display(title="pipeline: " + self.source.name, max_width=c.show_max_width))
        return sinks

    @contextlib.contextmanager
    def _signals(self):
        """First SIGINT/SIGTERM: set the stop event (graceful); second: KeyboardInterrupt."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, _frame):
            if self._stop.is_set() and self.interrupted:
                raise KeyboardInterrupt
            self.interrupted = True
            self._t_stop_request = time.perf_counter()
            self._stop.set()
            logger.warning("%s: stopping, flushing outputs (press Ctrl-C again to abort)", signal.Signals(signum).name)

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def run(self) -> dict:
        """Run until the source ends, q/Esc, Ctrl-C, max_frames or an error; returns the summary."""
        c = self.cfg
        if c.show:
            from pipeline.display import check_display

            check_display()  # before anything heavy, and long before any cv2.imshow
        self._apply_threads()
        self.timer = StageTimer()
        self.warmup_s: float | None = None
        self.t_first_out = self.t_last_out = None
        self._out_times: collections.deque = collections.deque(maxlen=30)
        self._last_log = time.perf_counter()
        self.source = self._build_source()
        failure: BaseException | None = None
        t_start = time.perf_counter()
        with self._signals(), contextlib.ExitStack() as stack:
            stack.enter_context(self.source)
            self._build_models()
            if self.device.type == "cuda":
                self.timer._sync = lambda: torch.cuda.synchronize(self.device)
            if c.warmup and self.source.frame_size and all(self.source.frame_size):
                self.warmup_s = self._warmup(*self.source.frame_size)
            sinks = self._open_sinks(stack)
            t_start = time.perf_counter()
            worker = threading.Thread(target=self._infer_loop, args=(self.source,), name="inference", daemon=True)
            workers = [worker]
            if c.overlap:
                workers.append(threading.Thread(target=self._detect_loop, name="detect", daemon=True))
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
                        failure = item.exc
                        continue
                    self._emit(item, sinks)
            except BaseException:
                self._stop.set()
                raise
            finally:
                self._abandon.set()
                self._stop.set()
                for w in workers:
                    w.join(timeout=10.0)
                    if w.is_alive():
                        logger.warning("The %s thread did not stop within 10 s", w.name)
                # leaving the ExitStack closes the sinks (video trailer, JSON lines) and the source
        t_end = time.perf_counter()
        wall = t_end - t_start
        self.stop_s = None if self._t_stop_request is None else t_end - self._t_stop_request
        if failure is not None:
            raise failure
        summary = self.summary(wall)
        self._report(summary)
        return summary

    # ---- summary -------------------------------------------------------------------------------
    def summary(self, wall_s: float) -> dict:
        c = self.cfg
        lat = np.array(self._latencies, dtype=np.float64) * 1000.0
        span = (self.t_last_out - self.t_first_out) if self.t_first_out is not None else 0.0
        fps = (self.frames_out - 1) / span if self.frames_out > 1 and span > 0 else (self.frames_out / wall_s if wall_s > 0 else 0.0)
        cfg_dict = to_dict(c)
        cfg_dict["source"] = mask_url(cfg_dict["source"])
        out = {
            "source": self.source.name,
            "source_kind": self.source.kind,
            "live": self.source.live,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "dropped": self.source.dropped,
            "source_stopped_early": self.source.stopped_early,
            "interrupted": self.interrupted,
            "quit_by_user": self.quit_by_user,
            "stop_s": None if self.stop_s is None else round(self.stop_s, 3),  # stop request -> outputs closed
            "wall_s": round(wall_s, 3),
            "fps": round(fps, 3),
            "ms_per_frame": self.timer.ms_per_frame(),
            "latency_ms": {
                "p50": round(float(np.percentile(lat, 50)), 3) if lat.size else None,
                "p95": round(float(np.percentile(lat, 95)), 3) if lat.size else None,
                "max": round(float(lat.max()), 3) if lat.size else None,
            },
            "warmup_s": None if self.warmup_s is None else round(self.warmup_s, 3),
            "device": str(self.device),
            "amp": self.amp,
            "runtime": self.runtime if c.deblur else None,
            "detector_runtime": getattr(getattr(self.detector, "engine", None), "name", None) or "torch",
            "threads": torch.get_num_threads(),
            "peak_source_queue": self.source.peak_queued,
            "source_queue_max": self.source.maxsize,
            "config": cfg_dict,
        }
        if c.summary:
            path = Path(c.summary)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(out, indent=2) + "\n")
            os.replace(tmp, path)
        return out

    def _report(self, s: dict) -> None:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in s["ms_per_frame"].items())
        logger.info(
            "Done: %s: %d frames in, %d out, %d dropped, %.2f fps; ms/frame: %s; latency p50 %s ms, p95 %s ms%s",
            s["source"], s["frames_in"], s["frames_out"], s["dropped"], s["fps"], stages,
            s["latency_ms"]["p50"], s["latency_ms"]["p95"], " (interrupted)" if s["interrupted"] else "",
        )
        if s["source_stopped_early"]:
            logger.warning("The source ended early: %s", s["source_stopped_early"])


def run_pipeline(cfg: PipelineConfig, **inject: Any) -> dict:
    """Build and run the pipeline for `cfg`; returns the summary (see Runner for the injection points)."""
    return Runner(cfg, **inject).run()
