"""Does a blending refiner beat the Wiener deconvolution it is given? Trained and measured paired, on first-stage
frames made exactly as ``predict`` makes them.

A blending refiner (``GeneratorConfig.blend_balances``; ``deblur/archs/fpn_mobilenet_arch.py``) is the
FPN-MobileNetV2-DSC generator with the blurred frame and its Wiener deconvolutions at several balances as input
(multiples of the deblurrer's: ``--balances``, 1 among them), and a per-pixel softmax over those images as output:
it chooses, per pixel, how much to regularise, or to keep the blurred frame. It cannot paint detail of its own.

1. **First stage** (cached in ``--cache``, one ``.npz`` per case, written atomically; a rerun skips what is there):
   every photo of the training config's ``train`` split (and its held-out ``val`` split) shrunk to ``--side`` px on
   the long side and blurred: training photos by ``--draws`` random blurs each (shake, ImageNet-C or camera
   trajectory, severities 2-4, the kernels of ``bench/refine.py``), noise sigma U(``--noise``); held-out photos by
   all nine at noise 0.005, as ``bench/refine.py``. Then the shipped estimator, the default refinement and the
   deconvolutions at each balance: ``KernelDeblurrer.restore(x, balances=...)``, the path ``predict`` takes (about
   4 s a frame on two Zen 3 cores).
2. **Training**: random ``--crop`` px crops (horizontal flips), batch ``--batch``, AdamW ``--lr`` with a 20-step
   warm-up and cosine decay over ``--steps``, MSE against the sharp crop; a checkpoint every ``--eval-every`` steps
   (``--out``/last.pt, atomic; ``--resume`` continues it).
3. **Evaluation** every ``--eval-every`` steps: on the whole held-out frames, the PSNR change of the refiner's output
   over the deconvolution at balance x1 (the default's output), mean and 95 % bootstrap interval over the cases,
   per blur family.
4. The last weights are exported with ``deblur.save_generator`` to ``--out``/blend_refiner.pt: use them with
   ``refiner=PATH`` (``predict``, ``eval_detection.py``'s ``deblur.compare``) or bundle them into the estimator file
   (``python -m deblur.models --bundle``).

The first stage must be what inference gives: trained on a mix with the video path's one-start refinement, severity
1 and noise up to 0.01 (the first stage's gain over the blurred frame +1.05 dB, against +2.84 dB on the held-out
frames), the refiner put 44 % of its weight on the blurred frame and lost 0.44 dB on the held-out photos while it
gained 1.32 dB on its training frames (docs/results/2026-12-08_blend_refiner.md).

    python bench/blend_refiner.py                       # cache (~20 min on 2 cores), 600 steps (~25 min), export
    python bench/blend_refiner.py --steps 1200 --resume  # train on from the last checkpoint
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from configs import CONFIG_DIR, load_config  # noqa: E402
from deblur.config import GeneratorConfig, TrainConfig  # noqa: E402
from deblur.data.blur_synth import add_noise, apply_kernel  # noqa: E402
from deblur.data.dataset import SyntheticBlur  # noqa: E402
from deblur.kernel_deblur import KernelDeblurrer  # noqa: E402
from deblur.models import build_generator, save_generator  # noqa: E402
from refine import _seed, true_kernel  # noqa: E402  (bench/refine.py, beside this script)
from runtime.files import atomic_save  # noqa: E402
from stats import paired_interval  # noqa: E402

FAMILIES = ("shake", "imagenet_c", "trajectory")


def build_cache(split: str, cache: Path, side: int, draws: int, balances: list[float], deblurrer: KernelDeblurrer,
                noise: tuple[float, float] = (0.002, 0.008), limit: int = 0) -> list[Path]:
    """The first stage of every case of ``split`` -> the cache files (sharp uint8, stack float16 (1+n,3,H,W) in [0,1]:
    the blurred frame, then its deconvolution at each balance)."""
    cfg = load_config(TrainConfig, CONFIG_DIR / "deblur_train.yaml")
    ds = SyntheticBlur(dataclasses.replace(getattr(cfg, split), preload=False), seed=cfg.seed)
    if not ds.names:
        raise SystemExit(f"no {split} photos: run `make data` first")
    out_dir = cache / split
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    count = min(limit, len(ds.names)) if limit else len(ds.names)
    for i in range(count):
        name = ds.names[i]
        rng = np.random.default_rng(_seed(name, "blend", split))
        cases = [(f, s) for f in FAMILIES for s in (2, 3, 4)] if split == "val" else \
            [(FAMILIES[int(rng.integers(3))], int(rng.integers(2, 5))) for _ in range(draws)]
        img = None
        for j, (family, sev) in enumerate(cases):
            path = out_dir / f"{i:03d}_{j}_{family}_{sev}.npz"
            files.append(path)
            if path.exists():
                continue
            if img is None:
                img = ds.image(i)
                scale = side / max(img.shape[:2])
                img = cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)),
                                 interpolation=cv2.INTER_AREA)
            key = name if split == "val" else f"{name}|{j}"
            blur = apply_kernel(img, true_kernel(key, family, sev)).astype(np.float32) / 255.0
            sigma = 0.005 if split == "val" else float(rng.uniform(*noise))
            if sigma > 0:
                blur = add_noise(blur, sigma, _seed(key, "noise", family, sev))
            x = torch.from_numpy(blur).permute(2, 0, 1)[None].contiguous()
            stack = deblurrer.restore(x, balances=balances)[0].unflatten(0, (-1, 3))
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, sharp=img, stack=torch.cat([x, stack]).numpy().astype(np.float16))
            tmp.replace(path)
        print(f"{split} {i + 1}/{count} {name}", file=sys.stderr, flush=True)
    return files


def load(files: list[Path]) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    out = []
    for f in files:
        z = np.load(f)
        out.append((f.stem, torch.from_numpy(z["sharp"]).permute(2, 0, 1).contiguous(), torch.from_numpy(z["stack"])))
    return out


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10.0 * math.log10(1.0 / max(float(((a - b) ** 2).mean()), 1e-12))


def blend(model: torch.nn.Module, stack: torch.Tensor) -> torch.Tensor:
    """(B,1+n,3,H,W) [0,1] -> the refiner's output (B,3,H,W) [0,1]."""
    return (model(stack.flatten(1, 2) * 2.0 - 1.0) + 1.0) * 0.5


