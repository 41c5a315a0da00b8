"""Training data for the deblurring generator: paired folders (GoPro-style) and on-the-fly synthetic blur.

Items are dicts ``{"blur": Tensor (3,S,S) RGB float32 in [-1, 1], "sharp": same, "name": str}`` with
``S = cfg.size``. Decoding and augmentation use numpy/OpenCV on ``(H,W,3) uint8 RGB`` arrays; tensors are
made at the very end.

Randomness: each item draws from ``np.random.default_rng([seed, epoch, index])``, so an item is the same
for the same (seed, epoch, index) in any process or DataLoader worker; call ``set_epoch(epoch)`` before each
epoch. Centre-cropped datasets (``crop="center"``, validation) ignore the epoch: they are fixed.

Train/val split: a file belongs to the split whose ``bounds`` [lo, hi) hold ``_unit_hash(split key)``, a
stable SHA-1 of the key (not Python's salted ``hash``). The key is the matched relative name; video frames
(and frame files named ``<stem>_<6 digits>.<ext>``) are keyed by video and ``FRAME_BLOCK``-frame block, so
neighbouring frames never straddle the split.

Unreadable images raise ``ValueError`` naming the file (at construction when ``preload``, else when the
item is read): a broken file in the corpus is a bug to fix, not to skip silently.
"""

from __future__ import annotations

import difflib
import glob
import hashlib
import logging
import math
import os
import re
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from deblur.blur_synth import sample_kernel, synthesize
from deblur.config import DataConfig

logger = logging.getLogger(__name__)

__all__ = ["PairedFolders", "SyntheticBlur", "build_dataset", "CORRUPT_NAMES", "IMAGE_EXTS", "VIDEO_EXTS"]

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
FRAME_BLOCK = 100  # video frames per split block (original frame numbers)
_FRAME_FILE = re.compile(r"^(?P<stem>.+)_(?P<frame>\d{6})$")


def _corrupt_transform(name: str):
    import albumentations as A  # lazy: slow import, only needed when `corrupt` is used

    table = {
        "cutout": lambda: A.CoarseDropout(
            num_holes_range=(1, 8), hole_height_range=(4, 16), hole_width_range=(4, 16), fill=0, p=1.0
        ),
        "jpeg": lambda: A.ImageCompression(quality_range=(70, 90), p=1.0),
        "motion_blur": lambda: A.MotionBlur(blur_limit=(3, 7), p=1.0),
        "median_blur": lambda: A.MedianBlur(blur_limit=(3, 5), p=1.0),
        "gamma": lambda: A.RandomGamma(gamma_limit=(80, 120), p=1.0),
        "rgb_shift": lambda: A.RGBShift(p=1.0),
        "hsv_shift": lambda: A.HueSaturationValue(p=1.0),
        "sharpen": lambda: A.Sharpen(p=1.0),
    }
    return table[name]()


# the reference's (DeblurGANv2 aug.py get_corrupt_function) names, applied to the blurred input only
CORRUPT_NAMES = ("cutout", "jpeg", "motion_blur", "median_blur", "gamma", "rgb_shift", "hsv_shift", "sharpen")


def check_corrupt(names: list[str]) -> None:
    """ValueError for any name not in ``CORRUPT_NAMES`` (with a did-you-mean hint)."""
    for name in names:
        if name not in CORRUPT_NAMES:
            close = difflib.get_close_matches(name, CORRUPT_NAMES, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"Unknown corrupt transform {name!r}.{hint} Valid: {list(CORRUPT_NAMES)}")


def _build_corrupt(names: list[str]):
    """One of the named albumentations transforms with probability 0.5 (as DeblurGANv2), or None."""
    check_corrupt(names)
    if not names:
        return None
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network version check on import
    import albumentations as A

    return A.Compose([A.OneOf([_corrupt_transform(n) for n in names], p=1.0)], p=0.5)


