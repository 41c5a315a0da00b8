"""Streams over Ray actors (pipeline/distributed.py): a real local Ray cluster on loopback, one actor killed mid-run.

Ray gives its node the machine's external address; only loopback traffic is allowed here, so the cluster runs in a
private network namespace that has nothing but loopback (``unshare -rn``)."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.config import PipelineConfig
from pipeline.distributed import merge, part_path, split
from fakes import write_clip

ROOT = Path(__file__).resolve().parents[1]


def _netns_ok() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    return subprocess.run(["unshare", "-rn", "sh", "-c", "ip link set lo up"], capture_output=True).returncode == 0


def test_split_spreads_streams_round_robin_and_never_leaves_a_part_empty():
    assert split(5, 2) == [[0, 2, 4], [1, 3]]
    assert split(2, 8) == [[0], [1]]
    assert split(3, 0) == [[0, 1, 2]]
    assert part_path("runs/x/d.jsonl", 3) == str(Path("runs/x/d.part3.jsonl"))


def test_ray_missing_is_a_clear_error(monkeypatch):
    from pipeline.distributed import run_on_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ValueError, match="requirements-ray.txt"):
        run_on_ray(PipelineConfig(source="demo", ray="local"))


def test_show_with_ray_is_a_config_error():
    with pytest.raises(ValueError, match="drop --show"):
        PipelineConfig(source="demo", ray="local", show=True)


def test_merge_sums_parts_and_orders_streams():
    def part(k, rows, restarted):
        return {"streams": rows, "latency_ms": {"p50": 10.0 * (k + 1), "p95": 20.0 * (k + 1)}, "live": False,
                "frames_in": sum(r["frames_in"] for r in rows), "frames_out": sum(r["frames_out"] for r in rows),
                "dropped": 0, "interrupted": False, "fps": 5.0, "ray": {"part": k, "node": "n", "restarted": restarted}}

    s = merge([part(0, [{"stream": 2, "frames_in": 3, "frames_out": 3}, {"stream": 0, "frames_in": 4, "frames_out": 4}], True),
               part(1, [{"stream": 1, "frames_in": 5, "frames_out": 5}], False)],
              PipelineConfig(source="rtsp://u:secret@h/x", ray="local"))
    assert [r["stream"] for r in s["streams"]] == [0, 1, 2] and s["frames_in"] == s["frames_out"] == 12
    assert s["fps"] == 10.0 and s["ray"]["restarts"] == 1 and s["latency_ms"]["p95_worst_part"] == 40.0
    assert "secret" not in json.dumps(s)


@pytest.mark.skipif(not _netns_ok(), reason="needs a private network namespace (unshare -rn) for Ray on loopback")
def test_streams_on_a_local_ray_cluster_survive_a_killed_actor(tmp_path):
    clips = [write_clip(tmp_path / f"{name}.mp4", n=n) for name, n in (("a", 120), ("b", 40), ("c", 60))]
    streams = tmp_path / "site.streams"
    streams.write_text("\n".join(str(c) for c in clips) + "\n")
    out = tmp_path / "out"
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys, threading, time
        from pathlib import Path
        sys.path.insert(0, {str(ROOT)!r})
        import ray
        from pipeline.config import PipelineConfig
        from pipeline.distributed import run_on_ray

        ray.init(address="local", include_dashboard=False, num_cpus=2)
        part0 = Path({str(out / "d.part0.jsonl")!r})
        killed = []

        def kill_part0_midway():  # as an operator or the OOM killer would: Ray restarts it
            while not (part0.is_file() and len(part0.read_text().splitlines()) >= 5):
                time.sleep(0.02)
            ray.kill(ray.get_actor("blurdet-part0"), no_restart=False)
            killed.append(len(part0.read_text().splitlines()))

        threading.Thread(target=kill_part0_midway, daemon=True).start()
        cfg = PipelineConfig(source={str(streams)!r}, deblur=False, ray="local", ray_actors=2, ray_cpus=1,
                             save_json={str(out / "d.jsonl")!r}, summary={str(out / "s.json")!r})
        summary = run_on_ray(cfg)
        print("KILLED", killed)
        print("SUMMARY", json.dumps(summary))
    """))
    cmd = f"ip link set lo up; {sys.executable} {script}"
    run = subprocess.run(["unshare", "-rn", "sh", "-c", cmd], capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = {ln.split(" ", 1)[0]: ln.split(" ", 1)[1] for ln in run.stdout.splitlines() if ln.startswith(("KILLED", "SUMMARY"))}
    killed = json.loads(lines["KILLED"])
    summary = json.loads(lines["SUMMARY"])
    assert killed and killed[0] < 180  # killed part-way through part 0's 180 frames
    assert summary["ray"]["actors"] == 2 and summary["ray"]["restarts"] == 1
    assert [p["streams"] for p in sorted(summary["ray"]["parts"], key=lambda p: p["part"])] == [[0, 2], [1]]
    assert [(r["stream"], r["frames_in"], r["frames_out"]) for r in summary["streams"]] == [(0, 120, 120), (1, 40, 40), (2, 60, 60)]
    # the restarted part wrote its file anew: every frame of its streams exactly once
    for k, expect in ((0, {(0, i) for i in range(120)} | {(2, i) for i in range(60)}), (1, {(1, i) for i in range(40)})):
        records = [json.loads(x) for x in (out / f"d.part{k}.jsonl").read_text().splitlines()]
        got = [(r["stream"], r["index"]) for r in records]
        assert len(got) == len(expect) and set(got) == expect
    assert json.loads((out / "s.json").read_text())["frames_out"] == 220
