"""Test doubles: a generated clip, a fake camera, a fake detector and toy deblur models (the product's
packages never import this file)."""

from __future__ import annotations

import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from detect.base import Detection


def make_frame(index: int, h: int = 48, w: int = 64) -> np.ndarray:
    """(h,w,3) uint8 BGR test frame: left half reddish, right half bluish, a white square moving with index."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = (40, 60, 200)
    img[:, w // 2 :] = (200, 120, 40)
    s = max(4, h // 6)
    x = (index * 3) % max(1, w - s)
    img[h // 3 : h // 3 + s, x : x + s] = 255
    return img


def write_clip(path: str | Path, n: int = 12, h: int = 48, w: int = 64, fps: int = 25, codec: str = "libx264") -> Path:
    """Write an n-frame clip of make_frame() images with PyAV; returns the path. .ts works over HTTP."""
    import av

    path = Path(path)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "18"}
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(make_frame(i, h, w), format="bgr24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


class FakeCapture:
    """cv2.VideoCapture stand-in: `period` s per read() (a camera blocks until the next frame);
    fails (returns (False, None)) after `fail_after` frames; opened=False mimics a missing device."""

    def __init__(self, opened: bool = True, period: float = 0.005, fail_after: int | None = None, h: int = 48, w: int = 64):
        self.opened = opened
        self.period = period
        self.fail_after = fail_after
        self.h, self.w = h, w
        self.n = 0
        self.released = False
        self._tick = threading.Event()  # never set: wait(period) is the camera's frame interval

    def isOpened(self) -> bool:  # noqa: N802 - cv2's name
        return self.opened and not self.released

    def read(self):
        if not self.isOpened() or (self.fail_after is not None and self.n >= self.fail_after):
            return False, None
        self._tick.wait(self.period)
        self.n += 1
        return True, make_frame(self.n, self.h, self.w)

    def get(self, prop: int) -> float:
        import cv2

        return {cv2.CAP_PROP_FPS: 1.0 / self.period if self.period else 0.0,
                cv2.CAP_PROP_FRAME_WIDTH: float(self.w), cv2.CAP_PROP_FRAME_HEIGHT: float(self.h)}.get(prop, 0.0)

    def set(self, prop: int, value: float) -> bool:
        return True

    def release(self) -> None:
        self.released = True


class FakeDetector:
    """Detector stand-in: one 'thing' box per frame covering the middle of the network input
    (so it maps back to the middle of the frame); records the tensors it was given."""

    names = ["thing"]
    stride = 32
    rect = False

    def __init__(self, imgsz: int = 64, delay: float = 0.0) -> None:
        self.imgsz = imgsz
        self.device = torch.device("cpu")
        self.delay = delay
        self.calls: list[tuple[int, ...]] = []
        self.inputs_range: list[tuple[float, float]] = []
        self.threads: list[int] = []  # threading.get_ident() of each call
        self._wait = threading.Event()

    def __call__(self, x: torch.Tensor) -> list[list[Detection]]:
        if self.delay:
            self._wait.wait(self.delay)
        self.calls.append(tuple(x.shape))
        self.inputs_range.append((float(x.min()), float(x.max())))
        self.threads.append(threading.get_ident())
        h, w = x.shape[2:]
        return [[Detection(xyxy=(w / 4, h / 4, 3 * w / 4, 3 * h / 4), conf=0.9, cls=0, name="thing")] for _ in range(x.shape[0])]

    def warmup(self) -> None:
        pass

    def keep_threads(self) -> None:
        pass


class InvertModel(torch.nn.Module):
    """Toy 'deblurrer': out = -x (RGB [-1,1]), so the output pane shows inverted colours."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -x


class SlowIdentity(torch.nn.Module):
    """Toy 'deblurrer' that takes `delay` seconds per call (a slow consumer)."""

    def __init__(self, delay: float = 0.05) -> None:
        super().__init__()
        self.delay = delay
        self.conv = torch.nn.Conv2d(3, 3, 1)  # has parameters, like a real model
        torch.nn.init.dirac_(self.conv.weight)
        torch.nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay)
        return self.conv(x)


class RecordingIdentity(torch.nn.Module):
    """Toy 'deblurrer': out = x; records (threading.get_ident(), batch size, uniform input) per call. A uniform
    input is the runner's warm-up batch (gray frames)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, int, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((threading.get_ident(), x.shape[0], float(x.max() - x.min()) < 1e-3))
        return x


def centre_offset(k: np.ndarray) -> np.ndarray:
    """(dy, dx) of the kernel's centre of mass from its centre pixel."""
    ys, xs = np.indices(k.shape)
    c = (k.shape[0] - 1) / 2
    return np.array([(k * ys).sum() - c, (k * xs).sum() - c])
