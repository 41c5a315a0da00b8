"""Training loop of the kernel estimator (``stage: kernel``): supervised by the exact synthetic kernels.

Loss = ``loss.kernel`` x cross-entropy(true kernel, predicted kernel) + ``loss.moments`` x L1 on the
orientation/extent features + ``loss.recon`` x L1 of the Wiener restoration with the predicted kernel
(end to end through the deconvolution). Data are drawn from ``default_rng([seed, step])``, so a resumed
run sees exactly the batches it would have seen.

Run folder ``<project>/<name>/``: ``config.yaml``, TensorBoard logs, ``val.jsonl`` (one line per
validation), ``last.pt`` (every ``save_every`` steps and on stop) and ``best.pt`` (best validation
restoration PSNR), all written atomically. ``export`` writes the lean file that ``Deblurrer`` loads.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from configs import save_config, to_dict
from deblur.archs.kernel_arch import angle_error, kernel_extent, kernel_moments, moment_angle, moment_features
from deblur.config import KernelTrainConfig
from deblur.deconv import wiener_deconvolve
from deblur.kernel_refine import shape_error
from deblur.data.kernel_dataset import KernelCrops
from deblur.metrics import psnr
from deblur.models import KERNEL_TRAIN_FORMAT, build_estimator, load_estimator, save_estimator
from deblur.train.gan_trainer import build_optimizer
from runtime import resolve_device
from runtime.files import atomic_save

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = KERNEL_TRAIN_FORMAT
MIN_ANGLE_EXTENT = 9.0  # px: angle errors are reported for linear/ImageNet-C kernels at least this long


def kernel_loss(pred: torch.Tensor, true: torch.Tensor, blur: torch.Tensor, sharp: torch.Tensor,
                cfg: KernelTrainConfig, logits: torch.Tensor, motion: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
    """The weighted loss terms and their sum ("total"); pred/true (B,k,k), blur/sharp (B,1,S,S).

    The reconstruction term starts at ``cfg.recon_start``: inverse filtering with the flat kernels of an
    untrained estimator amplifies noise many times over, and its gradients would swamp the supervision.
    """
    terms: dict[str, torch.Tensor] = {}
    w = cfg.loss
    if w.kernel > 0:
        terms["kernel"] = -(true.flatten(1) * F.log_softmax(logits.float(), dim=1)).sum(1).mean()
    if w.moments > 0:
        target = moment_features(kernel_moments(true))
        terms["moments"] = F.l1_loss(moment_features(kernel_moments(pred)), target)
    if w.motion > 0:
        terms["motion"] = F.l1_loss(motion.float(), moment_features(kernel_moments(true)))
    if w.recon > 0 and step >= cfg.recon_start:
        m = cfg.model.kernel_size // 2
        restored = wiener_deconvolve(blur, pred, balance=cfg.wiener_balance)
        terms["recon"] = F.l1_loss(restored[..., m:-m, m:-m], sharp[..., m:-m, m:-m])
    terms["total"] = sum(getattr(w, name) * value for name, value in terms.items())
    return terms


class KernelTrainer:
    """Build the estimator, its data and optimiser from a KernelTrainConfig; ``fit()`` runs or resumes."""

    def __init__(self, cfg: KernelTrainConfig, resume: bool = False):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        torch.set_flush_denormal(True)  # the softmax over k*k taps makes denormals, many times slower on CPU
        torch.manual_seed(cfg.seed)
        self.run_dir = Path(cfg.project) / cfg.name
        self.model = build_estimator(cfg.model)
        if cfg.init_weights and not resume:
            start, start_cfg = load_estimator(cfg.init_weights)
            if start_cfg != cfg.model:
                raise ValueError(f"init_weights {cfg.init_weights} holds a {start_cfg} estimator, but the config asks for "
                                 f"{cfg.model}; set model to match or start from scratch (init_weights='')")
            self.model.load_state_dict(start.state_dict())
            logger.info("Estimator initialised from %s", cfg.init_weights)
        self.model = self.model.to(self.device)
        self.ema = copy.deepcopy(self.model).eval() if cfg.ema > 0 else None
        self.opt = build_optimizer(self.model.parameters(), cfg.optimizer)
        self.step = 0
        self.best = -math.inf
        self.train_data = KernelCrops(cfg, cfg.train_bounds)
        self.val_data = KernelCrops(cfg, cfg.val_bounds)
        logger.info("Kernel estimator: %d train / %d val photos, crop %d, kernel %d", len(self.train_data),
                    len(self.val_data), cfg.crop, cfg.model.kernel_size)
        if resume:
            self._load(self.run_dir / "last.pt")
        self._val_sets = None
        self.writer = None

    # -------------------------------------------------------------- checkpoints
    def _state(self) -> dict:
        return {"format": CHECKPOINT_FORMAT, "model": self.model.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "cfg": dataclasses.asdict(self.cfg.model), "train_cfg": to_dict(self.cfg),
                "optimizer": self.opt.state_dict(), "step": self.step, "best": self.best}

    def save(self, name: str = "last.pt") -> Path:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_save(self._state(), self.run_dir / name)
        return self.run_dir / name

    def _load(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"Cannot resume: {path} does not exist. Start without --resume, or pass the "
                                    "name= of the run that holds last.pt.")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a kernel-estimator training checkpoint (format {ckpt.get('format')!r}); "
                             "a generator run resumes with configs/deblur_train.yaml.")
        if ckpt["cfg"] != dataclasses.asdict(self.cfg.model):
            raise ValueError(f"Cannot resume {path}: its model {ckpt['cfg']} differs from the config's "
                             f"{dataclasses.asdict(self.cfg.model)}. Start a new run (name=...).")
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.step, self.best = int(ckpt["step"]), float(ckpt["best"])
        logger.info("Resumed %s at step %d", path, self.step)

    def export(self, out: str | Path, which: str = "best.pt") -> Path:
        """Write the lean estimator file (EMA weights when kept) of checkpoint ``which`` to ``out``."""
        path = self.run_dir / which
        if not path.is_file():
            raise FileNotFoundError(f"No checkpoint {path} to export; train first or pass --export-from last.pt")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        model = build_estimator(self.cfg.model)
        model.load_state_dict(ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"])
        meta = {"run": self.cfg.name, "checkpoint": which, "best_val_psnr": ckpt["best"]}
        return save_estimator(model, self.cfg.model, out, step=int(ckpt["step"]), meta=meta)

    # -------------------------------------------------------------- training
    def lr(self) -> float:
        cfg, o = self.cfg, self.cfg.optimizer
        if self.step < cfg.warmup_steps:
            return o.lr * (self.step + 1) / cfg.warmup_steps
        t = min(1.0, (self.step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return cfg.min_lr + (o.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * t))

    def train_step(self, batch: dict) -> dict[str, float]:
        self.model.train()
        blur, sharp, true = (batch[k].to(self.device) for k in ("blur", "sharp", "kernel"))
        logits, motion = self.model.outputs(blur)
        k = self.cfg.model.kernel_size
        pred = torch.softmax(logits.float(), dim=1).view(-1, k, k)
        terms = kernel_loss(pred, true, blur, sharp, self.cfg, logits, motion, self.step)
        for group in self.opt.param_groups:
            group["lr"] = self.lr()
        self.opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
        self.opt.step()
        if self.ema is not None:
            with torch.no_grad():
                for e, p in zip(self.ema.state_dict().values(), self.model.state_dict().values()):
                    if e.is_floating_point():
                        e.lerp_(p, 1.0 - self.cfg.ema)
                    else:
                        e.copy_(p)
        self.step += 1
        return {name: float(v.detach()) for name, v in terms.items()}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Angle/extent/kernel errors and restoration PSNR on fixed held-out crops, clean and noisy + JPEG."""
        if self._val_sets is None:
            n = self.cfg.val_crops
            self._val_sets = {"clean": self.val_data.batch(np.random.default_rng([self.cfg.seed, 1]), n, noise=False),
                              "noisy": self.val_data.batch(np.random.default_rng([self.cfg.seed, 2]), n, noise=True)}
        model = (self.ema if self.ema is not None else self.model).eval()
        out: dict[str, float] = {}
        for split, batch in self._val_sets.items():
            out.update({f"{split}/{k}": v for k, v in evaluate_kernels(model, batch, self.cfg.wiener_balance,
                                                                       self.device).items()})
        return out

    @torch.inference_mode()
    def _kernel_grid(self, n: int = 8) -> torch.Tensor | None:
        """(1, 2k, n*k) image for TensorBoard: the first n held-out shake kernels (top row) and the model's estimates
        (bottom row), each scaled to its own peak."""
        batch = self._val_sets["clean"]
        idx = [i for i, kind in enumerate(batch["kinds"]) if kind == "shake"][:n]
        if not idx:
            return None
        model = (self.ema if self.ema is not None else self.model).eval()
        true = batch["kernel"][idx].to(self.device)
        k = true.shape[-1]
        pred = torch.softmax(model.outputs(batch["blur"][idx].to(self.device))[0].float(), dim=1).view(-1, k, k)
        rows = [torch.cat(list(t / t.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)), dim=1) for t in (true, pred)]
        return torch.cat(rows, dim=0)[None].cpu()

    def fit(self) -> dict[str, float]:
        from torch.utils.tensorboard import SummaryWriter

        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.run_dir / "config.yaml")
        t_start = time.monotonic()
        last_val: dict[str, float] = {}
        with SummaryWriter(str(self.run_dir)) as self.writer:
            try:
                while self.step < cfg.steps:
                    batch = self.train_data.batch(np.random.default_rng([cfg.seed, self.step]), cfg.batch_size)
                    t0 = time.perf_counter()
                    terms = self.train_step(batch)
                    if self.step % cfg.log_every == 0:
                        for name, v in terms.items():
                            self.writer.add_scalar(f"loss/{name}", v, self.step)
                        self.writer.add_scalar("lr", self.lr(), self.step)
                        logger.info("step %d/%d loss %s (%.2f s/step)", self.step, cfg.steps,
                                    " ".join(f"{k}={v:.4f}" for k, v in terms.items()), time.perf_counter() - t0)
                    if self.step % cfg.val_every == 0 or self.step == cfg.steps:
                        last_val = self._validate_and_log()
                    if self.step % cfg.save_every == 0:
                        self.save()
                    if cfg.max_minutes and time.monotonic() - t_start > cfg.max_minutes * 60:
                        logger.info("max_minutes reached at step %d", self.step)
                        break
            finally:
                self.save()
        return last_val

    def _validate_and_log(self) -> dict[str, float]:
        val = self.validate()
        for name, v in val.items():
            self.writer.add_scalar(f"val/{name}", v, self.step)
        grid = self._kernel_grid()
        if grid is not None:
            self.writer.add_image("val/shake_kernels_true_over_predicted", grid, self.step)
        score = (val["clean/psnr_pred"] + val["noisy/psnr_pred"]) / 2
        if score > self.best:
            self.best = score
            self.save("best.pt")
        with open(self.run_dir / "val.jsonl", "a") as f:
            f.write(json.dumps({"step": self.step, **{k: round(v, 4) for k, v in val.items()}}) + "\n")
        logger.info("val step %d: angle %.1f° (clean) %.1f° (noisy), motion head %.1f°, PSNR blur/pred/true %.2f/%.2f/%.2f dB", self.step,
                    val["clean/angle_median"], val["noisy/angle_median"], val["clean/angle_motion_median"], val["clean/psnr_blur"],
                    val["clean/psnr_pred"], val["clean/psnr_true"])
        return val


