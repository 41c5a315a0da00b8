"""Evaluation sets: which images, in which video order, with which ground truth.

Formats (``EvalDataConfig.format``):
* images  globs of unlabelled images and/or videos (every ``video_frame_step``-th frame): pseudo GT;
* yolo    dataset roots with ``images/`` and ``labels/*.txt`` (``cls cx cy w h``, normalised);
* coco    an images folder and an instances .json (``bbox`` = x, y, w, h in pixels);
* paired  real blur: sharp and blurred globs matched by relative path (GoPro-style), optional YOLO labels.

Class identity is by NAME: label names are mapped onto the detector's names (with the usual
COCO-2017 / darknet spellings made equal); a label name the detector does not know is kept (its AP
is 0, and a warning says so). Images are read one at a time (``read_image``); a frame that fails
to decode is skipped by the caller and counted in the report.
"""

from __future__ import annotations

import collections
import glob
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml

from configs import IMAGE_EXTENSIONS
from evaluation.config import EvalDataConfig
from evaluation.matching import Boxes

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
# COCO-2017 spelling -> darknet coco.names spelling (the detector's), so labels of either kind match
NAME_ALIASES = {
    "motorcycle": "motorbike",
    "airplane": "aeroplane",
    "couch": "sofa",
    "potted plant": "pottedplant",
    "dining table": "diningtable",
    "tv": "tvmonitor",
}
_FRAME_NUMBER = re.compile(r"^(.*?)(\d+)$")
_PAIR_DIRS = {"blur", "blurred", "blur_gamma", "sharp", "gt", "input", "target"}


@dataclass
class Sample:
    """One image of the set. ``path`` is an image file, or a video file with ``frame`` >= 0."""

    name: str  # unique and stable: seeds, caches and the report use it
    sequence: str  # the video (or photo) it belongs to: bootstrap blocks never mix sequences
    path: str
    frame: int = -1
    blurred_path: str = ""  # paired: the real blurred image
    labels: np.ndarray | None = None  # (N,5) [cls, a, b, c, d]; None = no labels (pseudo GT)
    labels_normalized: bool = False  # True: YOLO cx cy w h in [0,1]; False: x1 y1 x2 y2 pixels


@dataclass
class EvalSet:
    samples: list[Sample]
    class_names: list[str]  # detector names, then label names the detector does not know
    labelled: bool  # the samples carry labels
    source: str  # one line: what was loaded
    notes: list[str] = field(default_factory=list)


def canonical_name(name: str) -> str:
    name = name.strip()
    return NAME_ALIASES.get(name, name)


# ---- readers --------------------------------------------------------------------------------------
class FrameReader:
    """Reads samples' images; keeps one video open and reads forward (no seeking for ordered frames)."""

    def __init__(self) -> None:
        self._video_path = ""
        self._cap: cv2.VideoCapture | None = None
        self._pos = 0

    def read(self, path: str, frame: int = -1) -> np.ndarray | None:
        """(H,W,3) BGR uint8, or None when the file or frame cannot be decoded."""
        if frame < 0:
            img = cv2.imread(path, cv2.IMREAD_COLOR)
            return img if img is not None and img.size else None
        if path != self._video_path or frame < self._pos:
            self.close()
            self._cap = cv2.VideoCapture(path)
            self._video_path, self._pos = path, 0
            if not self._cap.isOpened():
                return None
            if frame > 0:
                self._cap.set(cv2.CAP_PROP_POS_FRAMES, frame)
                self._pos = int(self._cap.get(cv2.CAP_PROP_POS_FRAMES))
        while self._pos < frame:
            if not self._cap.grab():
                return None
            self._pos += 1
        ok, img = self._cap.read()
        self._pos += 1
        return img if ok and img is not None else None

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
        self._cap, self._video_path = None, ""

    def __enter__(self) -> "FrameReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def ground_truth_boxes(sample: Sample, height: int, width: int) -> Boxes:
    """The sample's labels as pixel xyxy Boxes for an image of this size (labels must exist)."""
    if sample.labels is None:
        raise ValueError(f"{sample.name}: has no labels")
    lab = sample.labels
    if len(lab) == 0:
        return Boxes.empty()
    if sample.labels_normalized:
        cx, cy, w, h = lab[:, 1] * width, lab[:, 2] * height, lab[:, 3] * width, lab[:, 4] * height
        xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    else:
        xyxy = lab[:, 1:5]
    xyxy = np.clip(xyxy, 0, [width, height, width, height])
    return Boxes.make(xyxy, lab[:, 0].astype(np.int64))


