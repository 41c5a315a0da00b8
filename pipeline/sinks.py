"""Output sinks (context managers): an H.264 video through PyAV and a JSON-lines detection log.

Both are closed on the normal end, on errors and on Ctrl-C (the runner closes them in a
``finally``), so the video always has its trailer written and plays, and every JSON line that
was produced is on disk.
"""

from __future__ import annotations

import json
import logging
import re
import time
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from pipeline.sources import Frame, mask_url

if TYPE_CHECKING:
    from detect import Detection

logger = logging.getLogger(__name__)


class VideoSink:
    """Writes (H,W,3) uint8 BGR images to an H.264 (libx264, yuv420p) file.

    The size is fixed by the first image and rounded down to even sides (yuv420p needs them);
    later images of another size are letterboxed onto it. fps: the output frame rate.
    """

    def __init__(self, path: str | Path, fps: float = 25.0, crf: int = 23, preset: str = "veryfast") -> None:
        self.path = Path(path)
        self.fps = fps
        self.crf = crf
        self.preset = preset
        self.frames = 0
        self._container = None
        self._stream = None
        self._size: tuple[int, int] | None = None  # (h, w)

    def __enter__(self) -> "VideoSink":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _open(self, h: int, w: int) -> None:
        import av

        self._size = (h - h % 2, w - w % 2)
        if min(self._size) < 2:
            raise ValueError(f"--save: frames of {w}x{h} are too small to encode as H.264 (need at least 2x2).")
        self._container = av.open(str(self.path), mode="w")
        rate = Fraction(self.fps).limit_denominator(1001)
        stream = self._container.add_stream("libx264", rate=rate, options={"crf": str(self.crf), "preset": self.preset})
        stream.width, stream.height = self._size[1], self._size[0]
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, 1) / rate
        self._stream = stream
        logger.info("Saving video %s (%dx%d, %.2f fps, libx264 crf %d)", self.path, self._size[1], self._size[0], float(rate), self.crf)

    def write(self, image_bgr: np.ndarray) -> None:
        """Encode one (H,W,3) uint8 BGR image."""
        import av

        if self._container is None:
            self._open(*image_bgr.shape[:2])
        h, w = self._size
        if image_bgr.shape[:2] != (h, w):
            image_bgr = fit_image(image_bgr, h, w)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image_bgr), format="bgr24")
        frame.pts = self.frames
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and write the trailer (idempotent)."""
        if self._container is None:
            return
        container, self._container = self._container, None
        try:
            for packet in self._stream.encode(None):
                container.mux(packet)
        finally:
            container.close()
        logger.info("Saved %d frames to %s", self.frames, self.path)


class StreamVideoSinks:
    """``--save`` with several streams: one VideoSink per stream, opened at the stream's first frame.

    ``path`` a directory (``runs/out/``): ``DIR/stream<i>_<name>.mp4``, <name> the stream's file name or host;
    ``path`` a video file: ``<stem>_stream<i><suffix>`` beside it. ``fps``: one rate per stream."""

    def __init__(self, path: str | Path, names: list[str], fps: list[float], crf: int = 23, preset: str = "veryfast",
                 stream_ids: list[int] | None = None) -> None:
        self.path, self.names, self.fps, self.crf, self.preset = str(path), names, fps, crf, preset
        self.ids = stream_ids or list(range(len(names)))  # the stream numbers files are named by
        self.sinks: dict[int, VideoSink] = {}

    def path_of(self, stream: int) -> Path:
        if self.path.endswith(("/", "\\")) or Path(self.path).is_dir():
            tail = re.sub(r"[^A-Za-z0-9._-]+", "_", self.names[stream].rstrip("/").rsplit("/", 1)[-1]).strip("_")
            return Path(self.path) / f"stream{self.ids[stream]}_{Path(tail).stem or 'source'}.mp4"
        p = Path(self.path)
        return p.with_name(f"{p.stem}_stream{self.ids[stream]}{p.suffix}")

    def __enter__(self) -> "StreamVideoSinks":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def write(self, image_bgr: np.ndarray, stream: int = 0) -> None:
        sink = self.sinks.get(stream)
        if sink is None:
            sink = self.sinks[stream] = VideoSink(self.path_of(stream), fps=self.fps[stream], crf=self.crf,
                                                  preset=self.preset).__enter__()
        sink.write(image_bgr)

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.sinks.values())

    def close(self) -> None:
        """Close every stream's video (each keeps its trailer), even if one fails to."""
        errors = []
        for sink in self.sinks.values():
            try:
                sink.close()
            except Exception as e:  # noqa: BLE001 - the others must still be closed
                errors.append(e)
        if errors:
            raise errors[0]


def fit_image(image_bgr: np.ndarray, h: int, w: int) -> np.ndarray:
    """Letterbox an image onto an (h, w) black canvas, keeping its aspect ratio."""
    ih, iw = image_bgr.shape[:2]
    g = min(h / ih, w / iw)
    nh, nw = max(1, int(round(ih * g))), max(1, int(round(iw * g)))
    out = np.zeros((h, w, 3), np.uint8)
    top, left = (h - nh) // 2, (w - nw) // 2
    out[top : top + nh, left : left + nw] = cv2.resize(image_bgr, (nw, nh), interpolation=cv2.INTER_AREA)
    return out


class JsonlSink:
    """One JSON line per frame: {"index", "timestamp" (wall-clock capture time, Unix s), "pts",
    "latency_ms", "stream", "source", "detections": [{"xyxy", "conf", "cls", "name"}]}. Line-buffered.
    ``stream`` is the frame's 0-based line in a .streams file (0 for one source), ``source`` its masked name
    (``stream_names``: one per stream; else ``source_name``)."""

    def __init__(self, path: str | Path, source_name: str = "", stream_names: list[str] | None = None,
                 stream_ids: list[int] | None = None) -> None:
        self.path = Path(path)
        self.source_name = mask_url(source_name)
        self.stream_names = [mask_url(n) for n in stream_names] if stream_names else None
        self.stream_ids = stream_ids  # Frame.stream -> the stream's number in the output (None: the same)
        self.lines = 0
        self._file = None
        # perf_counter -> wall clock (capture times are perf_counter values)
        self._wall_offset = time.time() - time.perf_counter()

    def __enter__(self) -> "JsonlSink":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w", encoding="utf-8", buffering=1)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def write(self, frame: Frame, detections: list["Detection"], t_out: float) -> None:
        record = {
            "index": frame.index,
            "timestamp": round(frame.t_capture + self._wall_offset, 6),
            "pts": None if frame.pts is None else round(frame.pts, 6),
            "latency_ms": round((t_out - frame.t_capture) * 1000.0, 3),
            "stream": self.stream_ids[frame.stream] if self.stream_ids else frame.stream,
            "source": self.stream_names[frame.stream] if self.stream_names else self.source_name,
            "detections": [
                {"xyxy": [round(float(v), 2) for v in d.xyxy], "conf": round(float(d.conf), 4), "cls": int(d.cls), "name": d.name}
                for d in detections
            ],
        }
        self._file.write(json.dumps(record) + "\n")
        self.lines += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            logger.info("Saved %d detection lines to %s", self.lines, self.path)