@torch.no_grad()
def evaluate(model: torch.nn.Module, val, one: int) -> dict:
    model.eval()
    gain, by = [], {f: [] for f in FAMILIES}
    for name, sharp, stack in val:
        s = sharp.float() / 255.0
        d = psnr(blend(model, stack[None].float())[0], s) - psnr(stack[one].float(), s)
        gain.append(d)
        by[next(f for f in FAMILIES if f"_{f}_" in name)].append(d)
    model.train()
    d = np.array(gain)
    return {"db": round(float(d.mean()), 3), "ci95": paired_interval(d, np.random.default_rng(0)),
            "by_family": {f: round(float(np.mean(v)), 3) for f, v in by.items() if v}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", default="runs/blend_cache", help="first-stage cache folder")
    p.add_argument("--out", default="runs/blend_refiner", help="checkpoint, log and export folder")
    p.add_argument("--side", type=int, default=640, help="long side of the photos, px")
    p.add_argument("--draws", type=int, default=2, help="random blurs per training photo")
    p.add_argument("--noise", type=float, nargs=2, default=[0.002, 0.008], metavar=("LOW", "HIGH"),
                   help="the training frames' noise sigma, U(LOW, HIGH) (the held-out frames: 0.005)")
    p.add_argument("--balances", type=float, nargs="+", default=[0.25, 1.0, 4.0, 16.0],
                   help="multiples of the deblurrer's balance (1 among them)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--resume", action="store_true", help="continue from --out/last.pt")
    p.add_argument("--limit", type=int, default=0, help="photos per split (0 = all; tests)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if 1.0 not in args.balances or min(args.balances) <= 0:
        p.error(f"--balances: multiples > 0 with 1 among them, got {args.balances}")
    if args.crop % 32 or args.crop < 64:
        p.error(f"--crop: a multiple of 32, at least 64, got {args.crop}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    deblurrer = KernelDeblurrer(device="cpu", refiner="none")
    cache = Path(args.cache)
    train = [t for t in load(build_cache("train", cache, args.side, args.draws, args.balances, deblurrer, args.noise,
                                         args.limit))
             if min(t[1].shape[-2:]) >= args.crop]  # (a photo narrower than a crop: none in the corpus at 640 px)
    val = load(build_cache("val", cache, args.side, args.draws, args.balances, deblurrer, limit=args.limit))
    one = 1 + args.balances.index(1.0)
    cfg = GeneratorConfig(name="fpn_mobilenet_v2_dsc", in_channels=3 + 3 * len(args.balances),
                          blend_balances=list(args.balances))
    model = build_generator(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    steps = args.steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * (0.001 + 0.999 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    step = 0
    if args.resume:
        ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        step = int(ckpt["step"])
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / 20) * (0.001 + 0.999 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))),
            last_epoch=step - 1)
    log = (out / "log.txt").open("a")

    def report(text: str) -> None:
        print(text, flush=True)
        log.write(text + "\n")
        log.flush()

    report(f"cases: {len(train)} training, {len(val)} held out; balances {args.balances}; step {step}")
    if step == 0:
        report(f"step 0 vs the x1 deconvolution: {evaluate(model, val, one)}")
    rng = np.random.default_rng([args.seed, step])
    t0 = time.perf_counter()
    c = args.crop
    while step < steps:
        crops, sharps = [], []
        for j in rng.integers(0, len(train), args.batch):
            _, sharp, stack = train[j]
            h, w = sharp.shape[-2:]
            top, left = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
            a, b = stack[..., top:top + c, left:left + c].float(), sharp[:, top:top + c, left:left + c].float() / 255.0
            if rng.uniform() < 0.5:
                a, b = a.flip(-1), b.flip(-1)
            crops.append(a)
            sharps.append(b)
        loss = F.mse_loss(blend(model, torch.stack(crops)), torch.stack(sharps))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        if step % 50 == 0:
            report(f"step {step} loss {loss.item():.5f} {time.perf_counter() - t0:.0f} s")
        if step % args.eval_every == 0 or step == steps:
            atomic_save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, out / "last.pt")
            report(f"step {step} vs the x1 deconvolution: {evaluate(model, val, one)}")
    print(save_generator(model.eval(), cfg, out / "blend_refiner.pt", step=step))
    log.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
