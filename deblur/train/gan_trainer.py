"""Training loop for the deblurring GAN: CPU, one CUDA GPU (AMP), or many with torchrun (DDP).

Run folder ``<project>/<name>/`` holds ``config.yaml`` (resolved), TensorBoard logs and
``last.pt`` / ``best.pt`` (by val PSNR). Checkpoints carry everything needed to continue
exactly: models, optimisers, schedulers, AMP scaler, step and RNG states. They are written
atomically and read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from configs import save_config, to_dict
from deblur.config import TrainConfig
from deblur.data.dataset import (
    ShardStream,
    batch_loader,
    build_dataset,
    collate,
    stream_loader,
)
from deblur.archs.discriminator_arch import build_discriminator
from deblur.train.losses import build_adv_loss, build_content_loss
from deblur.metrics import psnr, ssim
from deblur.models import TRAIN_FORMAT, build_generator, load_generator, save_generator
from runtime import TORCH_DTYPES, resolve_amp, resolve_device
from runtime.files import atomic_save

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = TRAIN_FORMAT


# ----------------------------------------------------------------------------- helpers
def sync_batchnorm(model: nn.Module, distributed: bool, device: torch.device) -> nn.Module:
    """BatchNorm -> SyncBatchNorm under DDP on CUDA, so the backbone's statistics come from the global batch,
    not from each GPU's few crops. Not on the CPU: SyncBatchNorm runs on GPUs only (gloo cannot run it), so
    CPU DDP keeps per-process statistics. Same parameters, buffers and state_dict keys."""
    if distributed and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def _rng_state(device: torch.device) -> dict:
    """Every RNG training draws from. CUDA: the training device's generator only (None on the CPU), so a
    checkpoint resumes on a machine with any number of GPUs."""
    np_state = np.random.get_state()
    return {
        "python": list(random.getstate()[1]) + [random.getstate()[2] or 0],
        "python_version": random.getstate()[0],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": np_state[2],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def _set_rng_state(state: dict, device: torch.device) -> None:
    py = state["python"]
    random.setstate((state["python_version"], tuple(py[:-1]), None))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if device.type != "cuda" or cuda is None or (isinstance(cuda, list) and not cuda):
        return  # a CPU run draws nothing from CUDA generators; a CPU checkpoint has no CUDA state to restore
    if isinstance(cuda, list):  # older checkpoints: one state per GPU of the machine that saved them
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= len(cuda):
            logger.warning("checkpoint holds CUDA RNG states for %d GPU(s), none for %s: its CUDA RNG starts afresh",
                           len(cuda), device)
            return
        cuda = cuda[index]
    torch.cuda.set_rng_state(cuda, device)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the base lr at ``step`` (warm-up, then constant/linear/cosine decay)."""
    sch = cfg.scheduler
    if sch.warmup_steps and step < sch.warmup_steps:
        return (step + 1) / sch.warmup_steps
    total = cfg.num_epochs * cfg.train_batches_per_epoch
    min_factor = sch.min_lr / cfg.optimizer.lr if cfg.optimizer.lr > 0 else 0.0  # lr 0: nothing to decay
    if sch.name == "constant":
        return 1.0
    if sch.name == "cosine":
        t = min(1.0, (step - sch.warmup_steps) / max(1, total - sch.warmup_steps))
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * t))
    start = sch.start_epoch * cfg.train_batches_per_epoch  # linear (DeblurGANv2): flat, then linear to min_lr
    if step < start:
        return 1.0
    t = min(1.0, (step - start) / max(1, total - start))
    return 1.0 + (min_factor - 1.0) * t


def build_optimizer(params, cfg) -> torch.optim.Optimizer:
    """The optimizer an OptimizerConfig names (adam | adamw), over ``params``."""
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.name]
    return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