@torch.no_grad()
def evaluate_kernels(model, batch: dict, balance: float, device: torch.device) -> dict[str, float]:
    """Errors of ``model``'s kernels on one batch of KernelCrops; PSNRs of Wiener restorations (interior)."""
    blur, sharp, true = (batch[k].to(device) for k in ("blur", "sharp", "kernel"))
    k = true.shape[-1]
    logits, motion = (torch.cat(t) for t in zip(*(model.outputs(blur[i : i + 64]) for i in range(0, len(blur), 64))))
    pred = torch.softmax(logits.float(), dim=1).view(-1, k, k)
    kinds = np.array(batch["kinds"])
    blurred = torch.from_numpy(kinds != "none").to(device)  # PSNRs over blurred crops (a sharp one's is inf)
    mt, mp = kernel_moments(true), kernel_moments(pred)
    extent_true = kernel_extent(mt)
    err = angle_error(moment_angle(mp), moment_angle(mt)).cpu().numpy()
    c2, s2 = motion[:, 0], motion[:, 1]  # the motion head's (anisotropy-weighted) cos 2a, sin 2a
    err_motion = angle_error(torch.remainder(torch.rad2deg(0.5 * torch.atan2(s2, c2)), 180.0), moment_angle(mt)).cpu().numpy()
    lined = np.isin(kinds, ["linear", "imagenet_c"]) & (extent_true.cpu().numpy() >= MIN_ANGLE_EXTENT)
    rel_extent = ((kernel_extent(mp) - extent_true).abs() / extent_true.clamp_min(1.0)).cpu().numpy()
    l2 = ((pred - true).flatten(1).norm(dim=1) / true.flatten(1).norm(dim=1)).cpu().numpy()
    shake = torch.from_numpy(kinds == "shake").to(pred.device)
    m = true.shape[-1] // 2
    inner = (slice(None), slice(None), slice(m, -m), slice(m, -m))
    out = {
        "angle_median": float(np.median(err[lined])) if lined.any() else float("nan"),
        "angle_p90": float(np.percentile(err[lined], 90)) if lined.any() else float("nan"),
        "angle_motion_median": float(np.median(err_motion[lined])) if lined.any() else float("nan"),
        "extent_rel_median": float(np.median(rel_extent[kinds != "none"])),
        "kernel_l2_shake": float(np.median(l2[kinds == "shake"])) if (kinds == "shake").any() else float("nan"),
        # 1 - NCC at the best shift: a blob for a thin curved path cannot pass it (deblur.kernel_refine.shape_error)
        "kernel_shape_shake": (float(shape_error(pred[shake], true[shake]).median()) if shake.any() else float("nan")),
        "extent_none": float(kernel_extent(mp)[torch.from_numpy(kinds == "none")].mean()) if (kinds == "none").any() else float("nan"),
        "psnr_blur": float(psnr(blur[inner], sharp[inner], data_range=1.0)[blurred].mean()),
    }
    for name, kernel in (("pred", pred), ("true", true)):
        restored = wiener_deconvolve(blur, kernel, balance=balance, center=True).clamp(0, 1)  # as the deblurrer
        out[f"psnr_{name}"] = float(psnr(restored[inner], sharp[inner], data_range=1.0)[blurred].mean())
    return out