# ---- helpers ---------------------------------------------------------------------------------------
def _glob_root(pattern: str) -> Path:
    parts = Path(pattern).parts
    fixed = []
    for p in parts:
        if any(ch in p for ch in "*?["):
            break
        fixed.append(p)
    return Path(*fixed) if fixed else Path(".")


def _expand(pattern: str, exts: tuple[str, ...]) -> list[Path]:
    """Files matching a glob (``**`` recurses) or inside a folder, with one of ``exts``, sorted."""
    p = Path(pattern)
    if p.is_dir():
        files = [f for f in p.rglob("*") if f.is_file()]
    else:
        files = [Path(f) for f in glob.glob(pattern, recursive=True)]
    return sorted(f for f in files if f.suffix.lower() in exts and f.is_file())


def _sequences(paths: list[Path]) -> dict[Path, tuple[str, int]]:
    """Image file -> (sequence key, frame number). Files in one folder whose stems are one prefix plus a
    number (vtest_000005.jpg, 000001.png) form a sequence; any other image is its own sequence."""
    groups: dict[tuple[str, str], list[tuple[Path, int]]] = {}
    out = {}
    for p in paths:
        m = _FRAME_NUMBER.match(p.stem)
        if m:
            groups.setdefault((str(p.parent), m.group(1)), []).append((p, int(m.group(2))))
        else:
            out[p] = (f"photo:{p}", 0)
    for (parent, prefix), members in groups.items():
        if len(members) == 1:
            p, n = members[0]
            out[p] = (f"photo:{p}", 0)
            continue
        for p, n in members:
            out[p] = (f"seq:{parent}/{prefix}", n)
    return out


def _names_from_file(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"data.names={path!r}: file not found. Give a data.yaml (with 'names') or a .txt with one class "
            "name a line, or '' for the 80 COCO names."
        )
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"data.names={path!r}: not valid YAML: {e}") from e
        names = data.get("names") if isinstance(data, dict) else None
        if isinstance(names, dict):
            try:
                keys = sorted(int(k) for k in names)
            except (TypeError, ValueError) as e:
                raise ValueError(f"data.names={path!r}: 'names' keys must be class ids 0..N-1") from e
            if keys != list(range(len(keys))):
                raise ValueError(f"data.names={path!r}: 'names' ids must be 0..{len(keys) - 1}, got {keys}")
            names = [names[k] if k in names else names[str(k)] for k in keys]
        if not isinstance(names, list) or not names:
            raise ValueError(f"data.names={path!r}: needs a non-empty 'names' list or {{id: name}} mapping")
        return [str(n) for n in names]
    names = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"data.names={path!r} is empty: write one class name a line")
    return names


class _ClassMap:
    """Label names -> indices into the detector's names (unknown names are appended, with a warning)."""

    def __init__(self, detector_names: list[str]) -> None:
        self.names = list(detector_names)
        self._index = {canonical_name(n): i for i, n in enumerate(self.names)}
        self.unknown: list[str] = []

    def index(self, label_name: str) -> int:
        key = canonical_name(label_name)
        if key not in self._index:
            self._index[key] = len(self.names)
            self.names.append(key)
            self.unknown.append(key)
        return self._index[key]


