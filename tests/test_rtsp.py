"""The rtsp:// source against a real RTSP server on 127.0.0.1 (GStreamer's gst-rtsp-server, tests/rtsp_server.py,
run by the system python3): live semantics, credential masking, and the server going away mid-stream.

The server streams a live 30 fps H.264 test pattern and asks for a password. Frames carry the stream's own
clock (``Frame.pts``, from the RTP timestamps), so "the newest frame" is checked against the server's time,
not only against frame counts. Skipped, with the reason, where the system gst-rtsp-server is absent
(`.ci/run` installs it).
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipeline.sources import EndOfStream, StreamSource, open_source

ROOT = Path(__file__).resolve().parents[1]
SERVER = Path(__file__).with_name("rtsp_server.py")
USER, PASSWORD = "viewer", "s3cr3t-Pw9"  # the password must never appear in a name, log line, error or summary
APT = ("python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
       "gstreamer1.0-plugins-ugly")


def _system_python() -> str | None:
    """The interpreter that has Debian's `gi` (not this virtualenv's): $RTSP_SERVER_PYTHON, else python3 on the
    default system PATH."""
    return os.environ.get("RTSP_SERVER_PYTHON") or shutil.which("python3", path=os.defpath)


def _server_missing() -> str | None:
    python = _system_python()
    if python is None:
        return "no system python3 (set RTSP_SERVER_PYTHON)"
    try:
        r = subprocess.run([python, str(SERVER), "--check"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{python} {SERVER.name} --check failed: {e}"
    if r.returncode != 0:
        return f"{python}: {(r.stdout + r.stderr).strip()[-300:]}"
    return None


_MISSING = _server_missing()
pytestmark = pytest.mark.skipif(
    _MISSING is not None, reason=f"system gst-rtsp-server absent ({_MISSING}); `apt-get install {APT}` (.ci/run does)"
)


class RtspServer:
    """tests/rtsp_server.py in a subprocess, asking for USER/PASSWORD. start() binds a free port the first time,
    the same port after (a restart)."""

    def __init__(self) -> None:
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self, timeout: float = 15.0) -> RtspServer:
        if self._log is not None:
            self._log.close()
        args = [_system_python(), str(SERVER), "--port", str(self.port), "--user", USER, "--password", PASSWORD]
        self._log = tempfile.TemporaryFile(mode="w+")  # GStreamer's warnings: a file, never a pipe that can fill up
        # stdin stays an open pipe: the server exits when it closes (this process gone: no orphan server)
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().strip() if ready else ""
        if not line.isdigit():
            self.kill()  # keeps the log: read below
            raise RuntimeError(f"RTSP server did not start (waited up to {timeout} s): {line!r} {self._stderr()[-500:]}")
        self.port = int(line)
        return self

    def _stderr(self) -> str:
        self._log.seek(0)
        return self._log.read()

    def url(self, password: str = PASSWORD) -> str:
        return f"rtsp://{USER}:{password}@127.0.0.1:{self.port}/cam"

    def masked(self) -> str:
        return f"rtsp://{USER}:***@127.0.0.1:{self.port}/cam"

    def kill(self) -> None:
        """SIGKILL: the server dies as a crashed camera does, without a goodbye to its clients."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc.stdin.close()
        self.proc.stdout.close()
        self.proc = None


@pytest.fixture(scope="module")
def server():
    srv = RtspServer().start()
    yield srv
    srv.kill()


@pytest.fixture
def own_server():
    """A server of this test's own, which the test may kill and restart."""
    srv = RtspServer().start()
    yield srv
    srv.kill()


def _shown(exc: BaseException) -> str:
    """What a traceback prints of an exception and its chain (causes, and contexts not suppressed)."""
    lines = []
    while exc is not None:
        lines.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return "\n".join(lines)


def _get(src, timeout: float = 10.0):
    frame = src.get(timeout=timeout)
    assert frame is not None, f"no frame from {src.name} within {timeout} s"
    return frame


