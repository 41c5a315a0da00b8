"""Sinks: H.264 video (even sides, closes into a playable file), JSON lines, the display's guards."""

import json

import av
import cv2
import numpy as np
import pytest

from detect import Detection
from pipeline import display as display_mod
from pipeline.sinks import JsonlSink, VideoSink
from pipeline.sources import Frame
from fakes import make_frame


def _decode(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = [f.to_ndarray(format="bgr24") for f in c.decode(s)]
        return frames, s.codec_context.name, s.codec_context.pix_fmt


def test_video_sink_writes_playable_h264_with_even_sides(tmp_path):
    path = tmp_path / "sub" / "out.mp4"
    with VideoSink(path, fps=25) as sink:
        for i in range(7):
            sink.write(make_frame(i, 47, 63))  # odd sides are cropped to even
        sink.write(make_frame(0, 20, 100))  # another size is letterboxed onto the first
    frames, codec, pix_fmt = _decode(path)
    assert len(frames) == 8 and frames[0].shape == (46, 62, 3)
    assert codec == "h264" and pix_fmt == "yuv420p"
    assert np.abs(frames[0].astype(int) - make_frame(0, 47, 63)[:46, :62]).mean() < 8


def test_video_sink_close_is_idempotent_and_lazy(tmp_path):
    sink = VideoSink(tmp_path / "never.mp4")
    with sink:
        pass
    sink.close()
    assert not (tmp_path / "never.mp4").exists()  # no frame, no file


def test_jsonl_sink_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    det = Detection(xyxy=(1.234, 2.0, 30.0, 40.5), conf=0.87654, cls=2, name="car")
    with JsonlSink(path, "rtsp://u:pw@h/x") as sink:
        sink.write(Frame(0, 10.0, make_frame(0), pts=0.0), [det], 10.05)
        sink.write(Frame(3, 10.1, make_frame(3)), [], 10.2)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["index"] for r in lines] == [0, 3]
    assert lines[0]["detections"] == [{"xyxy": [1.23, 2.0, 30.0, 40.5], "conf": 0.8765, "cls": 2, "name": "car"}]
    assert lines[0]["latency_ms"] == pytest.approx(50.0, abs=0.01) and lines[1]["pts"] is None
    assert lines[0]["source"] == "rtsp://u:***@h/x" and "timestamp" in lines[0]


def test_check_display_without_display_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    with pytest.raises(RuntimeError, match=r"--show needs a display.*DISPLAY is not set.*xvfb-run.*--save"):
        display_mod.check_display()
    monkeypatch.setenv("DISPLAY", ":4242")
    with pytest.raises(RuntimeError, match=r"no X server listens"):
        display_mod.check_display()


def test_display_quits_on_q_and_esc(monkeypatch, tmp_path):
    """Key handling without a window: cv2's GUI calls are replaced (the real window is tested under Xvfb)."""
    calls = []
    monkeypatch.setattr(display_mod, "check_display", lambda: None)
    monkeypatch.setattr(cv2, "namedWindow", lambda *a: calls.append("named"))
    monkeypatch.setattr(cv2, "moveWindow", lambda *a: None)
    monkeypatch.setattr(cv2, "imshow", lambda name, img: calls.append(img.shape))
    monkeypatch.setattr(cv2, "getWindowProperty", lambda *a: 1.0)
    monkeypatch.setattr(cv2, "destroyWindow", lambda *a: calls.append("destroyed"))
    keys = iter([-1, ord("q"), 27])
    monkeypatch.setattr(cv2, "waitKey", lambda ms: next(keys, -1))
    with display_mod.Display(max_width=50) as d:
        assert d.show(make_frame(0, 40, 100), fps=12.5) is True
        assert d.show(make_frame(1, 40, 100)) is False  # q
        assert d.show(make_frame(2, 40, 100)) is False  # Esc
    assert calls[0] == "named" and calls[1] == (20, 50, 3) and calls[-1] == "destroyed"