def _read_yolo_labels(path: Path, n_names: int, remap: list[int]) -> np.ndarray:
    """(N,5) [cls, cx, cy, w, h] normalised; polygons (cls x1 y1 x2 y2 ...) become their bounding boxes."""
    rows = []
    for ln, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            values = [float(v) for v in parts]
        except ValueError as e:
            raise ValueError(f"{path}:{ln}: not numbers: {line!r}. A YOLO label line is 'cls cx cy w h'.") from e
        cls = values[0]
        if cls != int(cls) or not 0 <= cls < n_names:
            raise ValueError(
                f"{path}:{ln}: class id {parts[0]} is out of range: valid ids are 0..{n_names - 1} "
                f"({n_names} names). Fix the label, or give the matching class names with data.names=..."
            )
        coords = values[1:]
        if len(coords) == 4:
            cx, cy, w, h = coords
        elif len(coords) >= 6 and len(coords) % 2 == 0:
            xs, ys = coords[0::2], coords[1::2]
            cx, cy, w, h = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)
        else:
            raise ValueError(f"{path}:{ln}: expected 'cls cx cy w h' (or a polygon), got {len(parts)} values: {line!r}")
        if w < 0 or h < 0:
            raise ValueError(f"{path}:{ln}: negative box size in {line!r}")
        rows.append([remap[int(cls)], cx, cy, w, h])
    return np.asarray(rows, np.float64).reshape(-1, 5)


def _label_to_image(label: Path, labels_dir: Path, images_dir: Path) -> Path | None:
    stem = images_dir / label.relative_to(labels_dir).with_suffix("")
    for ext in IMAGE_EXTENSIONS:
        for cand in (stem.with_name(stem.name + ext), stem.with_name(stem.name + ext.upper())):
            if cand.is_file():
                return cand
    return None


def _missing_error(what: str, missing: list[str], fix: str) -> FileNotFoundError:
    shown = ", ".join(missing[:5]) + (f" ... ({len(missing)} in all)" if len(missing) > 5 else "")
    return FileNotFoundError(f"{what}: {shown}. {fix}")


