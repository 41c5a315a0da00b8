"""--show for real: a virtual X server (Xvfb), the pipeline's window, and a screenshot of the X
screen (xwd, parsed here) whose two panes must show the input (left) and the output (right).

Needs the Debian packages xvfb and x11-apps (xwd); skipped with a reason when they are missing.
"""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from fakes import make_frame, write_clip

ROOT = Path(__file__).resolve().parents[1]
H, W = 96, 160  # clip frame size; the window shows a (H, 2W) canvas at the screen's top-left

pytestmark = pytest.mark.skipif(
    shutil.which("Xvfb") is None or shutil.which("xwd") is None,
    reason="needs Xvfb and xwd: apt-get install -y xvfb x11-apps",
)


def parse_xwd(data: bytes) -> np.ndarray:
    """XWD (X Window Dump, ZPixmap, 24/32-bit TrueColor) -> (H,W,3) uint8 RGB."""
    header = np.frombuffer(data[:100], dtype=">u4")
    header_size, version, fmt, depth, width, height = (int(v) for v in header[:6])
    byte_order, bpp, bytes_per_line = int(header[7]), int(header[11]), int(header[12])
    red_mask, green_mask, blue_mask, ncolors = int(header[14]), int(header[15]), int(header[16]), int(header[19])
    if version != 7 or fmt != 2 or bpp not in (24, 32):
        raise ValueError(f"unsupported XWD: version {version}, format {fmt}, {bpp} bits per pixel")
    offset = header_size + 12 * ncolors
    nbytes = bpp // 8
    raw = np.frombuffer(data[offset : offset + bytes_per_line * height], dtype=np.uint8).reshape(height, bytes_per_line)
    raw = raw[:, : width * nbytes].reshape(height, width, nbytes).astype(np.uint32)
    order = range(nbytes) if byte_order == 0 else range(nbytes - 1, -1, -1)  # 0 = LSBFirst
    pixels = sum(raw[..., i] << (8 * k) for k, i in enumerate(order))

    def channel(mask):
        shift = (mask & -mask).bit_length() - 1
        return ((pixels & mask) >> shift).astype(np.uint8)

    return np.stack([channel(red_mask), channel(green_mask), channel(blue_mask)], axis=-1)


@pytest.fixture
def xvfb():
    """A private Xvfb on a free display number (-displayfd); yields the DISPLAY string."""
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "640x480x24", "-nolisten", "tcp", "-noreset"],
        pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as f:
            number = f.readline().strip()
        if not number:
            pytest.skip("Xvfb did not start")
        yield f":{number}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


_SHOW_SCRIPT = textwrap.dedent(
    """
    import sys, time, torch
    sys.path.insert(0, "tests")  # the test doubles (tests/fakes.py); the script runs from the repository root
    from pipeline.__main__ import build_parser, config_from_args
    from pipeline.runner import run_pipeline
    from fakes import FakeDetector

    class SlowInvert(torch.nn.Module):  # the output pane shows inverted colours; slow, to keep the window up
        def forward(self, x):
            time.sleep(0.04)
            return -x

    cfg = config_from_args(build_parser().parse_args(sys.argv[1:]))
    s = run_pipeline(cfg, deblur_model=SlowInvert(), detector=FakeDetector())
    print("frames_out", s["frames_out"], flush=True)
    sys.exit(130 if s["interrupted"] else 0)
    """
)


def test_show_window_has_input_and_output_panes(xvfb, tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", n=150, h=H, w=W)
    env = dict(os.environ, DISPLAY=xvfb)
    proc = subprocess.Popen(
        [sys.executable, "-c", _SHOW_SCRIPT, "--source", str(clip), "--show", "--imgsz", "64", "--runtime", "torch"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    expected_left = make_frame(0, H, W)[..., ::-1].astype(int)  # RGB
    # FakeDetector's box spans x = W/4 .. 3W/4 (its label sits on top of it): compare the columns beside it
    region = (slice(2, H // 5), slice(4, W // 4 - 4))  # left (reddish) half of the frame, above the moving square
    right_half = (slice(22, 30), slice(3 * W // 4 + 4, W - 4))  # the bluish half, below the fps label

    def panes_ok(img):
        left, right = img[:H, :W].astype(int), img[:H, W : 2 * W].astype(int)
        return (
            np.abs(left[region] - expected_left[region]).mean() < 15,  # input colours
            np.abs(right[region] - (255 - expected_left[region])).mean() < 15,  # output = inverted input
            np.abs(right[right_half] - (255 - expected_left[right_half])).mean() < 15,
            img[H + 10 :, :].mean() < 5,  # nothing else on the (black) screen below the window
        )

    shot, checks = None, None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            r = subprocess.run(["xwd", "-root", "-silent", "-display", xvfb], capture_output=True, timeout=20)
            if r.returncode == 0:
                img = parse_xwd(r.stdout)
                ok = panes_ok(img)
                if ok[0]:  # the window is up (a shot taken mid-repaint may still fail the rest: take another)
                    shot, checks = img, ok
                    if all(ok):
                        proc.send_signal(signal.SIGINT)  # seen enough: Ctrl-C, which must close the window cleanly
                        break
            time.sleep(0.1)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, 130), err  # 130: stopped by our Ctrl-C
    assert shot is not None, f"no screenshot showed the input pane at the top-left; pipeline said: {out} {err[-2000:]}"
    assert all(checks), f"input pane, output pane (two halves), empty screen below: {checks}"

