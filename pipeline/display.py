"""The --show window. The ONLY module that calls cv2.imshow / cv2.waitKey: every GUI call lives here.

opencv-python's Qt backend aborts the whole process (SIGABRT) when no X display is reachable,
so `check_display()` runs before any window is made and raises a clear error instead. The window
must be driven from the main thread (the runner's sink loop runs there).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import cv2
import numpy as np

logger = logging.getLogger(__name__)

QUIT_KEYS = (ord("q"), ord("Q"), 27)  # q, Q, Esc


def check_display() -> None:
    """RuntimeError unless $DISPLAY names an X display (no window is opened here). Only where X11 is the window
    system (Linux and the BSDs, without Wayland): macOS and Windows have their own, with no $DISPLAY."""
    if sys.platform in ("darwin", "win32", "cygwin") or os.environ.get("WAYLAND_DISPLAY"):
        return
    display = os.environ.get("DISPLAY", "")
    if not display:
        raise RuntimeError(
            "--show needs a display, but $DISPLAY is not set (headless machine or SSH without -X). "
            "Fix: run on a desktop, use `ssh -X`, run under a virtual display (`xvfb-run python -m pipeline --show ...`), "
            "or drop --show and write the result with --save OUT.mp4."
        )
    if display.startswith(":"):
        number = display[1:].split(".")[0]
        if number.isdigit() and not os.path.exists(f"/tmp/.X11-unix/X{number}"):
            raise RuntimeError(
                f"--show: $DISPLAY={display} but no X server listens there (/tmp/.X11-unix/X{number} is missing). "
                "Fix: start the X server (e.g. `Xvfb {0} &`), set DISPLAY to a running one, or drop --show.".format(display)
            )


class Display:
    """A window showing the annotated canvas with an fps counter; q or Esc (or closing it) quits.

    show(canvas_bgr, fps) returns False once the user asked to quit.
    """

    def __init__(self, title: str = "pipeline", max_width: int = 1920) -> None:
        self.title = title
        self.max_width = max_width
        self._open = False

    def __enter__(self) -> "Display":
        check_display()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def show(self, canvas_bgr: np.ndarray, fps: float | None = None) -> bool:
        img = canvas_bgr
        if img.shape[1] > self.max_width:
            g = self.max_width / img.shape[1]
            img = cv2.resize(img, (self.max_width, max(1, int(round(img.shape[0] * g)))), interpolation=cv2.INTER_AREA)
        if fps is not None:
            img = img.copy() if img is canvas_bgr else img
            text = f"{fps:.1f} fps"
            scale = max(0.4, img.shape[0] / 700)
            (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            x = img.shape[1] - tw - 6
            cv2.rectangle(img, (x - 3, 0), (img.shape[1], th + base + 6), (0, 0, 0), -1)
            cv2.putText(img, text, (x, th + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 255, 0), 1, cv2.LINE_AA)
        if not self._open:
            check_display()
            cv2.namedWindow(self.title, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)
            cv2.moveWindow(self.title, 0, 0)
            self._open = True
        cv2.imshow(self.title, img)
        key = cv2.waitKey(1) & 0xFF
        if key in QUIT_KEYS:
            logger.info("Display: quit key pressed")
            return False
        try:
            if cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
                logger.info("Display: window closed")
                return False
        except cv2.error:
            return False
        return True

    def close(self) -> None:
        if self._open:
            self._open = False
            try:
                cv2.destroyWindow(self.title)
                cv2.waitKey(1)
            except cv2.error as e:
                logger.debug("Display: destroyWindow failed: %s", e)