# ---- loaders ---------------------------------------------------------------------------------------
def _load_images(cfg: EvalDataConfig) -> list[Sample]:
    samples = []
    for pattern in cfg.sources:
        files = _expand(pattern, IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
        if not files:
            logger.warning("data.sources: %r matches no image or video", pattern)
        images = [f for f in files if f.suffix.lower() in IMAGE_EXTENSIONS]
        seqs = _sequences(images)
        for f in sorted(images, key=lambda p: (seqs[p][0], seqs[p][1], str(p))):
            samples.append(Sample(name=f.stem, sequence=seqs[f][0], path=str(f)))
        for f in (f for f in files if f.suffix.lower() in VIDEO_EXTENSIONS):
            cap = cv2.VideoCapture(str(f))
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
            cap.release()
            if n <= 0:
                logger.warning("data.sources: video %s cannot be opened or has no frames: skipped", f)
                continue
            frames = list(range(0, n, cfg.video_frame_step))
            if cfg.max_video_frames:
                frames = frames[: cfg.max_video_frames]
            for k in frames:
                samples.append(Sample(name=f"{f.stem}_{k:06d}", sequence=f"video:{f}", path=str(f), frame=k))
    return samples


def _load_yolo(cfg: EvalDataConfig, cmap: _ClassMap) -> list[Sample]:
    label_names = _names_from_file(cfg.names) if cfg.names else list(cmap.names[:80])
    remap = [cmap.index(n) for n in label_names]
    samples = []
    for root_s in cfg.sources:
        root = Path(root_s)
        images_dir, labels_dir = root / "images", root / "labels"
        if not images_dir.is_dir():
            raise FileNotFoundError(
                f"data.sources: YOLO dataset root {root} has no images/ folder. Expected {root}/images/*.jpg and "
                f"{root}/labels/*.txt (Ultralytics layout); set data.format to 'images' for unlabelled images."
            )
        images = _expand(str(images_dir), IMAGE_EXTENSIONS)
        labels = _expand(str(labels_dir), (".txt",)) if labels_dir.is_dir() else []
        orphans = [str(lb) for lb in labels if _label_to_image(lb, labels_dir, images_dir) is None]
        if orphans:
            raise _missing_error(
                f"YOLO labels point to missing images (no {images_dir}/<same name>.jpg/.png/...)",
                orphans,
                "Restore the images or delete those label files.",
            )
        seqs = _sequences(images)
        for img in sorted(images, key=lambda p: (seqs[p][0], seqs[p][1], str(p))):
            label = (labels_dir / img.relative_to(images_dir)).with_suffix(".txt")
            lab = _read_yolo_labels(label, len(label_names), remap) if label.is_file() else np.zeros((0, 5))
            rel = img.relative_to(images_dir).with_suffix("")
            samples.append(Sample(name=str(rel), sequence=seqs[img][0], path=str(img), labels=lab, labels_normalized=True))
    return samples


def _load_coco(cfg: EvalDataConfig, cmap: _ClassMap) -> list[Sample]:
    if len(cfg.sources) != 1:
        raise ValueError(f"data.format='coco' takes one images folder in data.sources, got {cfg.sources}")
    images_dir = Path(cfg.sources[0])
    ann_path = Path(cfg.annotations)
    if not ann_path.is_file():
        raise FileNotFoundError(f"data.annotations={cfg.annotations!r}: file not found. Give a COCO instances .json.")
    try:
        data = json.loads(ann_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"data.annotations={cfg.annotations!r}: not valid JSON: {e}") from e
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key) if isinstance(data, dict) else None, list):
            raise ValueError(f"{ann_path}: a COCO instances file needs a '{key}' list")
    cats = {c["id"]: cmap.index(str(c["name"])) for c in data["categories"]}
    images = {im["id"]: im for im in data["images"]}
    per_image: dict[int, list[list[float]]] = {i: [] for i in images}
    n_crowd = 0
    for ann in data["annotations"]:
        if ann.get("image_id") not in images:
            raise ValueError(f"{ann_path}: annotation {ann.get('id')} refers to image_id {ann.get('image_id')}, "
                             "which is not in 'images'")
        if ann.get("category_id") not in cats:
            raise ValueError(f"{ann_path}: annotation {ann.get('id')} has category_id {ann.get('category_id')}, "
                             f"out of range: valid ids {sorted(cats)} (from 'categories')")
        if ann.get("iscrowd", 0):
            n_crowd += 1
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        if w < 0 or h < 0:
            raise ValueError(f"{ann_path}: annotation {ann.get('id')} has a negative bbox size {ann['bbox']}")
        per_image[ann["image_id"]].append([cats[ann["category_id"]], x, y, x + w, y + h])
    if n_crowd:
        logger.warning("%s: %d crowd annotations dropped (no crowd handling): detections on them count as "
                       "false positives", ann_path, n_crowd)
    missing = [str(images_dir / im["file_name"]) for im in images.values() if not (images_dir / im["file_name"]).is_file()]
    if missing:
        raise _missing_error(f"{ann_path} lists images that are not in {images_dir}", missing,
                             "Point data.sources at the folder that holds them, or remove them from the json.")
    paths = [images_dir / im["file_name"] for im in images.values()]
    seqs = _sequences(paths)
    samples = []
    for image_id, im in sorted(images.items(), key=lambda kv: (seqs[images_dir / kv[1]["file_name"]], kv[1]["file_name"])):
        p = images_dir / im["file_name"]
        lab = np.asarray(per_image[image_id], np.float64).reshape(-1, 5)
        samples.append(Sample(name=str(Path(im["file_name"]).with_suffix("")), sequence=seqs[p][0], path=str(p), labels=lab))
    return samples


def _pair_key(path: Path, root: Path) -> str:
    rel = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
    parts = [p for p in rel.with_suffix("").parts if p.lower() not in _PAIR_DIRS]
    return "/".join(parts)


