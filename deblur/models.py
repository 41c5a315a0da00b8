"""Generator registry, builder and the lean export format (``save_generator`` / ``load_generator``).

Every generator maps ``(B,3,H,W)`` RGB float in ``[-1,1]`` (any ``H, W >= 32``) to the same shape and range.

Export file (``torch.save``, read back with ``weights_only=True``)::

    {"format": "deblur-generator-v1", "model": state_dict, "cfg": dataclasses.asdict(GeneratorConfig),
     "step": int, "meta": dict}

``load_generator`` also accepts a training checkpoint holding ``"model"`` and ``"cfg"`` (the cfg may be a
GeneratorConfig, a ModelConfig or a whole TrainConfig as a dict).

CLI: ``python -m deblur.models --summary`` prints params and GFLOPs of every generator at 1280x720.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from configs import did_you_mean
from configs.loader import ConfigError, from_dict
from deblur.archs.fpn_densenet_arch import FPNDenseNet121
from deblur.archs.fpn_inception_arch import FPNInception
from deblur.archs.fpn_mobilenet_arch import FPNGenerator, FPNMobileNetV2, FPNMobileNetV2DSC
from deblur.archs.kernel_arch import KernelEstimator
from deblur.config import EstimatorConfig, GeneratorConfig, ModelConfig
from runtime import resolve_device
from runtime.files import atomic_save

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_DEBLURRER",
    "DEFAULT_ESTIMATOR",
    "DEFAULT_WEIGHTS",
    "ESTIMATORS",
    "ESTIMATOR_FORMAT",
    "EXPORT_FORMAT",
    "GENERATORS",
    "build_estimator",
    "build_generator",
    "load_estimator",
    "load_refiner",
    "save_estimator",
    "count_params",
    "file_format",
    "generator_flops",
    "load_generator",
    "save_generator",
]

GENERATORS: dict[str, type[FPNGenerator]] = {
    "fpn_mobilenet_v2": FPNMobileNetV2,
    "fpn_mobilenet_v2_dsc": FPNMobileNetV2DSC,
    "fpn_densenet121": FPNDenseNet121,
    "fpn_inception": FPNInception,  # DeblurGANv2's quality model; not a default (timm's inception_resnet_v2)
}

ESTIMATORS: dict[str, type[KernelEstimator]] = {"kernel_mobilenet_v2": KernelEstimator}

EXPORT_FORMAT = "deblur-generator-v1"
ESTIMATOR_FORMAT = "deblur-kernel-estimator-v1"
KERNEL_TRAIN_FORMAT = "kernel-train-v1"  # deblur/train/kernel_trainer.py checkpoints hold "model", "ema" and "cfg" too
TRAIN_FORMAT = "deblur-train-v1"  # deblur/train/gan_trainer.py checkpoints hold "model" and "cfg" too
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "fpn_mobilenet_v2.pt"
DEFAULT_ESTIMATOR = Path(__file__).resolve().parent / "weights" / "kernel_estimator.pt"
# what the pipeline, predict and the evaluations run when no weights are given: the kernel-aware deblurrer
# (it recovered more detection than the generator, harms sharp frames not at all, and costs far less; model card)
DEFAULT_DEBLURRER = DEFAULT_ESTIMATOR
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP and torch.compile
# torchvision < 0.4 DenseNet keys ("denselayer1.norm.1.weight") -> current ("denselayer1.norm1.weight")
_OLD_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _unknown_generator(name: str) -> ValueError:
    return ValueError(
        f"Unknown generator '{name}'. Available: {sorted(GENERATORS)}.{did_you_mean(name, GENERATORS)} "
        "Set GeneratorConfig.name (model.g_name in the training YAML) to one of them."
    )


def _arch_kwargs(cfg: GeneratorConfig) -> dict[str, Any]:
    """GeneratorConfig fields that are constructor arguments (all but name and backbone_weights)."""
    kwargs = dataclasses.asdict(cfg)
    kwargs.pop("name")
    kwargs.pop("backbone_weights")
    return kwargs


def build_generator(cfg: GeneratorConfig) -> nn.Module:
    """Build the generator ``cfg.name`` (train mode, float32, CPU); load ``cfg.backbone_weights`` if set.

    ``cfg.backbone_weights``: a torchvision-format state dict of the backbone (e.g. MobileNetV2 with keys
    like ``"features.0.0.weight"``; ``"classifier.*"`` and layers the generator does not use are ignored).
    """
    if not isinstance(cfg, GeneratorConfig):
        raise TypeError(f"build_generator expects a GeneratorConfig, got {type(cfg).__name__}; "
                        "build one with GeneratorConfig(name=...) or ModelConfig.generator()")
    cls = GENERATORS.get(cfg.name)
    if cls is None:
        raise _unknown_generator(cfg.name)
    model = cls(**_arch_kwargs(cfg))
    if cfg.backbone_weights:
        load_backbone_weights(model, cfg.backbone_weights)
    return model


def _strip_prefixes(key: str, prefixes: tuple[str, ...] = _WRAPPER_PREFIXES) -> str:
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def _short(keys, n: int = 5) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return f"{keys[:n]}{more}"


def load_backbone_weights(model: FPNGenerator, path: str | os.PathLike) -> None:
    """Load a torchvision-format backbone state dict from ``path`` into ``model.backbone`` (strictly).

    Accepts a plain state dict or one wrapped as ``{"state_dict": ...}`` / ``{"model": ...}``; strips
    ``module.`` and ``features.`` prefixes, ignores the classifier (``classifier.*``, ``fc.*``, timm's ``classif.*``) and the backbone layers this
    generator does not use. Missing or unexpected keys and wrong shapes raise ValueError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Backbone weights not found: {path}. Set backbone_weights to a torchvision-format state dict "
            f"of {model.backbone_name} (torch.save(model.state_dict(), path)), or to '' for random init."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many types; we re-raise with the file name
        raise ValueError(f"Cannot read backbone weights {path} as a torch state dict: {e}") from e
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"Backbone weights {path} are not a state dict (name -> tensor), got {type(state).__name__}")

    expected = model.backbone.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    ignored = []
    for key, value in state.items():
        key = _strip_prefixes(key)
        if key.startswith(("classifier.", "classif.")) or key in ("fc.weight", "fc.bias"):
            ignored.append(key)
            continue
        key = _strip_prefixes(key, ("features.",))
        key = _OLD_DENSENET_KEY.sub(r"\1\2", key)
        if key.startswith(model.backbone_unused):
            ignored.append(key)
            continue
        loaded[key] = value
    what = f"{path} does not fit the {model.backbone_name} backbone of this generator"
    unexpected = set(loaded) - set(expected)
    missing = {k for k in set(expected) - set(loaded) if not k.endswith("num_batches_tracked")}
    if unexpected or missing:
        raise ValueError(
            f"{what}: unexpected keys {_short(unexpected)}, missing keys {_short(missing)}. "
            f"Pass a state dict of {model.backbone_name}(weights=None).state_dict() layout."
        )
    bad_shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                  for k, v in loaded.items() if v.shape != expected[k].shape]
    if bad_shapes:
        raise ValueError(f"{what}: wrong shapes {bad_shapes[:5]}")
    model.backbone.load_state_dict(loaded, strict=False)  # strict key check done above (num_batches_tracked optional)
    logger.info("Loaded %d backbone tensors from %s (ignored %d unused keys)", len(loaded), path, len(ignored))


