"""Several streams in one pipeline (a .streams file): lossless files in order, one failing stream never stops the
others, outputs per stream, per-stream kernel state, and the streams file's bad lines."""

import json
import logging
import time

import av
import numpy as np
import pytest
import torch

from pipeline.config import PipelineConfig
from pipeline.runner import run_pipeline, tile
from pipeline.sources import CameraSource, EndOfStream, MultiSource, VideoFileSource, open_source, read_streams_file
from pipeline.stages import Batch, KernelDeblur
from pipeline.sources import Frame
from fakes import FakeCapture, FakeDetector, InvertModel, write_clip


pytestmark = pytest.mark.usefixtures("restore_threads")  # tests/conftest.py: the runner sets torch's threads


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    return write_clip(d / "a.mp4", n=10), write_clip(d / "b.mp4", n=7), write_clip(d / "c.mp4", n=4, h=64, w=96)


def _drain(src, ready: bool = False) -> list:
    """Every frame of ``src``; ``ready``: first wait until each stream has a frame decoded ahead (on a loaded machine
    one reader may start late and the turns pass it by, which is right but not what an ordering test is after)."""
    out = []
    with src:
        deadline = time.perf_counter() + 10.0
        while ready and not all(s._queue.qsize() for s in src.sources) and time.perf_counter() < deadline:
            time.sleep(0.01)
        while True:
            try:
                f = src.get(timeout=2.0)
            except EndOfStream:
                return out
            assert f is not None, "a file stream stalled"
            out.append(f)


# --- the streams file -------------------------------------------------------------------------------------------
def test_streams_file_skips_comments_and_empty_lines_naming_them(tmp_path, caplog):
    f = tmp_path / "list.streams"
    f.write_text("# site A\ncam0\n\nrtsp://u:secret@host/x\n")
    with caplog.at_level(logging.WARNING, logger="pipeline.sources"):
        assert read_streams_file(str(f)) == ["cam0", "rtsp://u:secret@host/x"]
    assert "line 1: a comment" in caplog.text and "line 3: empty" in caplog.text


@pytest.mark.parametrize("text, match", [
    ("cam0\nrtsp://u:secret@host/x\nrtsp://u:secret@host/x\n", r"line 3: 'rtsp://u:\*\*\*@host/x' repeats line 2"),
    ("# nothing\n\n", "lists no source"),
    ("", "lists no source"),
])
def test_streams_file_errors_name_the_line(tmp_path, text, match):
    f = tmp_path / "list.txt"
    f.write_text(text)
    with pytest.raises(ValueError, match=match) as e:
        read_streams_file(str(f))
    assert "secret" not in str(e.value)


def test_missing_streams_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="nope.streams.*not found"):
        open_source(str(tmp_path / "nope.streams"))


def test_a_bad_line_is_an_error_naming_the_source(tmp_path, clips):
    f = tmp_path / "list.streams"
    f.write_text(f"{clips[0]}\n{tmp_path / 'missing.mp4'}\n")
    with pytest.raises(ValueError, match="missing.mp4"):
        open_source(str(f))


# --- MultiSource ------------------------------------------------------------------------------------------------
def test_files_are_read_in_turn_in_order_none_lost(clips, tmp_path):
    f = tmp_path / "list.streams"
    f.write_text("\n".join(str(c) for c in clips) + "\n")
    src = open_source(str(f))
    assert isinstance(src, MultiSource) and not src.live
    frames = _drain(src, ready=True)
    for stream, n in enumerate((10, 7, 4)):
        assert [fr.index for fr in frames if fr.stream == stream] == list(range(n))
    assert [s["frames_in"] for s in src.streams()] == [10, 7, 4]
    order = [fr.stream for fr in frames]
    assert order.index(2) < len(order) - 1 - order[::-1].index(0)  # interleaved, not one file after the other


def test_one_failing_stream_ends_alone(clips, caplog):
    caps = iter([FakeCapture(fail_after=2)] + [FakeCapture(opened=False)] * 3)  # 2 frames, then gone for good
    broken = CameraSource(3, capture_factory=lambda i: next(caps), reconnect_attempts=1, reconnect_delay=0.01)
    src = MultiSource("site.streams", [VideoFileSource(clips[0]), broken, VideoFileSource(clips[1])])
    with caplog.at_level(logging.WARNING):
        frames = _drain(src)
    assert [fr.index for fr in frames if fr.stream == 0] == list(range(10))
    assert [fr.index for fr in frames if fr.stream == 2] == list(range(7))
    assert [fr.index for fr in frames if fr.stream == 1] == [0, 1]
    assert "Stream 1" in caplog.text and "ends alone" in caplog.text
    assert src.streams()[1]["error"] and "stream 1" in src.stopped_early


def test_an_unreachable_stream_does_not_block_the_others(clips, caplog):
    url = "rtsp://user:secret@127.0.0.1:9/none"
    src = open_source(str(clips[0]))
    unreachable = open_source(url, open_timeout=0.3, reconnect_attempts=0)
    multi = MultiSource("site.streams", [src, unreachable], reconnect_attempts=1, reconnect_delay=0.05)
    with caplog.at_level(logging.WARNING):
        frames = _drain(multi)
    assert [fr.index for fr in frames] == list(range(10)) and {fr.stream for fr in frames} == {0}
    assert "Stream 1" in caplog.text and "secret" not in caplog.text and "never opened" in caplog.text


