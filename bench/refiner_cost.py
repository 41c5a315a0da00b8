"""What the refiner costs per frame: the kernel-aware deblurrer with and without it, eager torch and the fast runtime.

Times KernelDeblurrer on blurred frames of the demo clip (shake severity 3) at each --size, after a warm-up, with
the kernel's closed-form refinement off (the pipeline's default; --refine-iters to change it):
  estimate + Wiener          the default path
  + refiner, torch           the refiner generator in eager torch (fp32)
  + refiner, <runtime>       the refiner through runtime/ (OpenVINO bf16 where the CPU has AVX512-BF16, else fp32;
                             fp16 on CUDA)
The refiner's cost is the difference to the first row, measured in the same run.

    python bench/refiner_cost.py --refiner runs/deblur/refiner_res_dsc/refiner.pt --sizes 640x360 416x234 --threads 2
    python bench/refiner_cost.py                     # an untrained 7-channel FPN-MobileNetV2-DSC (speed only)
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_flags, cpu_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--refiner", default="", help="a refiner generator file (in_channels 6 or 7); default: untrained DSC")
    p.add_argument("--sizes", nargs="+", default=["640x360", "416x234"])
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runtime", default="auto", help="the fast runtime (auto: openvino on CPUs, torch+CUDA on GPUs)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--refine-iters", type=int, default=0, help="kernel refinement iterations (0: off, as the pipeline)")
    args = p.parse_args(argv)

    import av
    import cv2
    import torch

    from deblur.config import GeneratorConfig
    from deblur.data.blur_synth import apply_kernel, shake_kernel
    from deblur.kernel_deblur import KernelDeblurrer
    from deblur.kernel_refine import VIDEO_REFINE
    from deblur.models import build_generator, save_generator
    from pipeline.sources import demo_clip

    torch.set_num_threads(args.threads)
    with av.open(str(demo_clip())) as c:
        raw = [f.to_ndarray(format="bgr24") for _, f in zip(range(args.frames), c.decode(video=0))]
    kernel = shake_kernel(3, 0)
    with tempfile.TemporaryDirectory() as tmp:
        refiner = args.refiner
        if not refiner:
            cfg = GeneratorConfig(name="fpn_mobilenet_v2_dsc", in_channels=7)
            refiner = str(save_generator(build_generator(cfg).eval(), cfg, Path(tmp) / "refiner.pt"))
        print(f"# {cpu_model()}, {'AVX512-BF16' if 'avx512_bf16' in cpu_flags() else 'no AVX512-BF16'}, "
              f"{args.threads} thread(s), device {args.device}; refiner {args.refiner or 'untrained DSC, 7 channels'}")
        print("| size | path | ms per frame (median) |")
        print("|---|---|---|")
        for size in args.sizes:
            w, h = (int(v) for v in size.split("x"))
            frames = [apply_kernel(cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA), kernel) for f in raw]
            off = dataclasses.replace(VIDEO_REFINE, iters=args.refine_iters)  # as the pipeline
            paths = {
                "estimate + Wiener": KernelDeblurrer(device=args.device, runtime=args.runtime, refiner="none",
                                                     threads=args.threads, cache_dir=tmp, refine=off),
                "+ refiner, torch": KernelDeblurrer(device=args.device, runtime="torch", refiner=refiner,
                                                    threads=args.threads, refine=off),
                f"+ refiner, {args.runtime}": KernelDeblurrer(device=args.device, runtime=args.runtime, refiner=refiner,
                                                              threads=args.threads, cache_dir=tmp, refine=off),
            }
            for name, deblurrer in paths.items():
                deblurrer([frames[0]])  # warm-up (builds the engines for this size)
                times = []
                for f in frames:
                    t0 = time.perf_counter()
                    deblurrer([f])
                    if args.device.startswith("cuda"):
                        torch.cuda.synchronize()
                    times.append(1000.0 * (time.perf_counter() - t0))
                print(f"| {size} | {name} | {statistics.median(times):.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
