"""Train the deblurring GAN: python train_deblur.py [--config YAML] [--resume] [key=value ...]

Examples:
  python train_deblur.py                                   # configs/deblur_train.yaml
  python train_deblur.py model.g_name=fpn_mobilenet_v2_dsc batch_size=4 max_minutes=10
  python train_deblur.py --resume name=fpn_mobilenet_v2    # continue runs/deblur/fpn_mobilenet_v2/last.pt
  python train_deblur.py --export deblur/weights/fpn_mobilenet_v2.pt name=fpn_mobilenet_v2
  torchrun --nproc_per_node 2 train_deblur.py device=cpu   # DistributedDataParallel (gloo on CPU)

  python train_deblur.py --config configs/kernel_train.yaml                 # the kernel estimator (stage: kernel)
  python train_deblur.py --config configs/kernel_train.yaml --export deblur/weights/kernel_estimator.pt
"""

import argparse
import logging
import os
import signal
import sys

import yaml

from configs import CONFIG_DIR, load_config
from configs.cli import RUN_ERRORS, USAGE_ERRORS, CliError, guarded
from deblur.config import KernelTrainConfig, TrainConfig
from deblur.train.kernel_trainer import KernelTrainer
from deblur.train.gan_trainer import Trainer

# The YAML's `stage` names what it trains: the generator (the default) or the kernel estimator.
STAGES = {"generator": (TrainConfig, Trainer), "kernel": (KernelTrainConfig, KernelTrainer)}


def _stage(path: str) -> str:
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except OSError:
        return "generator"  # load_config reports the missing or unreadable file
    stage = raw.get("stage", "generator") if isinstance(raw, dict) else "generator"
    if stage not in STAGES:
        raise ValueError(f"{path}: stage {stage!r} is unknown. Available: {sorted(STAGES)}")
    return stage


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(CONFIG_DIR / "deblur_train.yaml"), help="training YAML (default: %(default)s)")
    parser.add_argument("--resume", action="store_true", help="continue <project>/<name>/last.pt exactly")
    parser.add_argument("--export", metavar="OUT", help="write the lean inference file of the run's best.pt to OUT and exit")
    parser.add_argument("--export-from", default="best.pt", help="checkpoint of the run to export (default: %(default)s)")
    parser.add_argument("--half", action="store_true", help="export fp16 weights (half the size)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. optimizer.lr=3.0e-4")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    # Ctrl-C, and SIGTERM from a scheduler or `kill`, save last.pt and exit cleanly. SIGINT is re-armed
    # because shells start background jobs with it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    trainer = None
    try:
        stage = guarded(lambda: _stage(args.config), args.debug, 2, USAGE_ERRORS)
        schema, trainer_cls = STAGES[stage]
        overrides = [o for o in args.overrides if not o.startswith("stage=")]
        cfg = guarded(lambda: load_config(schema, args.config, overrides), args.debug, 2, USAGE_ERRORS)
        extra = {} if stage == "kernel" else {"extra_losses": _extra_losses(cfg)}
        # OSError too: remote training data that cannot be reached or read (endpoint, network, credentials)
        trainer = guarded(lambda: trainer_cls(cfg, resume=args.resume, **extra), args.debug, 2, (*USAGE_ERRORS, OSError))
        if args.export:
            export_kw = {"half": args.half} if stage == "generator" else {}
            out = guarded(lambda: trainer.export(args.export, which=args.export_from, **export_kw), args.debug, 1, RUN_ERRORS)
            print(f"exported {out}")
            return 0
        val = guarded(trainer.fit, args.debug, 1, RUN_ERRORS)
    except CliError as e:
        return e.code
    except KeyboardInterrupt:
        saved = f": saved {trainer.run_dir / 'last.pt'}; continue with --resume" if trainer is not None else ""
        print(f"interrupted{saved}", file=sys.stderr)
        return 130
    finally:
        _close_process_group()
    if rank == 0:
        print(f"done: step {trainer.step}, last val {val}, run folder {trainer.run_dir}")
    return 0


def _close_process_group() -> None:
    """Under torchrun: leave the process group before exiting (gloo's threads abort a process that exits in it)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _extra_losses(cfg: TrainConfig) -> dict:
    """Content losses that need a network from outside deblur/ (the frozen detector), built here."""
    if cfg.model.content_loss.get("detector_perceptual", 0) <= 0:
        return {}
    from deblur.train.losses import FeatureLoss
    from detect import DetectorConfig, build_darknet_model

    net = build_darknet_model(DetectorConfig(backend="darknet", device="cpu"))
    m = cfg.model
    return {"detector_perceptual": FeatureLoss(net, m.detector_layers, m.detector_layer_weights, m.detector_criterion)}


if __name__ == "__main__":
    sys.exit(main())