# --- the pipeline ----------------------------------------------------------------------------------------------
def test_pipeline_outputs_per_stream(clips, tmp_path):
    f = tmp_path / "list.streams"
    f.write_text(f"{clips[0]}\n{clips[1]}\n")
    out = tmp_path / "out"
    cfg = PipelineConfig(runtime="torch", source=str(f), batch=2, max_latency=50.0, save=str(out) + "/",
                         save_json=str(tmp_path / "d.jsonl"), summary=str(tmp_path / "s.json"))
    s = run_pipeline(cfg, deblur_model=InvertModel(), detector=FakeDetector(imgsz=64))
    assert s["frames_in"] == s["frames_out"] == 17 and s["source_kind"] == "streams"
    assert [(r["stream"], r["frames_in"], r["frames_out"]) for r in s["streams"]] == [(0, 10, 10), (1, 7, 7)]
    assert all(r["latency_ms"]["p95"] is not None for r in s["streams"])
    lines = [json.loads(x) for x in (tmp_path / "d.jsonl").read_text().splitlines()]
    for stream, (clip, n) in enumerate(((clips[0], 10), (clips[1], 7))):
        mine = [r for r in lines if r["stream"] == stream]
        assert [r["index"] for r in mine] == list(range(n)) and {r["source"] for r in mine} == {str(clip)}
    videos = sorted(out.glob("*.mp4"))
    assert [v.name for v in videos] == ["stream0_a.mp4", "stream1_b.mp4"]
    for v, n in zip(videos, (10, 7)):
        with av.open(str(v)) as c:
            assert sum(1 for _ in c.decode(video=0)) == n


def test_save_folder_needs_a_streams_source():
    with pytest.raises(ValueError, match="folder ending in /"):
        PipelineConfig(source="demo", save="runs/out/")


def test_tile_puts_each_stream_in_its_cell():
    a, b = np.full((40, 80, 3), 50, np.uint8), np.full((40, 80, 3), 200, np.uint8)
    grid = tile([a, None, b], width=160)
    assert grid.shape == (80, 160, 3)  # 2 x 2 cells of 80 x 40
    assert grid[20, 40, 0] == 50 and grid[20, 120, 0] == 0 and grid[60, 40, 0] == 200


# --- per-stream kernel state -------------------------------------------------------------------------------------
def test_each_stream_keeps_its_own_temporal_kernel_state():
    import cv2
    from skimage import data as skdata

    from deblur.data.blur_synth import apply_kernel, linear_kernel
    from deblur.kernel_deblur import KernelDeblurrer

    small = cv2.resize(skdata.astronaut()[..., ::-1], (96, 64), interpolation=cv2.INTER_AREA)
    seqs = {0: [apply_kernel(small, linear_kernel(9, a)) for a in (0, 10, 20)],
            1: [apply_kernel(small, linear_kernel(13, a)) for a in (90, 100, 110)]}

    def tensor(img):
        return torch.from_numpy(np.ascontiguousarray(img[..., ::-1])).permute(2, 0, 1)[None].float() / 127.5 - 1.0

    @torch.inference_mode()  # as the pipeline's threads run the stages
    def run(order):
        stage = KernelDeblur(KernelDeblurrer(device="cpu", temporal=0.6, gate_px=0.0))
        out = {}
        for stream, t in order:
            batch = Batch([Frame(t, 0.0, seqs[stream][t], stream=stream)], blur=tensor(seqs[stream][t]))
            out[(stream, t)] = stage(batch).restored
        return out

    alone = {**run([(0, t) for t in range(3)]), **run([(1, t) for t in range(3)])}
    mixed = run([(s, t) for t in range(3) for s in (0, 1)])
    for key in alone:
        torch.testing.assert_close(mixed[key], alone[key])


def test_show_tiles_the_newest_frame_of_each_stream(clips, tmp_path, monkeypatch):
    import pipeline.display as display

    shown = []

    class FakeWindow:
        def __init__(self, title, max_width):
            self.title = title

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def show(self, canvas, fps=None):
            shown.append(canvas.copy())
            return True

    monkeypatch.setattr(display, "check_display", lambda: None)
    monkeypatch.setattr(display, "Display", FakeWindow)
    f = tmp_path / "list.streams"
    f.write_text(f"{clips[0]}\n{clips[1]}\n")
    s = run_pipeline(PipelineConfig(runtime="torch", source=str(f), show=True), deblur_model=InvertModel(),
                     detector=FakeDetector(imgsz=64))
    assert s["frames_out"] == len(shown) == 17
    last = shown[-1]
    half = last.shape[1] // 2
    assert last[:, :half].any() and last[:, half:].any()  # both streams' cells hold a picture
    first = shown[0]
    assert [bool(first[:, :half].any()), bool(first[:, half:].any())].count(True) == 1  # the other cell: black so far
