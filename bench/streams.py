"""Several streams in one pipeline: aggregate fps and per-stream latency for 1, 2, 4 and 8 streams.

Each stream is its own copy of one blurred clip (the demo clip resized, synthetic shake as bench/realtime.py makes
it), listed in a .streams file and run by `python -m pipeline --source N.streams` in its own subprocess, with the
pipeline's defaults (deblurring on) and ``batch`` = the number of streams (each step batches one frame of each).

  files  lossless: every frame of every stream is processed; aggregate fps = all frames out / time
  live   --realtime: each file plays at its own frame rate as a camera delivers it, the newest frame of each
         stream wins; per-stream drops and p95 capture-to-output latency

    python bench/streams.py                          # 1 2 4 8 streams, 640x360, 100 frames each, files and live
    python bench/streams.py --streams 1 4 --frames 60 --modes files

Writes bench/results/streams_<date>_<device>.{json,md}. Compare rows only within one run (this machine is shared).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_flags, cpu_model  # noqa: E402
from realtime import make_clip  # noqa: E402

from runtime.files import atomic_write_text  # noqa: E402


def run(streams_file: Path, n: int, live: bool, threads: int, timeout: float, summary: Path, device: str) -> dict:
    cmd = [sys.executable, "-m", "pipeline", "--source", str(streams_file), "--batch", str(n), "--threads", str(threads),
           "--device", device, "--summary", str(summary), "log_every=0"]
    if live:
        cmd.append("--realtime")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(summary.read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", nargs="+", type=int, default=[1, 2, 4, 8])
    p.add_argument("--modes", nargs="+", choices=["files", "live"], default=["files", "live"])
    p.add_argument("--size", default="640x360")
    p.add_argument("--frames", type=int, default=100, help="frames per stream")
    p.add_argument("--simulate-blur", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=0, help="frames per batch (0 = the number of streams)")
    p.add_argument("--device", default="cpu", help="cpu | cuda (bench/gpu_check.sh: 16 streams of 1280x720)")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip, _, _ = make_clip("demo", tmp / "clip.mp4", args.frames, args.size, args.simulate_blur, 0)
        for n in args.streams:
            copies = []
            for i in range(n):
                copies.append(tmp / f"s{i}.mp4")
                if not copies[-1].exists():
                    shutil.copy(clip, copies[-1])
            listing = tmp / f"{n}.streams"
            listing.write_text("\n".join(str(c) for c in copies) + "\n")
            for mode in args.modes:
                s = run(listing, args.batch or n, mode == "live", args.threads, args.timeout, tmp / f"{n}_{mode}.json", args.device)
                row = {"streams": n, "mode": mode, "batch": args.batch or n, "frames_in": s["frames_in"], "frames_out": s["frames_out"],
                       "dropped": s["dropped"], "fps": s["fps"],
                       "per_stream_fps": [r["fps"] for r in s["streams"]],
                       "per_stream_frames_out": [r["frames_out"] for r in s["streams"]],
                       "p95_ms_worst_stream": max((r["latency_ms"]["p95"] or 0.0) for r in s["streams"]),
                       "ms_per_frame": s["ms_per_frame"]}
                rows.append(row)
                print(json.dumps(row), flush=True)

    single = {r["mode"]: r["fps"] for r in rows if r["streams"] == 1}
    lines = [f"# Several streams in one pipeline ({dt.date.today()}, {cpu_model()}, "
             f"{'AVX512-BF16' if 'avx512_bf16' in cpu_flags() else 'no AVX512-BF16'}, {args.threads} threads)", "",
             f"`python bench/streams.py {' '.join(argv if argv is not None else sys.argv[1:])}`: {args.size}, "
             f"{args.frames} frames per stream, shake severity {args.simulate_blur}, defaults (deblurring on), batch "
             f"{args.batch or '= streams'}.",
             "", "| streams | mode | frames in / out | dropped | aggregate fps | × one stream | per-stream fps | worst p95 ms |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r["fps"] / single[r["mode"]] if single.get(r["mode"]) else float("nan")
        lines.append(f"| {r['streams']} | {r['mode']} | {r['frames_in']} / {r['frames_out']} | {r['dropped']} | "
                     f"{r['fps']:.1f} | {ratio:.2f} | {min(r['per_stream_fps']):.1f}–{max(r['per_stream_fps']):.1f} | "
                     f"{r['p95_ms_worst_stream']:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"streams_{dt.date.today()}_{args.device.split(':')[0]}"
    atomic_write_text(stem.with_suffix(".json"), json.dumps(rows, indent=2) + "\n")
    atomic_write_text(stem.with_suffix(".md"), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