class _Batches:
    """Deterministic batches of dataset indices for (seed, epoch); shard ``rank`` of ``world``.

    Sampling is with replacement (small corpora, many batches per epoch); each draw carries its own
    position so a repeated image still gets a fresh crop and blur.
    """

    def __init__(self, n_items: int, batch_size: int, batches: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.bs, self.batches, self.seed, self.rank, self.world = n_items, batch_size, batches, seed, rank, world

    def epoch(self, epoch: int, start_batch: int = 0):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        idx = torch.randint(self.n, (self.batches, self.bs * self.world), generator=g)
        for b in range(start_batch, self.batches):
            row = idx[b, self.rank * self.bs : (self.rank + 1) * self.bs].tolist()
            yield b, row


def _masked(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with credentials in its data URLs masked: what goes into run folders and checkpoints."""
    return dataclasses.replace(cfg, train=cfg.train.masked(), val=cfg.val.masked())


# ----------------------------------------------------------------------------- trainer
class Trainer:
    """Build everything from a TrainConfig and run (or resume) training.

    ``extra_losses`` lets an entry point plug named content-loss modules in (e.g. a loss on a frozen
    detector's features), without deblur/ importing the detector.
    """

    def __init__(self, cfg: TrainConfig, resume: bool = False, extra_losses: dict[str, nn.Module] | None = None):
        self.cfg = cfg
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if self.distributed and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if resolve_device(cfg.device).type == "cuda" else "gloo")
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        self.is_main = self.rank == 0

        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda" and self.distributed:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.set_flush_denormal(True)  # denormal arithmetic is many times slower on CPUs (GAN steps crawled)
        precision = resolve_amp(cfg.amp, self.device, training=True)  # the one policy; autocast dtype, None = fp32
        self.amp_dtype = None if precision == "fp32" else TORCH_DTYPES[precision]
        self.run_dir = Path(cfg.project) / cfg.name

        torch.manual_seed(cfg.seed + self.rank)
        np.random.seed(cfg.seed + self.rank)
        random.seed(cfg.seed + self.rank)

        size = cfg.image_size or cfg.train.size
        self.train_set = build_dataset(dataclasses.replace(cfg.train, size=size), seed=cfg.seed)
        val_size = cfg.image_size or cfg.val.size
        self.val_set = build_dataset(dataclasses.replace(cfg.val, size=val_size), seed=cfg.seed) if cfg.val_batches_per_epoch else None
        self.streaming = isinstance(self.train_set, ShardStream)  # shards streamed: no indices, the stream splits itself
        self.batches = None if self.streaming else _Batches(
            len(self.train_set), cfg.batch_size, cfg.train_batches_per_epoch, cfg.seed, self.rank, self.world)
        self._stream_batches = None  # the ShardStream's DataLoader iterator, kept across epochs

        self.gen_cfg = cfg.model.generator()
        self.kernel_deblurrer = None  # a refiner's first stage: frozen kernel estimate + Wiener deconvolution
        if cfg.model.estimator:
            from deblur.kernel_deblur import KernelDeblurrer
            from deblur.kernel_refine import VIDEO_REFINE, RefineConfig

            # refined kernels as the pipeline refines them, from one start on a 256-px tile (model.estimator_refine), or
            # the network's own: refinement costs ~0.3 s a batch of four 256-px crops on 2 threads (four starts, as
            # on images: ~3x)
            refine = VIDEO_REFINE if cfg.model.estimator_refine else RefineConfig(iters=0)
            self.kernel_deblurrer = KernelDeblurrer(cfg.model.estimator, device=self.device, gate_px=0.0, refiner="none",
                                                    refine=refine)
            logger.info("Refiner: input = blurred + Wiener deconvolution with the %s kernels of %s",
                        "refined" if cfg.model.estimator_refine else "unrefined", cfg.model.estimator)
        self.G = build_generator(self.gen_cfg)
        if cfg.init_weights and not resume:
            start, _ = load_generator(cfg.init_weights, expect_name=self.gen_cfg.name)
            self.G.load_state_dict(start.state_dict())
            logger.info("Generator initialised from %s", cfg.init_weights)
        self.G = self.G.to(self.device)
        self.D = build_discriminator(cfg.model.d_name)
        self.D = self.D.to(self.device) if self.D is not None else None
        if cfg.channels_last:
            self.G = self.G.to(memory_format=torch.channels_last)
            if self.D is not None:
                self.D = self.D.to(memory_format=torch.channels_last)
        self.content_loss = build_content_loss(dict(cfg.model.content_loss), vgg_weights=cfg.model.vgg_weights, extra=extra_losses).to(self.device)
        self.adv_loss = build_adv_loss(cfg.model.disc_loss) if self.D is not None else None
        self.ema = copy.deepcopy(self.G).eval().requires_grad_(False) if cfg.ema else None

        self.opt_g = build_optimizer(self.G.parameters(), cfg.optimizer)
        self.opt_d = build_optimizer(self.D.parameters(), cfg.d_optimizer) if self.D is not None else None
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, lambda s: lr_factor(s, cfg))
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, lambda s: lr_factor(s, cfg)) if self.opt_d else None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        self.step = 0
        self.best_psnr = -math.inf
        if resume:
            self._load(self.run_dir / "last.pt")

        self.G_train = self.G
        self.D_train = self.D
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.G = sync_batchnorm(self.G, self.distributed, self.device)  # same Parameter objects: opt_g still holds them
            # warm-up epochs freeze the backbone (requires_grad off) after DDP has registered its parameters;
            # without unused-parameter detection the first step with it frozen waits for their gradients and
            # the next fails: "Expected to have finished reduction in the prior iteration". Detection costs one
            # autograd-graph walk a step (DDP warns once when, after the thaw, nothing is unused)
            self.G_train = nn.parallel.DistributedDataParallel(self.G, device_ids=ids,
                                                               find_unused_parameters=cfg.warmup_num > 0)
            if self.D is not None:
                self.D_train = nn.parallel.DistributedDataParallel(self.D, device_ids=ids)
        self.writer = None

    # -------------------------------------------------------------- checkpoints
    def _state(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.G.state_dict(),
            "cfg": dataclasses.asdict(self.gen_cfg),
            "train_cfg": to_dict(_masked(self.cfg)),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "discriminator": self.D.state_dict() if self.D is not None else None,
            "optimizer_g": self.opt_g.state_dict(),
            "optimizer_d": self.opt_d.state_dict() if self.opt_d else None,
            "scheduler_g": self.sched_g.state_dict(),
            "scheduler_d": self.sched_d.state_dict() if self.sched_d else None,
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "best_psnr": self.best_psnr,
            "rng": _rng_state(self.device),
        }

    def save(self, name: str = "last.pt") -> Path:
        path = self.run_dir / name
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_save(self._state(), path)
        return path

    def _load(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"Cannot resume: {path} does not exist. Start without --resume, or pass the run name that holds last.pt.")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a training checkpoint of this project (format {ckpt.get('format')!r}).")
        saved = ckpt["cfg"].get("name")
        if saved != self.gen_cfg.name:
            raise ValueError(
                f"Cannot resume {path}: it holds generator '{saved}', but the config asks for '{self.gen_cfg.name}'. "
                f"Set model.g_name={saved} or start a new run (name=...)."
            )
        self.G.load_state_dict(ckpt["model"])
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.load_state_dict(ckpt["ema"])
        if self.D is not None and ckpt.get("discriminator") is not None:
            self.D.load_state_dict(ckpt["discriminator"])
            self.opt_d.load_state_dict(ckpt["optimizer_d"])
            self.sched_d.load_state_dict(ckpt["scheduler_d"])
        self.opt_g.load_state_dict(ckpt["optimizer_g"])
        self.sched_g.load_state_dict(ckpt["scheduler_g"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.step = ckpt["step"]
        self.best_psnr = ckpt["best_psnr"]
        _set_rng_state(ckpt["rng"], self.device)
        logger.info("Resumed %s at step %d (best val PSNR %.2f dB)", path, self.step, self.best_psnr)

    # -------------------------------------------------------------- steps
    def _batch(self, indices: list[int], dataset, key: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack items; ``key`` seeds their crops and blur (the global batch number: a repeated image gets a fresh draw).

        For a refiner the first tensor is (B,6,H,W): the blurred crops and their Wiener deconvolution.
        """
        dataset.set_epoch(key)
        return self._to_device(collate([dataset[i] for i in indices]))

    def _to_device(self, batch: dict, train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """A collated batch (deblur.data.dataset.collate) on the training device, refiner input and layout applied."""
        blur = batch["blur"].to(self.device, non_blocking=True)
        sharp = batch["sharp"].to(self.device, non_blocking=True)
        if self.kernel_deblurrer is not None:  # refiner: [blurred, deconvolved] (B,6,H,W), both RGB [-1,1]
            deconv, res = self.kernel_deblurrer.restore((blur + 1.0) / 2.0, residual=True)
            deconv, res = deconv.clone(), res.clone()
            swap = self._true_kernel_crops(batch) if train else []
            if swap:  # these crops: their true kernel, rotated and stretched (a wrong estimate to repair)
                idx, kernels = zip(*swap)
                idx = list(idx)
                got, got_res = self.kernel_deblurrer.deconvolve((blur[idx] + 1.0) / 2.0, torch.stack(kernels), residual=True)
                deconv[idx], res[idx] = got, got_res
            parts = [blur, deconv * 2.0 - 1.0]
            if self.gen_cfg.in_channels == 7:  # and the luma residual y - k*x, on the images' scale (x2)
                parts.append(res * 2.0)
            blur = torch.cat(parts, dim=1)
            blur, sharp = self._refiner_crop(blur, sharp, train)
        if self.cfg.channels_last:
            blur, sharp = blur.contiguous(memory_format=torch.channels_last), sharp.contiguous(memory_format=torch.channels_last)
        return blur, sharp

    def _refiner_crop(self, x: torch.Tensor, sharp: torch.Tensor, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """model.refiner_crop: the same window of the refiner's input and the sharp crop, random per crop in training
        (seeded by the step, so a resumed run repeats it) and centred in validation."""
        c = self.cfg.model.refiner_crop
        h, w = x.shape[-2:]
        if not c or (c >= h and c >= w):
            return x, sharp
        c_h, c_w = min(c, h), min(c, w)
        if not train:
            top, left = [(h - c_h) // 2] * len(x), [(w - c_w) // 2] * len(x)
        else:
            rng = np.random.default_rng([self.cfg.seed, self.step, 11])
            top, left = rng.integers(0, h - c_h + 1, len(x)), rng.integers(0, w - c_w + 1, len(x))
        xs = torch.stack([x[i, :, t:t + c_h, l:l + c_w] for i, (t, l) in enumerate(zip(top, left))])
        ss = torch.stack([sharp[i, :, t:t + c_h, l:l + c_w] for i, (t, l) in enumerate(zip(top, left))])
        return xs, ss

    def _true_kernel_crops(self, batch: dict) -> list[tuple[int, torch.Tensor]]:
        """(crop index, perturbed true kernel) for the crops of a refiner's training batch drawn with probability
        model.true_kernel_prob; the draw depends on the seed and the step only, so a resumed run repeats it."""
        m = self.cfg.model
        if not m.true_kernel_prob or "kernel" not in batch:
            return []
        from deblur.data.blur_synth import perturb_kernel

        rng = np.random.default_rng([self.cfg.seed, self.step, 7])
        angle, stretch = m.true_kernel_perturb
        out = []
        for i, k in enumerate(batch["kernel"]):
            if rng.uniform() < m.true_kernel_prob:
                wrong = perturb_kernel(k.numpy(), rng.uniform(-angle, angle), rng.uniform(1 - stretch, 1 + stretch))
                out.append((i, torch.from_numpy(wrong)))
        return out

    def _train_batches(self, epoch: int, start: int):
        """The collated training batches of ``epoch`` from batch ``start`` on, made in ``num_workers``
        DataLoader processes (decoding, crops and blur synthesis there). A batch is the same with any number
        of workers, so a resumed run continues exactly."""
        cfg = self.cfg
        pin = self.device.type == "cuda"
        if self.streaming:
            if self._stream_batches is None:  # one stream across epochs; a resumed run skips what it has seen
                self._stream_batches = iter(stream_loader(
                    self.train_set, cfg.batch_size, cfg.num_workers, skip_batches=self.step, pin_memory=pin,
                    seed=cfg.seed * 1_000_003 + self.rank))
            for _ in range(start, cfg.train_batches_per_epoch):
                yield next(self._stream_batches)
            return
        tasks = [(epoch * cfg.train_batches_per_epoch + b, row) for b, row in self.batches.epoch(epoch, start)]
        yield from batch_loader(self.train_set, tasks, cfg.num_workers, pin_memory=pin,
                                seed=(cfg.seed * 1_000_003 + epoch) * 64 + self.rank)

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _set_backbone_frozen(self, frozen: bool) -> None:
        backbone = getattr(self.G, "backbone", None)
        if backbone is not None:
            backbone.requires_grad_(not frozen)

    def train_step(self, blur: torch.Tensor, sharp: torch.Tensor) -> dict[str, float]:
        self.G_train.train()
        logs = {}
        with self._autocast():
            restored = self.G_train(blur)
        if self.D is not None:
            self.D_train.train()
            self.opt_d.zero_grad(set_to_none=True)
            with self._autocast():
                d_loss = self.adv_loss.d_loss(self.D_train, restored.detach(), sharp)
            self.scaler.scale(d_loss).backward()
            self.scaler.step(self.opt_d)
            logs["d_loss"] = d_loss.detach()
        self.opt_g.zero_grad(set_to_none=True)
        with self._autocast():
            content, parts = self.content_loss(restored, sharp)
            g_loss = content
            if self.D is not None:
                self.D.requires_grad_(False)
                adv = self.adv_loss.g_loss(self.D_train, restored, sharp)
                self.D.requires_grad_(True)
                g_loss = content + self.cfg.model.adv_lambda * adv
                logs["g_adv"] = adv.detach()
        if not torch.isfinite(g_loss):
            raise FloatingPointError(
                f"Generator loss is {g_loss.item()} at step {self.step} (parts: { {k: float(v) for k, v in parts.items()} }). "
                f"Training stopped; the last good checkpoint {self.run_dir / 'last.pt'} is kept. Lower optimizer.lr or set amp=none."
            )
        self.scaler.scale(g_loss).backward()
        self.scaler.step(self.opt_g)
        self.scaler.update()
        self.sched_g.step()
        if self.sched_d:
            self.sched_d.step()
        if self.ema is not None:
            # the decay ramps up (as in timm's ModelEmaV2 warm-up) so early weights do not linger for ~1/(1-ema) steps
            decay = min(self.cfg.ema, (1 + self.step) / (10 + self.step))
            with torch.no_grad():
                for e, p in zip(self.ema.parameters(), self.G.parameters()):
                    e.lerp_(p.detach(), 1 - decay)
                for e, b in zip(self.ema.buffers(), self.G.buffers()):
                    e.copy_(b)
        logs["g_loss"] = g_loss.detach()
        logs.update({f"g_{k}": v.detach() for k, v in parts.items()})
        return {k: float(v) for k, v in logs.items()}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """PSNR/SSIM of the (EMA) generator and of the blurred input on the fixed val batches."""
        model = (self.ema or self.G).eval()
        scores = {"psnr": [], "ssim": [], "psnr_blur": [], "ssim_blur": []}
        if self.kernel_deblurrer is not None:
            scores["psnr_deconv"] = []
        n = len(self.val_set)
        bs = self.cfg.batch_size
        for b in range(self.cfg.val_batches_per_epoch):
            if b * bs >= n:  # every held-out image once: no wrap-around, the last batch may be short
                break
            idx = list(range(b * bs, min((b + 1) * bs, n)))
            blur, sharp = self._batch(idx, self.val_set, 0)
            with self._autocast():
                restored = model(blur)
            if self.kernel_deblurrer is not None:
                scores["psnr_deconv"].append(psnr((blur[:, 3:6].float() + 1) / 2, (sharp.float() + 1) / 2, data_range=1.0))
            restored, blur, sharp = ((t.float() + 1) / 2 for t in (restored, blur[:, :3], sharp))
            scores["psnr"].append(psnr(restored, sharp, data_range=1.0))
            scores["ssim"].append(ssim(restored, sharp, data_range=1.0))
            scores["psnr_blur"].append(psnr(blur, sharp, data_range=1.0))
            scores["ssim_blur"].append(ssim(blur, sharp, data_range=1.0))
        out = {k: float(torch.cat([torch.as_tensor(x).reshape(-1).float() for x in v]).mean()) for k, v in scores.items()}
        out["psnr_gain"] = out["psnr"] - out["psnr_blur"]
        return out

    # -------------------------------------------------------------- loop
    def fit(self) -> dict[str, float]:
        cfg = self.cfg
        if self.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(_masked(cfg), self.run_dir / "config.yaml")  # no credentials in the run folder
            self.writer = SummaryWriter(str(self.run_dir))
            logger.info(
                "Training %s (%d params) on %s, amp=%s, %d threads, data %d train / %d val images -> %s",
                self.gen_cfg.name, sum(p.numel() for p in self.G.parameters()), self.device,
                self.amp_dtype, torch.get_num_threads(), "streamed" if self.streaming else len(self.train_set), len(self.val_set or []), self.run_dir,
            )
            m = cfg.model
            logger.info(
                "Loss: %s%s; optimizer %s lr %g", " + ".join(f"{w:g}*{k}" for k, w in m.content_loss.items()),
                "" if m.d_name == "no_gan" else f" + {m.adv_lambda:g}*{m.disc_loss} ({m.d_name})",
                cfg.optimizer.name, cfg.optimizer.lr,
            )
        total = cfg.max_steps or cfg.num_epochs * cfg.train_batches_per_epoch
        self._t_start, self._cpu_start = time.monotonic(), time.process_time()
        last_val: dict[str, float] = {}
        try:
            while self.step < total:
                epoch, start = divmod(self.step, cfg.train_batches_per_epoch)
                self._set_backbone_frozen(epoch < cfg.warmup_num)
                last_val = self._epoch(epoch, start, total) or last_val
                if self._budget_spent():
                    logger.info("time budget (max_minutes=%g, max_cpu_minutes=%g) reached at step %d",
                                cfg.max_minutes, cfg.max_cpu_minutes, self.step)
                    break
        except KeyboardInterrupt:
            logger.warning("Interrupted at step %d: saving %s", self.step, self.run_dir / "last.pt")
            self.save("last.pt")
            raise
        finally:
            if self.writer:
                self.writer.close()  # flushed and closed on an error too
        self.save("last.pt")
        return last_val

    def _budget_spent(self) -> bool:
        """True once the wall-clock or process-CPU budget of this call to fit() is used up."""
        cfg = self.cfg
        wall = (time.monotonic() - self._t_start) / 60
        cpu = (time.process_time() - self._cpu_start) / 60
        spent = bool((cfg.max_minutes and wall >= cfg.max_minutes) or (cfg.max_cpu_minutes and cpu >= cfg.max_cpu_minutes))
        if self.distributed:  # every rank must stop at the same step, or the others wait in a collective forever
            flag = torch.tensor([float(spent)], device=self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            spent = bool(flag.item())
        return spent

    def _epoch(self, epoch: int, start: int, total: int) -> dict[str, float]:
        from tqdm import tqdm

        cfg = self.cfg
        bar = tqdm(
            self._train_batches(epoch, start), total=cfg.train_batches_per_epoch, initial=start,
            desc=f"epoch {epoch}", disable=not self.is_main, dynamic_ncols=True, mininterval=2.0,
        )
        for batch in bar:
            blur, sharp = self._to_device(batch, train=True)
            logs = self.train_step(blur, sharp)
            self.step += 1
            if self.is_main:
                bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items() if k in ("g_loss", "d_loss")})
                if self.step % cfg.log_every == 0:
                    for k, v in logs.items():
                        self.writer.add_scalar(f"train/{k}", v, self.step)
                    self.writer.add_scalar("train/lr_g", self.opt_g.param_groups[0]["lr"], self.step)
                    if self.opt_d:
                        self.writer.add_scalar("train/lr_d", self.opt_d.param_groups[0]["lr"], self.step)
                if self.step % cfg.image_every == 0:
                    self._log_images(blur, sharp)
                if self.step % cfg.save_every == 0:
                    self.save("last.pt")
            if self.step >= total or self._budget_spent():
                break
        bar.close()
        val = {}
        if self.val_set is not None and self.is_main and (self.step % cfg.train_batches_per_epoch == 0 or self.step >= total):
            val = self.validate()
            for k, v in val.items():
                self.writer.add_scalar(f"val/{k}", v, self.step)
            logger.info("step %d: val PSNR %.2f dB (blurred %.2f, gain %+.2f), SSIM %.4f",
                        self.step, val["psnr"], val["psnr_blur"], val["psnr_gain"], val["ssim"])
            if val["psnr"] > self.best_psnr:
                self.best_psnr = val["psnr"]
                self.save("best.pt")
            self.save("last.pt")
        return val

    @torch.no_grad()
    def _log_images(self, blur: torch.Tensor, sharp: torch.Tensor) -> None:
        model = (self.ema or self.G).eval()
        with self._autocast():
            restored = model(blur[:2])
        grid = torch.cat([blur[:2, :3], restored.float(), sharp[:2]], dim=3)  # blurred | restored | sharp
        self.writer.add_images("triplet/blurred_restored_sharp", ((grid.float() + 1) / 2).clamp(0, 1), self.step)

    def export(self, out: Path, which: str = "best.pt", half: bool = False) -> Path:
        """Lean inference file from a checkpoint of this run (EMA weights when the run kept them)."""
        path = self.run_dir / which
        self._load(path)
        model = self.ema if self.ema is not None else self.G
        meta = {"run": str(self.cfg.name), "checkpoint": which, "best_val_psnr": self.best_psnr}
        save_generator(model, self.gen_cfg, out, step=self.step, meta=meta, half=half)
        return Path(out)