def _unit_hash(key: str) -> float:
    """Stable hash of ``key`` in [0, 1)."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2.0**64


def _split_key(name: str) -> str:
    """Split key of a relative file name: frame files ``<stem>_<6 digits>`` are grouped in blocks."""
    p = PurePosixPath(name)
    m = _FRAME_FILE.match(p.stem)
    if m:
        return f"{p.parent / m['stem']}#{int(m['frame']) // FRAME_BLOCK}"
    return name


def _in_bounds(key: str, bounds: tuple[float, float]) -> bool:
    h = _unit_hash(key)
    return bounds[0] <= h < bounds[1]  # h < 1, so hi = 1 takes everything above lo


def _glob_root(pattern: str) -> Path:
    """The leading components of a glob that contain no wildcard."""
    parts = Path(pattern).parts
    root: list[str] = []
    for part in parts:
        if glob.has_magic(part):
            break
        root.append(part)
    return Path(*root) if root else Path(".")


def _glob(pattern: str, exts: set[str] | None = None) -> list[Path]:
    files = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True))
    files = [f for f in files if f.is_file() and (exts is None or f.suffix.lower() in exts)]
    if not files:
        raise FileNotFoundError(
            f"No files match the glob {pattern!r} (cwd {os.getcwd()}). Check the path, or run "
            f"`python scripts/fetch_data.py` to populate data/."
        )
    return files


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to (H,W,3) uint8 RGB; ValueError naming the file if it cannot be read."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"Cannot read image {path}: missing, truncated or not an image. Remove or replace it.")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _shrink(img: np.ndarray, short_side: int) -> np.ndarray:
    h, w = img.shape[:2]
    if short_side <= 0 or min(h, w) <= short_side:
        return img
    s = short_side / min(h, w)
    return cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    """(H,W,3) uint8 RGB -> (3,H,W) float32 RGB in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
    return x.float().div_(127.5).sub_(1.0)


