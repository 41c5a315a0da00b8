"""Pieces every backend shares: the Detection record, the Detector base class (pre/infer/post),
letterbox (of numpy frames and of device tensors) and its inverse, and per-class NMS."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import torchvision

from configs import did_you_mean
from detect.config import DetectorConfig
from runtime import resolve_device

logger = logging.getLogger(__name__)

PAD_GRAY = 114  # letterbox padding value (Ultralytics' gray); the one copy: backends and pipeline import it

# The 80 COCO class names in YOLO order (darknet coco.names, Ultralytics coco.yaml).
COCO_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorbike", "aeroplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase",
    "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard",
    "surfboard", "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl",
    "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake",
    "chair", "sofa", "pottedplant", "bed", "diningtable", "toilet", "tvmonitor", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)


@dataclass(frozen=True, slots=True)
class Detection:
    """One detected object.

    xyxy: (x1, y1, x2, y2) in pixels of the ORIGINAL frame (or of the input tensor for tensor input).
    conf: confidence in [0, 1]. cls: class index into Detector.names. name: class name.
    """

    xyxy: tuple[float, float, float, float]
    conf: float
    cls: int
    name: str


@dataclass(frozen=True, slots=True)
class LetterboxInfo:
    """How a frame was mapped into the network input: x_net = x_orig * gain + pad_x."""

    gain: float
    pad_x: float
    pad_y: float
    orig_h: int
    orig_w: int


def _letterbox_geometry(
    h0: int, w0: int, new_shape: tuple[int, int], auto: bool, stride: int
) -> tuple[int, int, int, int, int, int, float]:
    """-> (new_h, new_w, top, bottom, left, right, gain): the resize and the padding of a letterbox."""
    gain = min(new_shape[0] / h0, new_shape[1] / w0)
    new_w, new_h = int(round(w0 * gain)), int(round(h0 * gain))
    dw, dh = new_shape[1] - new_w, new_shape[0] - new_h
    if auto:
        dw, dh = dw % stride, dh % stride
    top, left = dh // 2, dw // 2
    return new_h, new_w, top, dh - top, left, dw - left, gain


def letterbox(
    frame_bgr: np.ndarray,
    new_shape: tuple[int, int],
    auto: bool = False,
    stride: int = 32,
    color: int = PAD_GRAY,
) -> tuple[np.ndarray, LetterboxInfo]:
    """Resize keeping the aspect ratio, then pad with gray (Ultralytics-style letterbox).

    frame_bgr: (H,W,3) uint8 BGR. new_shape: (h, w) target. auto=True pads only up to a multiple
    of `stride` (minimal rectangle) instead of the full new_shape.
    Returns the (h', w', 3) uint8 BGR image and the LetterboxInfo that maps boxes back (scale_boxes).
    """
    h0, w0 = frame_bgr.shape[:2]
    new_h, new_w, top, bottom, left, right, gain = _letterbox_geometry(h0, w0, new_shape, auto, stride)
    if (new_w, new_h) != (w0, h0):
        frame_bgr = cv2.resize(frame_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    out = cv2.copyMakeBorder(frame_bgr, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(color, color, color))
    return out, LetterboxInfo(gain=gain, pad_x=float(left), pad_y=float(top), orig_h=h0, orig_w=w0)


def letterbox_tensor(
    x01: torch.Tensor,
    new_shape: tuple[int, int],
    orig_hw: tuple[int, int] | None = None,
    auto: bool = False,
    stride: int = 32,
    signed: bool = False,
) -> tuple[torch.Tensor, LetterboxInfo]:
    """``letterbox`` on the device: (B,3,h,w) RGB float [0,1] -> ((B,3,h',w') padded with PAD_GRAY / 255,
    LetterboxInfo). orig_hw: the frames' original (H, W) when x01 holds them at another size (a deblur
    resolution): the geometry, and so the boxes scale_boxes maps back, refer to the original frame.
    signed: x01 is in [-1,1] (the pipeline's frames); it is mapped to [0,1] after the resize, on the fewer pixels
    (bilinear resizing commutes with that affine map)."""
    h0, w0 = orig_hw or tuple(x01.shape[2:])
    new_h, new_w, top, bottom, left, right, gain = _letterbox_geometry(h0, w0, new_shape, auto, stride)
    if (new_h, new_w) != tuple(x01.shape[2:]):
        x01 = F.interpolate(x01, size=(new_h, new_w), mode="bilinear", align_corners=False)
    if signed:
        x01 = x01.add(1.0).mul_(0.5)
    if top or bottom or left or right:
        x01 = F.pad(x01, (left, right, top, bottom), value=PAD_GRAY / 255.0)
    return x01.contiguous(), LetterboxInfo(gain=gain, pad_x=float(left), pad_y=float(top), orig_h=h0, orig_w=w0)


def scale_boxes(xyxy: torch.Tensor, info: LetterboxInfo) -> torch.Tensor:
    """Map (N,4) xyxy boxes from network-input pixels back to the original frame, clipped to it."""
    out = xyxy.clone()
    out[:, [0, 2]] = ((out[:, [0, 2]] - info.pad_x) / info.gain).clamp_(0, info.orig_w)
    out[:, [1, 3]] = ((out[:, [1, 3]] - info.pad_y) / info.gain).clamp_(0, info.orig_h)
    return out


def scale_detections(dets: list[Detection], info: LetterboxInfo) -> list[Detection]:
    """scale_boxes for Detection lists (boxes found on a letterboxed tensor), in float64 like the xyxy floats."""
    if not dets:
        return []
    xyxy = scale_boxes(torch.tensor([d.xyxy for d in dets], dtype=torch.float64), info).tolist()
    return [replace(d, xyxy=tuple(box)) for d, box in zip(dets, xyxy)]


def xywh_to_xyxy(xywh: torch.Tensor) -> torch.Tensor:
    """(..., 4) centre-x, centre-y, width, height -> (..., 4) x1, y1, x2, y2."""
    xy, wh = xywh[..., :2], xywh[..., 2:4] / 2
    return torch.cat([xy - wh, xy + wh], dim=-1)


def nms(
    boxes_xyxy: torch.Tensor,
    scores: torch.Tensor,
    conf: float,
    iou: float,
    max_det: int,
    class_ids: torch.Tensor | None = None,
    max_candidates: int = 30000,
) -> torch.Tensor:
    """Per-class NMS for one image.

    boxes_xyxy: (N,4); scores: (N,C) per-class confidences in [0,1]; class_ids: (K,) long, keep only
    these classes (the best class is chosen among them). Returns (M,6) [x1,y1,x2,y2,conf,cls], M <= max_det.
    """
    if class_ids is not None:
        scores = scores[:, class_ids]
    best, cls = scores.max(dim=1)
    keep = best > conf
    boxes_xyxy, best, cls = boxes_xyxy[keep], best[keep], cls[keep]
    if best.numel() > max_candidates:
        top = best.topk(max_candidates).indices
        boxes_xyxy, best, cls = boxes_xyxy[top], best[top], cls[top]
    if class_ids is not None:
        cls = class_ids[cls]
    kept = torchvision.ops.batched_nms(boxes_xyxy.float(), best.float(), cls, iou)[:max_det]
    return torch.cat([boxes_xyxy[kept], best[kept, None], cls[kept, None].to(best.dtype)], dim=1).float()


# Darknet's coco.names and Ultralytics' coco.yaml spell six classes differently; either spelling works in cfg.classes.
_DARKNET_TO_ULTRALYTICS = {
    "motorbike": "motorcycle", "aeroplane": "airplane", "sofa": "couch", "pottedplant": "potted plant",
    "diningtable": "dining table", "tvmonitor": "tv",
}
_ALIASES = {**_DARKNET_TO_ULTRALYTICS, **{v: k for k, v in _DARKNET_TO_ULTRALYTICS.items()}}


def class_indices(classes: list[str] | None, names: list[str]) -> list[int] | None:
    """Class names -> indices into `names`; ValueError with close matches for an unknown name."""
    if classes is None:
        return None
    out = []
    for name in classes:
        if name not in names and _ALIASES.get(name) in names:
            name = _ALIASES[name]
        if name not in names:
            raise ValueError(
                f"detect.classes contains {name!r}, which is not a class of this model.{did_you_mean(name, names)} "
                f"Valid names ({len(names)}): {names[:10]}{' ...' if len(names) > 10 else ''}"
            )
        out.append(names.index(name))
    return out


def read_names(path: str) -> list[str]:
    """Class names from a text file, one a line (blank lines ignored)."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


class Detector:
    """A batch of frames -> one list of Detection per frame.

    Subclasses set `names`, `stride`, `rect` and implement `infer` (network forward) and `decode`
    (raw output -> boxes + per-class scores). Attributes the pipeline reads:
    names: class names; imgsz: network input side (pixels); stride: the input sides of a tensor
    input must be multiples of it; device: where the network runs (tensor input must be there).
    """

    names: list[str]
    imgsz: int
    stride: int
    device: torch.device
    rect: bool = False  # True: a batch of same-size frames is padded only up to the stride (minimal rectangle)

    def __init__(self, cfg: DetectorConfig) -> None:
        self.cfg = cfg
        self.imgsz = cfg.imgsz
        self.device = resolve_device(cfg.device, key="detect.device")
        self.half = cfg.half and self.device.type == "cuda"
        if cfg.half and not self.half:
            logger.warning("detect.half=True ignored: device resolved to %s (fp16 is CUDA only)", self.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)

    def _setup_classes(self) -> None:
        """Call once `self.names` is known: resolves cfg.classes to a device tensor of indices."""
        ids = class_indices(self.cfg.classes, self.names)
        self._class_ids = None if ids is None else torch.tensor(ids, dtype=torch.long, device=self.device)

    @contextmanager
    def keep_threads(self) -> Iterator[None]:
        """Run a block with torch's intra-op thread count = cfg.threads (0: the count found on entry) and
        put it back afterwards if something inside (Ultralytics' select_device) changed it."""
        want = self.cfg.threads or torch.get_num_threads()
        if torch.get_num_threads() != want:
            torch.set_num_threads(want)
        try:
            yield
        finally:
            if torch.get_num_threads() != want:
                logger.debug("torch threads changed to %d inside the detector; restoring %d", torch.get_num_threads(), want)
                torch.set_num_threads(want)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.half else torch.float32

    # ---- the three stages -------------------------------------------------------------------
    def __call__(self, frames: Sequence[np.ndarray] | torch.Tensor) -> list[list[Detection]]:
        """frames: a sequence of (H,W,3) uint8 BGR arrays of any sizes, or a (B,3,H,W) RGB float [0,1]
        tensor on self.device with H, W multiples of self.stride (fed as-is; boxes in its pixels)."""
        with self.keep_threads(), torch.inference_mode():
            x, infos = self.preprocess(frames)
            if x is None:
                return []
            raw = self.infer(x)
            return self.postprocess(raw, infos)

    def preprocess(
        self, frames: Sequence[np.ndarray] | torch.Tensor
    ) -> tuple[torch.Tensor | None, list[LetterboxInfo]]:
        """-> ((B,3,h,w) RGB float [0,1] on self.device, one LetterboxInfo per frame)."""
        if isinstance(frames, torch.Tensor):
            return self._check_tensor(frames), [
                LetterboxInfo(1.0, 0.0, 0.0, frames.shape[2], frames.shape[3]) for _ in range(frames.shape[0])
            ]
        if isinstance(frames, np.ndarray) and frames.ndim == 3:
            raise ValueError(
                f"frames must be a list of (H,W,3) uint8 BGR arrays, got one array of shape {frames.shape}. "
                "Fix: pass [frame]."
            )
        frames = list(frames)
        if not frames:
            return None, []
        for i, f in enumerate(frames):
            if not isinstance(f, np.ndarray) or f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3 or 0 in f.shape:
                got = f"shape {f.shape}, dtype {f.dtype}" if isinstance(f, np.ndarray) else f"type {type(f).__name__}"
                raise ValueError(
                    f"frames[{i}] must be an (H,W,3) uint8 BGR array, got {got}. "
                    "Fix: convert with cv2.cvtColor / .astype(np.uint8), or pass a (B,3,H,W) float tensor."
                )
        shape = (self.imgsz, self.imgsz)
        same = all(f.shape == frames[0].shape for f in frames)
        boxed = [letterbox(f, shape, auto=self.rect and same, stride=self.stride) for f in frames]
        batch_bgr = np.stack([b[0] for b in boxed])  # (B,h,w,3) uint8 BGR
        x = torch.from_numpy(batch_bgr).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).flip(1)  # BHWC BGR -> BCHW RGB
        x = x.to(self.dtype).div_(255.0).contiguous()
        return x, [b[1] for b in boxed]

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,h,w) RGB float [0,1] -> raw network output (backend-specific layout)."""
        raise NotImplementedError

    def decode(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw output -> (B,N,4) xyxy boxes in network-input pixels, (B,N,C) per-class confidences."""
        raise NotImplementedError

    def postprocess(self, raw: torch.Tensor, infos: list[LetterboxInfo]) -> list[list[Detection]]:
        """Raw output -> NMS -> boxes in original-frame pixels -> Detection lists."""
        boxes, scores = self.decode(raw)
        cfg = self.cfg
        out = []
        for i, info in enumerate(infos):
            det = nms(boxes[i], scores[i], cfg.conf, cfg.iou, cfg.max_det, self._class_ids)
            det[:, :4] = scale_boxes(det[:, :4], info)
            rows = det.cpu().tolist()
            out.append([
                Detection(xyxy=(r[0], r[1], r[2], r[3]), conf=r[4], cls=int(r[5]), name=self.names[int(r[5])])
                for r in rows
            ])
        return out

    def warmup(self) -> None:
        """One forward pass on a gray imgsz x imgsz batch of 1 (allocations, cuDNN autotune)."""
        x = torch.full((1, 3, self.imgsz, self.imgsz), PAD_GRAY / 255.0, device=self.device, dtype=self.dtype)
        with self.keep_threads(), torch.inference_mode():
            self.infer(x)

    def _check_tensor(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ValueError(
                f"tensor frames must be (B,3,H,W) RGB float in [0,1], got shape {tuple(x.shape)}, dtype {x.dtype}."
            )
        if x.device != self.device and not (x.device.type == self.device.type == "cuda" and self.device.index is None):
            raise ValueError(
                f"tensor frames are on {x.device} but the detector runs on {self.device}. Fix: x.to(detector.device)."
            )
        h, w = x.shape[2:]
        if h % self.stride or w % self.stride:
            raise ValueError(
                f"tensor frames must have H and W divisible by stride {self.stride}, got H={h}, W={w}. "
                f"Fix: pad to ({-(-h // self.stride) * self.stride}, {-(-w // self.stride) * self.stride}) or pass numpy frames."
            )
        return x.to(self.dtype)
