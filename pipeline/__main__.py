"""python -m pipeline: real-time deblurring + YOLO detection on a video, camera, stream or images.

Examples:
  python -m pipeline                                   # the demo clip, summary on stdout
  python -m pipeline --source demo --simulate-blur 3 --save runs/demo/demo.mp4 --summary runs/demo/summary.json
  python -m pipeline --source cam0 --show --no-deblur
  python -m pipeline --source clip.mp4 --save-json dets.jsonl --classes person car --conf 0.4
  python -m pipeline --source site.streams --save runs/site/ --save-json runs/site/dets.jsonl   # several streams
  python -m pipeline --source site.streams --ray local --save-json runs/site/dets.jsonl          # over Ray actors
  python -m pipeline --config configs/pipeline.yaml batch=4 detector.imgsz=320
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Sequence

from configs import ConfigError, load_config
from detect.config import DetectorConfig
from deblur.kernel_refine import RefineConfig
from pipeline.config import PRECISIONS, RUNTIMES, PipelineConfig

logger = logging.getLogger("pipeline")

_P = PipelineConfig()
_D = DetectorConfig()

# flag dest -> config key (dotted for the nested detector section)
FLAG_KEYS = {
    "source": "source", "show": "show", "compare": "compare", "save": "save", "save_json": "save_json", "summary": "summary",
    "conf": "detector.conf", "iou": "detector.iou", "classes": "detector.classes", "imgsz": "detector.imgsz",
    "device": "detector.device", "half": "detector.half", "batch": "batch", "max_latency": "max_latency",
    "deblur_size": "deblur_size", "no_deblur": "deblur", "deblur_weights": "deblur_weights", "amp": "amp",
    "simulate_blur": "simulate_blur", "blur_seed": "blur_seed", "vid_stride": "vid_stride", "max_frames": "max_frames",
    "threads": "threads", "runtime": "runtime", "queue_size": "queue_size", "realtime": "realtime",
    "refine": "kernel.refine.iters", "refine_every": "kernel.refine.every", "refiner": "kernel.refiner", "ray": "ray",
}


def _deblur_size(text: str) -> int | str:
    if text in ("auto", "full", "detector"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give 'auto', 'full', 'detector' or the long side in pixels, e.g. 512") from None
    if value < 32:
        raise argparse.ArgumentTypeError(f"{value}: the long side must be at least 32 pixels (or 'auto', 'full', 'detector')")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1] + "\nDefaults come from pipeline.config.PipelineConfig (and "
        "configs/pipeline.yaml when given with --config). Every flag can also be given as key=value.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = " (default: %s)"
    io = p.add_argument_group("input")
    io.add_argument("--source", metavar="SRC", help="demo | cam0, cam1, ... or 0, 1, ... | video file | image, folder or "
                    "quoted glob | rtsp://, rtmp://, http(s):// stream | list.streams (one source per line, run "
                    "together)" + d % _P.source)
    io.add_argument("--vid-stride", type=int, metavar="N", help="keep every Nth frame" + d % _P.vid_stride)
    io.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames, 0 = all" + d % _P.max_frames)
    io.add_argument("--simulate-blur", type=int, metavar="SEVERITY", choices=range(0, 6),
                    help="synthetic camera-shake blur on every input frame, 0 = off, 1..5" + d % _P.simulate_blur)
    io.add_argument("--blur-seed", type=int, metavar="N", help="seed of the shake kernel" + d % _P.blur_seed)
    io.add_argument("--queue-size", type=int, metavar="N", help="frames a file source decodes ahead" + d % _P.queue_size)
    io.add_argument("--realtime", action="store_const", const=True,
                    help="play a video file at its own frame rate, as a camera would deliver it: the newest frame "
                         "wins and late frames are dropped (measures live fps, drops and latency)")

    db = p.add_argument_group("deblur")
    db.add_argument("--no-deblur", action="store_const", const=False, help="run the same pipeline without deblurring")
    db.add_argument("--deblur-weights", metavar="PATH", help="a kernel-estimator file (estimate + Wiener, the default kind), a bundle with a refiner, or an end-to-end generator file ('' = the shipped deblur/weights/kernel_estimator.pt)")
    db.add_argument("--deblur-size", type=_deblur_size, metavar="auto|full|detector|N",
                    help="deblur the full frame, or a copy whose long side is N pixels (detector: the detector's "
                         "imgsz; the kernel is still estimated and refined on the full frame); auto: detector unless "
                         "--show or --save needs the full frame" + d % _P.deblur_size)
    db.add_argument("--refine", type=int, metavar="ITERS",
                    help="refine the estimated kernel in closed form: ITERS iterations per pyramid level in each full "
                         "refinement (0 = off: the network's kernel, the fastest)" + d % _P.kernel.refine.iters)
    db.add_argument("--refine-every", type=int, metavar="N",
                    help="kernel refinement's video mode: a full refinement every N frames (in a background thread "
                         "unless kernel.refine.background=false), warm-started iterations on every frame; 1 = a full "
                         "refinement on every frame, from one start (~100 ms a 640x360 frame; predict and the "
                         "evaluations refine from four); "
                         "turns refinement on" + d % _P.kernel.refine.every)
    db.add_argument("--refiner", action="store_const", const="",
                    help="run the refiner bundled with the deblur weights (an FPN-MobileNetV2 on the blurred and "
                         "deconvolved frames) on any device; by default it runs on CUDA only (kernel.refiner=auto). "
                         "Another refiner: kernel.refiner=PATH; never: kernel.refiner=none")
    db.add_argument("--amp", choices=PRECISIONS, help="deblur precision: auto = fp16 on CUDA, bf16 on CPUs with "
                    "native bf16, else fp32" + d % _P.amp)
    db.add_argument("--runtime", choices=RUNTIMES, help="runtime of the deblurrer and the darknet detector: torch, "
                    "torch_compile, onnxruntime or openvino (CPU; exported once, cached), auto = the fastest "
                    "available here" + d % _P.runtime)

    dt = p.add_argument_group("detector (Ultralytics names)")
    dt.add_argument("--conf", type=float, metavar="F", help="confidence threshold" + d % _D.conf)
    dt.add_argument("--iou", type=float, metavar="F", help="NMS IoU threshold" + d % _D.iou)
    dt.add_argument("--classes", nargs="+", metavar="NAME", help="keep only these classes (names, or COCO indices)")
    dt.add_argument("--imgsz", type=int, metavar="N", help="detector input side, a multiple of 32" + d % _D.imgsz)
    dt.add_argument("--device", metavar="DEV", help="cpu | cuda | cuda:N | auto, for deblur and detect" + d % _D.device)
    dt.add_argument("--half", action="store_const", const=True, help="fp16 detector (CUDA only)")

    rt = p.add_argument_group("batching")
    rt.add_argument("--batch", type=int, metavar="N", help="frames per inference batch (at most)" + d % _P.batch)
    rt.add_argument("--max-latency", type=float, metavar="MS", help="wait at most MS for a batch to fill" + d % _P.max_latency)
    rt.add_argument("--threads", type=int, metavar="N", help="torch intra-op threads, 0 = every CPU this process may use" + d % _P.threads)

    out = p.add_argument_group("output")
    out.add_argument("--show", action="store_const", const=True,
                     help="window: input | deblurred side by side, boxes, fps; q or Esc quits (needs $DISPLAY)")
    out.add_argument("--compare", action="store_const", const=True,
                     help="A/B: detect on the input too and draw its boxes on the input pane (counts in the captions)")
    out.add_argument("--save", metavar="OUT.mp4", help="H.264 video of input | output with boxes; with a .streams source, DIR/ gets one video per stream")
    out.add_argument("--save-json", metavar="OUT.jsonl", help="one JSON line per frame: index, timestamp, detections")
    out.add_argument("--summary", metavar="PATH", help="write the run summary (fps, ms/frame per stage, latency) as JSON")

    p.add_argument("--ray", metavar="local|ADDRESS",
                   help="spread the streams over pipelines in Ray actors: 'local' starts Ray here, else the address of a "
                        "cluster to join (pip install -r requirements-ray.txt); ray_actors=N, ray_cpus=C")
    p.add_argument("--config", metavar="PATH", help="YAML config (e.g. configs/pipeline.yaml); flags and key=value win over it")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="any config key, e.g. batch=4 detector.conf=0.4 save_crf=28 reconnect_attempts=10")
    return p


def _classes(values: list[str]) -> list[str]:
    """--classes accepts names or COCO indices (Ultralytics passes indices)."""
    if not all(v.isdigit() for v in values):
        return values
    from detect import COCO_NAMES

    out = []
    for v in values:
        i = int(v)
        if i >= len(COCO_NAMES):
            raise ConfigError(f"--classes {v}: COCO has {len(COCO_NAMES)} classes (0..{len(COCO_NAMES) - 1}); or give names, e.g. person car")
        out.append(COCO_NAMES[i])
    return out


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """Defaults <- --config YAML <- flags <- key=value overrides; validated once by the loader."""
    data: dict[str, Any] = {}
    for dest, key in FLAG_KEYS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if dest == "classes":
            value = _classes(value)
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    if getattr(args, "refine_every", None) is not None and getattr(args, "refine", None) is None:
        # --refine-every alone turns the refinement on, with its own iterations (RefineConfig's default)
        data["kernel"]["refine"]["iters"] = RefineConfig().iters
    return load_config(PipelineConfig, args.config, overrides=args.overrides, data=data)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        cfg = config_from_args(args)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from pipeline.runner import run_pipeline

    try:
        if cfg.ray:
            from pipeline.distributed import run_on_ray

            summary = run_on_ray(cfg)
        else:
            summary = run_pipeline(cfg)
    except KeyboardInterrupt:
        print("Aborted (second Ctrl-C); outputs were closed.", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, ConnectionError, RuntimeError) as e:
        logger.debug("failure", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        return 1
    report = {k: v for k, v in summary.items() if k != "config"}
    print(json.dumps(report, indent=2))
    return 130 if summary["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