def _unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside torch.compile (``_orig_mod``) and DataParallel/DDP (``module``) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None:
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _check_meta(value: Any, where: str = "meta") -> None:
    """meta must survive torch.load(weights_only=True): plain str/int/float/bool/None/list/tuple/dict."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_meta(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: keys must be strings, got {k!r}")
            _check_meta(v, f"{where}.{k}")
        return
    raise TypeError(f"{where} = {value!r} ({type(value).__name__}) cannot be stored: use str/int/float/bool/None/list/dict "
                    "(e.g. str(path))")


def save_generator(
    model: nn.Module,
    cfg: GeneratorConfig,
    path: str | os.PathLike,
    step: int = 0,
    meta: dict | None = None,
    half: bool = False,
) -> Path:
    """Export ``model`` with its ``cfg`` to ``path`` atomically (temp file + os.replace); returns the path.

    The state dict has no ``module.``/``_orig_mod.`` prefixes; ``half=True`` stores floating tensors as
    float16 (half the size; ``load_generator`` gives float32 back).
    """
    if not isinstance(cfg, GeneratorConfig):
        raise TypeError(f"save_generator expects cfg to be a GeneratorConfig, got {type(cfg).__name__}")
    meta = dict(meta or {})
    _check_meta(meta)
    state = {}
    for key, value in _unwrap(model).state_dict().items():
        value = value.detach().cpu()
        if half and value.is_floating_point():
            value = value.half()
        state[_strip_prefixes(key)] = value.clone()
    payload = {"format": EXPORT_FORMAT, "model": state, "cfg": dataclasses.asdict(cfg), "step": int(step), "meta": meta}
    path = atomic_save(payload, path)
    logger.info("Saved %s generator (step %d%s) to %s", cfg.name, step, ", fp16" if half else "", path)
    return path


def _cfg_from_dict(raw: Any, path: Path) -> GeneratorConfig:
    """GeneratorConfig from a stored cfg: a GeneratorConfig, ModelConfig or TrainConfig dict."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: 'cfg' should be a dict (dataclasses.asdict(GeneratorConfig)), got {type(raw).__name__}")
    raw = dict(raw)
    try:
        if "name" in raw and "g_name" not in raw and "model" not in raw:
            return from_dict(GeneratorConfig, raw)
        if "g_name" in raw:
            return from_dict(ModelConfig, raw).generator()
        if isinstance(raw.get("model"), Mapping) and "g_name" in raw["model"]:
            return from_dict(ModelConfig, dict(raw["model"])).generator()
    except (ConfigError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: its stored generator config is invalid: {e}") from e
    raise ValueError(f"{path}: 'cfg' holds none of GeneratorConfig/ModelConfig/TrainConfig (keys {_short(raw)})")


def _architecture_of(state: Mapping[str, torch.Tensor], cfg: GeneratorConfig) -> str | None:
    """Name of the registered generator whose state dict keys and shapes equal ``state`` (built on meta)."""
    for name, cls in GENERATORS.items():
        with torch.device("meta"):
            ref = cls(**_arch_kwargs(cfg)).state_dict()
        if set(ref) == set(state) and all(ref[k].shape == state[k].shape for k in ref):
            return name
    return None


def load_generator(
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    expect_name: str | None = None,
) -> tuple[nn.Module, GeneratorConfig]:
    """Load an exported generator (or a training checkpoint with "model"/"cfg"): -> (model, cfg).

    The model is float32, in eval mode, on ``device`` ('cpu', 'cuda', 'cuda:N' or 'auto').
    ``weights=None`` loads ``DEFAULT_WEIGHTS``. ``expect_name`` (a GENERATORS key) makes a file holding
    another architecture an error. Raises FileNotFoundError for a missing file and ValueError for a file
    that is not in our format or whose weights do not fit its architecture.
    """
    if weights is None:
        path = DEFAULT_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(
                f"No default deblurring weights at {path}. Train a generator (python train_deblur.py "
                f"--config configs/deblur_train.yaml) and export it with deblur.save_generator to that path, "
                f"or pass --weights / weights=PATH to an exported generator."
            )
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"Generator weights not found: {path}. Pass the path of a file written by "
                                    "deblur.save_generator (or a training checkpoint).")
    if expect_name is not None and expect_name not in GENERATORS:
        raise _unknown_generator(expect_name)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many types; we re-raise with the file name
        raise ValueError(
            f"{path} is not a deblur generator file: torch.load(weights_only=True) failed ({e}). "
            "Export generators with deblur.save_generator (a pickled nn.Module is not accepted)."
        ) from e

    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} is not a deblur generator file: it holds a {type(obj).__name__}, "
                         f"expected a dict with format '{EXPORT_FORMAT}' (write it with deblur.save_generator)")
    fmt = obj.get("format")
    if fmt in (ESTIMATOR_FORMAT, KERNEL_TRAIN_FORMAT):
        raise ValueError(f"{path} holds a kernel estimator, not a deblurring generator. Pass it as the estimator "
                         "(--estimator / deblur.estimator=...), and a generator file (format "
                         f"'{EXPORT_FORMAT}') as the generator weights.")
    if fmt is not None and fmt not in (EXPORT_FORMAT, TRAIN_FORMAT):
        raise ValueError(f"{path} has format {fmt!r}; this loader reads '{EXPORT_FORMAT}'")
    if "model" not in obj or "cfg" not in obj:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise ValueError(
                f"{path} holds a bare state dict ({len(obj)} tensors, e.g. {_short(obj, 3)}) without a 'cfg', so "
                "its architecture is unknown. Re-export it with deblur.save_generator(model, cfg, path); a torchvision "
                "backbone goes in GeneratorConfig.backbone_weights instead."
            )
        raise ValueError(f"{path} is not a deblur generator file: it holds a dict with keys {_short(obj)}, expected "
                         f"'format'='{EXPORT_FORMAT}', 'model' and 'cfg' (write it with deblur.save_generator)")

    cfg = _cfg_from_dict(obj["cfg"], path)
    cfg = dataclasses.replace(cfg, backbone_weights="")  # the backbone is in the state dict already
    if cfg.name not in GENERATORS:
        raise ValueError(f"{path} holds generator '{cfg.name}', which this code does not know. "
                         f"Available: {sorted(GENERATORS)}")
    if expect_name is not None and cfg.name != expect_name:
        raise ValueError(f"{path} holds a '{cfg.name}' generator but '{expect_name}' was asked for. Pass weights "
                         f"exported for '{expect_name}', or ask for '{cfg.name}'.")
    raw_state = obj["model"]
    if not isinstance(raw_state, Mapping):
        raise ValueError(f"{path}: 'model' should be a state dict, got {type(raw_state).__name__}")
    state = {_strip_prefixes(k): v for k, v in raw_state.items()}

    model = build_generator(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        found = _architecture_of(state, cfg)
        if found is not None:
            raise ValueError(f"{path}: its cfg says '{cfg.name}' but its weights are a '{found}' generator; "
                             f"re-export it with the right cfg (name='{found}').") from e
        ref = model.state_dict()
        missing, unexpected = set(ref) - set(state), set(state) - set(ref)
        raise ValueError(
            f"{path}: its weights do not fit the '{cfg.name}' architecture (norm_layer={cfg.norm_layer!r}) "
            f"nor any other of {sorted(GENERATORS)}: missing {_short(missing)}, unexpected {_short(unexpected)}"
        ) from e
    model = model.float().to(resolve_device(device)).eval()
    logger.info("Loaded %s generator (step %s) from %s", cfg.name, obj.get("step", "?"), path)
    return model, cfg


def build_estimator(cfg: EstimatorConfig) -> KernelEstimator:
    """Build the kernel estimator ``cfg.name`` (train mode, float32, CPU, random init)."""
    if not isinstance(cfg, EstimatorConfig):
        raise TypeError(f"build_estimator expects an EstimatorConfig, got {type(cfg).__name__}")
    kwargs = dataclasses.asdict(cfg)
    return ESTIMATORS[kwargs.pop("name")](**kwargs)


def _lean_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {_strip_prefixes(k): v.detach().cpu().clone() for k, v in _unwrap(model).state_dict().items()}


def save_estimator(model: nn.Module, cfg: EstimatorConfig, path: str | os.PathLike, step: int = 0,
                   meta: dict | None = None, refiner: tuple[nn.Module, GeneratorConfig] | None = None) -> Path:
    """Export a kernel estimator with its ``cfg`` to ``path`` atomically; returns the path.

    ``refiner``: (generator, its GeneratorConfig with in_channels 6 or 7) bundled in the same file, so that one
    file is the whole kernel-aware deblurrer (``load_refiner`` reads it back).
    """
    meta = dict(meta or {})
    _check_meta(meta)
    payload = {"format": ESTIMATOR_FORMAT, "model": _lean_state(model), "cfg": dataclasses.asdict(cfg), "step": int(step),
               "meta": meta}
    if refiner is not None:
        ref_model, ref_cfg = refiner
        if ref_cfg.in_channels not in (6, 7):
            raise ValueError(f"a refiner takes 6 channels (blurred + deconvolved) or 7 (and the deconvolution's residual); "
                             f"this generator takes {ref_cfg.in_channels}")
        payload["refiner"] = {"model": _lean_state(ref_model), "cfg": dataclasses.asdict(ref_cfg)}
    path = atomic_save(payload, path)
    logger.info("Saved %s kernel estimator (step %d) to %s", cfg.name, step, path)
    return path


def load_estimator(weights: str | os.PathLike | None = None,
                   device: str | torch.device = "cpu") -> tuple[KernelEstimator, EstimatorConfig]:
    """Load an exported kernel estimator (``save_estimator``) -> (model in eval mode on ``device``, cfg).

    ``weights=None`` loads ``DEFAULT_ESTIMATOR``. A generator file gives a ValueError naming both kinds.
    """
    path = Path(weights) if weights is not None else DEFAULT_ESTIMATOR
    if not path.is_file():
        raise FileNotFoundError(f"Kernel estimator weights not found: {path}. Train one with `python train_deblur.py "
                                "--config configs/kernel_train.yaml` and export it with --export PATH.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many types; we re-raise with the file name
        raise ValueError(f"{path} is not a kernel estimator file: torch.load(weights_only=True) failed ({e})") from e
    fmt = obj.get("format") if isinstance(obj, Mapping) else None
    if fmt in (EXPORT_FORMAT, TRAIN_FORMAT):
        raise ValueError(f"{path} holds a deblurring generator (format {fmt!r}), not a kernel estimator. Pass it as "
                         f"the generator weights, and an estimator file (format '{ESTIMATOR_FORMAT}') as the estimator.")
    if fmt not in (ESTIMATOR_FORMAT, KERNEL_TRAIN_FORMAT):
        raise ValueError(f"{path} is not a kernel estimator file (format {fmt!r}); export one with "
                         f"`python train_deblur.py --config configs/kernel_train.yaml --export PATH`.")
    try:
        cfg = from_dict(EstimatorConfig, dict(obj["cfg"]))
    except (ConfigError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: its stored estimator config is invalid: {e}") from e
    model = build_estimator(cfg)
    state = obj["ema"] if fmt == KERNEL_TRAIN_FORMAT and obj.get("ema") is not None else obj["model"]
    try:
        model.load_state_dict({_strip_prefixes(k): v for k, v in state.items()}, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: its weights do not fit the '{cfg.name}' estimator of its cfg {obj['cfg']}") from e
    model = model.float().to(resolve_device(device)).eval()
    logger.info("Loaded %s kernel estimator (step %s) from %s%s", cfg.name, obj.get("step", "?"), path,
                " with a bundled refiner" if obj.get("refiner") else "")
    return model, cfg


def load_refiner(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, GeneratorConfig] | None:
    """The refiner bundled in a kernel estimator file (eval mode on ``device``), or None if it has none."""
    obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    bundled = obj.get("refiner") if isinstance(obj, Mapping) else None
    if not bundled:
        return None
    cfg = dataclasses.replace(_cfg_from_dict(bundled["cfg"], Path(path)), backbone_weights="")
    model = build_generator(cfg)
    model.load_state_dict(bundled["model"], strict=True)
    return model.float().to(resolve_device(device)).eval(), cfg


def file_format(path: str | os.PathLike) -> str | None:
    """The ``format`` stored in a weights file (None if it has none or is not a dict); FileNotFoundError/ValueError
    when the file is missing or torch cannot read it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Weights not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many types; we re-raise with the file name
        raise ValueError(f"{path} is not a weights file of this project: torch.load(weights_only=True) failed ({e})") from e
    return obj.get("format") if isinstance(obj, Mapping) else None


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def generator_flops(cfg: GeneratorConfig, height: int = 720, width: int = 1280) -> int:
    """FLOPs of one forward pass at ``height x width`` (batch 1), counted by torch's FlopCounterMode.

    FlopCounterMode counts 2 FLOPs per multiply-accumulate of convolutions/matmuls (norms, activations
    and resampling are not counted). Built on the meta device: nothing is allocated or computed.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = GENERATORS[cfg.name](**_arch_kwargs(cfg)).eval()
        x = torch.empty(1, 3, height, width)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deblur.models", description="Deblurring generator registry.")
    parser.add_argument("--summary", action="store_true", help="print params and GFLOPs of every generator")
    parser.add_argument("--size", default="1280x720", help="WxH for the GFLOPs column (default 1280x720)")
    parser.add_argument("--time", action="store_true",
                        help="with --summary: also time an eager fp32 forward at --size on this CPU (median of 3 after a warm-up)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for --time (0 = torch's default)")
    parser.add_argument("--bundle", nargs=3, metavar=("ESTIMATOR", "REFINER", "OUT"),
                        help="write OUT: the kernel estimator file with the refiner (an exported in_channels=6 or 7 "
                             "generator) bundled, one file for the whole kernel-aware deblurrer")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.bundle:
        est_path, ref_path, out = args.bundle
        try:
            est, est_cfg = load_estimator(est_path)
            ref, ref_cfg = load_generator(ref_path)
            stored = torch.load(est_path, map_location="cpu", weights_only=True)
            meta = {**(stored.get("meta") or {}), "refiner_from": Path(ref_path).name}
            step = int(stored.get("step", 0))
            print(save_estimator(est, est_cfg, out, step=step, meta=meta, refiner=(ref, ref_cfg)))
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}")
            return 2
        return 0
    if not args.summary:
        parser.print_help()
        return 0
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size must look like 1280x720 (WxH), got {args.size!r}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    rows = []
    for name in GENERATORS:
        cfg = GeneratorConfig(name=name)
        with torch.device("meta"):
            params = count_params(GENERATORS[name](**_arch_kwargs(cfg)))
        rows.append((name, params, generator_flops(cfg, height, width), _forward_ms(cfg, height, width) if args.time else None))
    timed = f"{f'ms @{width}x{height}':>18}" if args.time else ""
    print(f"{'generator':<24}{'params (M)':>12}{f'GFLOPs @{width}x{height}':>22}{timed}")
    for name, params, flops, ms in rows:
        print(f"{name:<24}{params / 1e6:>12.3f}{flops / 1e9:>22.1f}" + (f"{ms:>18.0f}" if ms is not None else ""))
    print("GFLOPs = 2 x multiply-accumulates of convs (torch.utils.flop_counter.FlopCounterMode), batch 1"
          + (f"; ms: eager fp32 torch on {torch.get_num_threads()} thread(s), default widths (model.num_filters 64, "
             "model.num_filters_fpn 128)" if args.time else ""))
    return 0


def _forward_ms(cfg: GeneratorConfig, height: int, width: int) -> float:
    """Median wall time of 3 eager fp32 forwards of a (1,C,H,W) input on the CPU, after one warm-up."""
    import time

    model = build_generator(cfg).eval()
    x = torch.zeros(1, cfg.in_channels, height, width)
    times = []
    with torch.inference_mode():
        for i in range(4):
            start = time.perf_counter()
            model(x)
            if i:
                times.append(time.perf_counter() - start)
    return 1000.0 * sorted(times)[1]


if __name__ == "__main__":
    raise SystemExit(main())