def test_stream_keeps_the_newest_frame_and_counts_what_it_dropped(server):
    src = open_source(server.url(), open_timeout=5)
    assert isinstance(src, StreamSource) and src.live and src.maxsize == 1
    consumed = 0
    with src:
        assert src.frame_size == (120, 160) and src.fps == pytest.approx(30.0)
        first = _get(src)
        consumed += 1
        for _ in range(3):  # a consumer much slower than the camera's 30 fps
            prev, t_prev = _get(src), time.perf_counter()
            consumed += 1
            time.sleep(0.5)
            frame, t_frame = _get(src), time.perf_counter()
            consumed += 1
            assert frame.bgr.shape == (120, 160, 3)
            # the newest frame: the stream's clock moved on as far as the wall clock did (a queue would give prev + 1)
            assert frame.pts - prev.pts == pytest.approx(t_frame - t_prev, abs=0.3)
            assert frame.index - prev.index >= 10
            assert time.perf_counter() - frame.t_capture < 0.3  # decoded just now, not waiting in a queue
        assert first.index < prev.index < frame.index
        dropped, read = src.dropped, src.read
    assert dropped > 0 and src.peak_queued <= 1
    assert read - dropped - consumed in (0, 1)  # every decoded frame was consumed or counted as dropped


def test_first_frame_after_a_pause_is_the_newest(server):
    """The runner opens the source, builds and warms up the models, then reads: the first frame must be live,
    not one from before (its latency is measured from its decoding, so the staleness would not show)."""
    with open_source(server.url(), open_timeout=5) as src:
        time.sleep(1.5)  # building and warming up the models
        first, t_first = _get(src), time.perf_counter()
        time.sleep(0.5)
        later, t_later = _get(src), time.perf_counter()
    lag = (later.pts - first.pts) - (t_later - t_first)  # ~0 when both are the newest frame at their time
    assert lag < 0.3, f"the first frame was {lag:.2f} s older than the newest"


def test_credentials_are_masked_in_names_logs_and_errors(server, caplog):
    caplog.set_level(logging.DEBUG)
    with open_source(server.url(), open_timeout=5) as src:
        assert src.name == server.masked()
        _get(src)  # the right password gets frames
    with pytest.raises(ConnectionError) as e:
        with open_source(server.url(password="wr0ng-Pw7"), open_timeout=5):
            pass
    message = _shown(e.value)
    assert "Unauthorized" in str(e.value) and f"{USER}:***@127.0.0.1:{server.port}" in str(e.value)
    for secret in (PASSWORD, "wr0ng-Pw7"):
        assert secret not in message and secret not in caplog.text
    assert server.masked() in caplog.text  # the logs do name the stream


@pytest.mark.slow
def test_pipeline_cli_masks_the_password_in_its_output_and_summary(server, tmp_path):
    summary = tmp_path / "summary.json"
    r = subprocess.run(
        [sys.executable, "-m", "pipeline", "--source", server.url(), "--no-deblur", "--runtime", "torch", "--imgsz", "128",
         "--max-frames", "5", "--summary", str(summary), "--save-json", str(tmp_path / "dets.jsonl"), "-v"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(summary.read_text())
    assert report["source"] == server.masked() and report["live"] is True and report["frames_out"] == 5
    for text in (r.stdout, r.stderr, summary.read_text(), (tmp_path / "dets.jsonl").read_text()):
        assert PASSWORD not in text
    assert server.masked() in r.stderr


def test_server_restart_mid_stream_reconnects(own_server, caplog):
    caplog.set_level(logging.INFO)
    with open_source(own_server.url(), open_timeout=5, reconnect_attempts=6, reconnect_delay=0.2) as src:
        for _ in range(5):
            _get(src)
        own_server.kill()
        time.sleep(0.5)
        t_restart = time.perf_counter()
        own_server.start()  # the same port
        deadline = time.perf_counter() + 15
        while True:  # frames buffered before the crash may still come; wait for one from the new server
            assert time.perf_counter() < deadline, "no frame from the restarted server"
            frame = _get(src)
            if frame.t_capture > t_restart:
                break
        assert src.reconnects >= 1
    assert "reconnect" in caplog.text and PASSWORD not in caplog.text


def test_server_gone_for_good_gives_up_with_a_clear_error(own_server, caplog):
    caplog.set_level(logging.INFO)
    t0 = time.perf_counter()
    with pytest.raises(ConnectionError) as e:
        with open_source(own_server.url(), open_timeout=2, reconnect_attempts=2, reconnect_delay=0.1) as src:
            _get(src)
            own_server.kill()
            deadline = time.perf_counter() + 15
            while time.perf_counter() < deadline:
                try:
                    src.get(timeout=1)
                except EndOfStream:
                    pytest.fail("the stream ended quietly (EndOfStream) when its server went away")
    assert time.perf_counter() - t0 < 15
    message = _shown(e.value)
    assert own_server.masked() in message and "2 reconnect attempts" in message
    assert PASSWORD not in message and PASSWORD not in caplog.text