def _geometric(imgs: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """The same random flip (h/v) and 90-degree rotation applied to every image."""
    flip_h, flip_v, rot = rng.uniform() < 0.5, rng.uniform() < 0.5, int(rng.integers(4))
    out = []
    for img in imgs:
        if flip_h:
            img = img[:, ::-1]
        if flip_v:
            img = img[::-1]
        if rot:
            img = np.rot90(img, rot)
        out.append(np.ascontiguousarray(img))
    return out


def _crop_box(h: int, w: int, side: int, random: bool, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left (y, x) of a side x side crop inside h x w (random or centred)."""
    if random:
        return int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    return (h - side) // 2, (w - side) // 2


def _ensure_min_side(imgs: list[np.ndarray], side: int) -> list[np.ndarray]:
    """Upscale (bicubic, same factor for all) so the short side is at least ``side``."""
    h, w = imgs[0].shape[:2]
    if min(h, w) >= side:
        return imgs
    s = side / min(h, w)
    size = (max(side, math.ceil(w * s)), max(side, math.ceil(h * s)))
    return [cv2.resize(im, size, interpolation=cv2.INTER_CUBIC) for im in imgs]


class _Base(Dataset):
    def __init__(self, cfg: DataConfig, seed: int = 0):
        check_corrupt(cfg.corrupt)
        self.cfg = cfg
        self.seed = int(seed)
        self.epoch = 0
        self._corrupt = _build_corrupt(cfg.corrupt)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch for per-item randomness (ignored by centre-cropped datasets)."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        epoch = 0 if self.cfg.crop == "center" else self.epoch
        return np.random.default_rng([self.seed, epoch, int(index)])

    def _finish(self, blur: np.ndarray, sharp: np.ndarray, name: str, rng: np.random.Generator) -> dict:
        if self._corrupt is not None:
            self._corrupt.set_random_seed(int(rng.integers(2**31)))
            blur = self._corrupt(image=np.ascontiguousarray(blur))["image"]
        return {"blur": _to_tensor(blur), "sharp": _to_tensor(sharp), "name": name}


class PairedFolders(_Base):
    """Blurred/sharp pairs from two globs (``cfg.files_a`` blurred, ``cfg.files_b`` sharp), GoPro-style.

    Pairing rule: each file's key is its path relative to its glob's wildcard-free root, with every
    directory component that is a literal in one pattern but not in the other removed (``blur`` vs
    ``sharp`` in ``train/*/blur/*.png`` / ``train/*/sharp/*.png``, wherever it sits), and with the extension
    removed when the two patterns' file-name parts differ (``*.png`` vs ``*.jpg``). Equal keys pair up;
    unmatched files are a ValueError. Both images of a pair get the same crop and flips; ``corrupt``
    touches the blurred one only.
    """

    def __init__(self, cfg: DataConfig, seed: int = 0):
        super().__init__(cfg, seed)
        keys_a = self._keys(cfg.files_a, cfg.files_b)
        keys_b = self._keys(cfg.files_b, cfg.files_a)
        only_a = sorted(set(keys_a) - set(keys_b))
        only_b = sorted(set(keys_b) - set(keys_a))
        if only_a or only_b:
            raise ValueError(
                f"files_a {cfg.files_a!r} and files_b {cfg.files_b!r} do not pair up: "
                f"{len(only_a)} blurred without a sharp match (first: {only_a[:5]}), "
                f"{len(only_b)} sharp without a blurred match (first: {only_b[:5]}). Pairs are matched by "
                f"relative path with the blur/sharp directory names removed; fix the globs or the tree."
            )
        names = sorted(k for k in keys_a if _in_bounds(_split_key(k), cfg.bounds))
        if not names:
            raise ValueError(f"No pairs of {cfg.files_a!r} fall in bounds {cfg.bounds}; widen 'bounds'.")
        self.names = names
        self.files_a = [keys_a[k] for k in names]
        self.files_b = [keys_b[k] for k in names]
        self._cache: list[tuple[np.ndarray, np.ndarray]] | None = None
        if cfg.preload:
            self._cache = [self._load(i) for i in range(len(names))]
        logger.info("PairedFolders: %d pairs in bounds %s (of %d)", len(names), cfg.bounds, len(keys_a))

    @staticmethod
    def _keys(pattern: str, other: str) -> dict[str, Path]:
        files = _glob(pattern, IMAGE_EXTS)
        root = _glob_root(pattern)
        pat_parts = Path(pattern).parts[len(root.parts) :]
        other_parts = Path(other).parts[len(_glob_root(other).parts) :]
        only_here = {p for p in pat_parts[:-1] if not glob.has_magic(p)} - set(other_parts[:-1])
        strip_ext = bool(pat_parts and other_parts and pat_parts[-1] != other_parts[-1])
        keys: dict[str, Path] = {}
        for f in files:
            rel = f.relative_to(root) if root != Path(".") else f
            parts = [p for p in rel.parts[:-1] if p not in only_here]
            last = rel.stem if strip_ext else rel.name
            key = PurePosixPath(*parts, last).as_posix()
            if key in keys:
                raise ValueError(f"Glob {pattern!r}: {keys[key]} and {f} map to the same pair key {key!r}")
            keys[key] = f
        return keys

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        blur, sharp = read_rgb(self.files_a[i]), read_rgb(self.files_b[i])
        if blur.shape != sharp.shape:
            raise ValueError(
                f"Pair sizes differ: {self.files_a[i]} is {blur.shape[1]}x{blur.shape[0]}, "
                f"{self.files_b[i]} is {sharp.shape[1]}x{sharp.shape[0]}. Paired images must align."
            )
        if self.cfg.preload and self.cfg.preload_size > 0:
            blur, sharp = _shrink(blur, self.cfg.preload_size), _shrink(sharp, self.cfg.preload_size)
        return blur, sharp

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        rng = self._rng(index)
        blur, sharp = self._cache[index] if self._cache is not None else self._load(index)
        S = self.cfg.size
        scale = float(rng.uniform(*self.cfg.scale))
        src = max(1, round(S / scale))
        blur, sharp = _ensure_min_side([blur, sharp], src)
        y, x = _crop_box(*blur.shape[:2], src, self.cfg.crop == "random", rng)
        blur, sharp = blur[y : y + src, x : x + src], sharp[y : y + src, x : x + src]
        if src != S:
            interp = cv2.INTER_AREA if src > S else cv2.INTER_CUBIC
            blur, sharp = (cv2.resize(im, (S, S), interpolation=interp) for im in (blur, sharp))
        if self.cfg.flip:
            blur, sharp = _geometric([blur, sharp], rng)
        return self._finish(blur, sharp, self.names[index], rng)


class SyntheticBlur(_Base):
    """Sharp images and video frames from ``cfg.sources`` globs, blurred on the fly with ``cfg.blur``.

    Images (IMAGE_EXTS) are named by their path relative to their glob's root; videos (VIDEO_EXTS) are
    decoded with PyAV at construction (every ``video_frame_step``-th frame, kept in memory) and named
    ``<video>#<frame>``. Each item: random or centre crop of ``size + 2 * (kernel // 2)`` (after an optional
    random ``scale``), flips/rotations, blur, noise/JPEG, then the central ``size`` crop of both, so the
    blurred border never sees reflected content. ``len()`` is the number of images/frames in the split.
    """

    def __init__(self, cfg: DataConfig, seed: int = 0):
        super().__init__(cfg, seed)
        names: list[str] = []
        sources: list[Path | np.ndarray] = []
        seen_files: set[Path] = set()
        seen_names: set[str] = set()
        for pattern in cfg.sources:
            files = _glob(pattern, IMAGE_EXTS | VIDEO_EXTS)
            root = _glob_root(pattern)
            for f in files:
                if f.resolve() in seen_files:  # the same file matched by two globs
                    continue
                seen_files.add(f.resolve())
                rel = (f.relative_to(root) if root != Path(".") else f).as_posix()
                if rel in seen_names:  # another file of the same relative name under another root: keep both
                    rel = f.as_posix()
                seen_names.add(rel)
                if f.suffix.lower() in VIDEO_EXTS:
                    for frame_no, frame in self._decode_video(f, rel):
                        names.append(f"{rel}#{frame_no:06d}")
                        sources.append(frame)
                elif _in_bounds(_split_key(rel), cfg.bounds):
                    names.append(rel)
                    sources.append(read_rgb(f) if cfg.preload else f)
        if cfg.preload and cfg.preload_size > 0:
            sources = [_shrink(s, cfg.preload_size) if isinstance(s, np.ndarray) else s for s in sources]
        if not names:
            raise ValueError(f"No images of sources {cfg.sources} fall in bounds {cfg.bounds}; widen 'bounds'.")
        self.names = names
        self._sources = sources
        logger.info("SyntheticBlur: %d images/frames in bounds %s from %s", len(names), cfg.bounds, cfg.sources)

    def image(self, index: int) -> np.ndarray:
        """The whole sharp image ``index`` as (H,W,3) uint8 RGB (shrunk to ``preload_size`` when preloading)."""
        src = self._sources[index]
        return src if isinstance(src, np.ndarray) else read_rgb(src)

    def _decode_video(self, path: Path, rel: str) -> list[tuple[int, np.ndarray]]:
        import av

        step = self.cfg.video_frame_step
        frames = []
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for i, frame in enumerate(container.decode(stream)):
                    if i % step or not _in_bounds(f"{rel}#{i // FRAME_BLOCK}", self.cfg.bounds):
                        continue
                    frames.append((i, frame.to_ndarray(format="rgb24")))
        except (av.error.FFmpegError, IndexError) as e:
            raise ValueError(f"Cannot decode video {path}: {e}. Remove or replace it.") from e
        return frames

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        rng = self._rng(index)
        img = self.image(index)
        kernel, info = sample_kernel(self.cfg.blur, rng)
        S, pad = self.cfg.size, kernel.shape[0] // 2
        region = S + 2 * pad
        scale = float(rng.uniform(*self.cfg.scale))
        side = max(1, round(region / scale))
        (img,) = _ensure_min_side([img], side)
        y, x = _crop_box(*img.shape[:2], side, self.cfg.crop == "random", rng)
        sharp = img[y : y + side, x : x + side]
        if side != region:
            interp = cv2.INTER_AREA if side > region else cv2.INTER_CUBIC
            sharp = cv2.resize(sharp, (region, region), interpolation=interp)
        if self.cfg.flip:
            (sharp,) = _geometric([sharp], rng)
        blur, _ = synthesize(sharp, self.cfg.blur, rng, kernel, info, margin=pad)
        sharp = sharp[pad : pad + S, pad : pad + S]
        return self._finish(blur, np.ascontiguousarray(sharp), self.names[index], rng)


def build_dataset(cfg: DataConfig, seed: int = 0) -> PairedFolders | SyntheticBlur:
    """PairedFolders when ``cfg.files_a`` is set, else SyntheticBlur over ``cfg.sources``."""
    return PairedFolders(cfg, seed) if cfg.files_a else SyntheticBlur(cfg, seed)