def _load_paired(cfg: EvalDataConfig, cmap: _ClassMap) -> list[Sample]:
    sharp = {}
    for pattern in cfg.sources:
        root = _glob_root(pattern)
        for f in _expand(pattern, IMAGE_EXTENSIONS):
            sharp[_pair_key(f, root)] = f
    root_b = _glob_root(cfg.blurred)
    blurred = {_pair_key(f, root_b): f for f in _expand(cfg.blurred, IMAGE_EXTENSIONS)}
    only_sharp, only_blur = sorted(set(sharp) - set(blurred)), sorted(set(blurred) - set(sharp))
    if only_sharp or only_blur:
        raise ValueError(
            f"data.format='paired': {len(only_sharp)} sharp images without a blurred partner (e.g. {only_sharp[:3]}) "
            f"and {len(only_blur)} blurred without a sharp one (e.g. {only_blur[:3]}). Pairs are matched by path "
            f"relative to the globs' fixed folders ({[str(_glob_root(p)) for p in cfg.sources]} and {root_b}), "
            f"ignoring folders named {sorted(_PAIR_DIRS)}."
        )
    label_names = _names_from_file(cfg.names) if cfg.names else list(cmap.names[:80])
    remap = [cmap.index(n) for n in label_names]
    samples = []
    keys = sorted(sharp)
    # a sequence is the folder of the key (GoPro: one folder per video); photos at the top are their own
    for key in keys:
        folder = key.rsplit("/", 1)[0] if "/" in key else ""
        seq = f"seq:{folder}" if folder else f"photo:{key}"
        lab = None
        if cfg.labels:
            cands = [Path(cfg.labels) / f"{key}.txt", Path(cfg.labels) / f"{Path(key).name}.txt"]
            label = next((c for c in cands if c.is_file()), None)
            lab = _read_yolo_labels(label, len(label_names), remap) if label else np.zeros((0, 5))
        samples.append(Sample(name=key, sequence=seq, path=str(sharp[key]), blurred_path=str(blurred[key]),
                              labels=lab, labels_normalized=True))
    if cfg.labels:
        known = {Path(k).name for k in keys} | set(keys)
        orphans = [str(f) for f in _expand(cfg.labels, (".txt",))
                   if str(f.relative_to(cfg.labels).with_suffix("")) not in known and f.stem not in known]
        if orphans:
            raise _missing_error("data.labels has label files for images that are not in the set", orphans,
                                 "Check data.sources / data.blurred, or delete those label files.")
    return samples


LOADERS = {"images": _load_images, "yolo": _load_yolo, "coco": _load_coco, "paired": _load_paired}


def load_eval_set(cfg: EvalDataConfig, detector_names: list[str]) -> EvalSet:
    """Find the samples of ``cfg`` (nothing is decoded yet). Raises for an empty set and bad labels."""
    cmap = _ClassMap(detector_names)
    loader = LOADERS[cfg.format]
    samples = loader(cfg) if cfg.format == "images" else loader(cfg, cmap)
    if not samples:
        raise ValueError(
            f"The evaluation set is empty: data.format={cfg.format!r}, data.sources={cfg.sources} found no "
            "images. Fix: run `python scripts/fetch_data.py --what all` (or `make data`) for the default set, "
            "or point data.sources at your images (e.g. data.sources=[\"my/frames/*.jpg\"])."
        )
    counts = collections.Counter(s.name for s in samples)
    for s in samples:  # same stem in two folders: only those samples fall back to their (unique) paths, so
        if counts[s.name] > 1:  # every other sample keeps its name, hence its blur seed and cache key
            s.name = f"{s.path}#{s.frame}" if s.frame >= 0 else s.path
    notes = []
    if cmap.unknown:
        msg = (f"label classes {cmap.unknown} are not classes of the detector: their AP is 0 "
               "(restrict with classes=[...] to leave them out)")
        logger.warning(msg)
        notes.append(msg)
    labelled = samples[0].labels is not None
    return EvalSet(samples=samples, class_names=cmap.names, labelled=labelled,
                   source=f"{cfg.format}: {', '.join(cfg.sources)}", notes=notes)


def spread_subset(samples: list[Sample], limit: int) -> list[Sample]:
    """At most ``limit`` samples for a quick run: the budget goes round-robin over the sequences (every
    photo, every video gets one before any gets two), and within a sequence the frames are spread evenly.
    The order of ``samples`` is kept."""
    if limit <= 0 or limit >= len(samples):
        return samples
    by_seq: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_seq.setdefault(s.sequence, []).append(i)
    quota = dict.fromkeys(by_seq, 0)
    left = limit
    while left:
        for seq, members in by_seq.items():
            if left and quota[seq] < len(members):
                quota[seq] += 1
                left -= 1
    keep = []
    for seq, members in by_seq.items():
        if quota[seq]:
            pick = np.round(np.linspace(0, len(members) - 1, quota[seq])).astype(int)
            keep.extend(members[k] for k in np.unique(pick))
    return [samples[i] for i in sorted(keep)]
