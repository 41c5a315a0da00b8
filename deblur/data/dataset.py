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
item is read): a broken file in the corpus is a bug to fix, not to skip silently. In a WebDataset shard,
one bad sample (undecodable, or a pair missing its other half) is logged, skipped and counted instead; a
truncated shard raises ``deblur.data.shards.ShardError``.

Remote data: every glob may be an fsspec URL (``s3://bucket/gopro/train/*/blur/*.png``); pairing, the hash
split and ``bounds`` work on the part after the bucket exactly as on a local path. See ``runtime.remote``.

Shards: ``cfg.shards`` lists WebDataset tar shards (``deblur.data.shards``). With ``preload`` they are read
once into memory (``ShardItems``, a map-style dataset like the others); otherwise ``ShardStream`` streams
them: in training each reader (DDP rank x DataLoader worker) draws shards with replacement, endlessly and at
the same rate whatever the shard count, and shuffles samples in a ``shuffle_buffer``.
"""

from __future__ import annotations

import glob
import hashlib
import io
import logging
import math
import multiprocessing
import os
import random
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from configs import did_you_mean
from deblur.data.blur_synth import sample_kernel, synthesize
from deblur.config import DataConfig
from deblur.data.shards import checked, iter_shard, load_manifests, reader_shards, resolve_shards
from runtime.remote import Remote, is_url, mask_url, strip_protocol

logger = logging.getLogger(__name__)

__all__ = [
    "CORRUPT_NAMES",
    "IMAGE_EXTS",
    "VIDEO_EXTS",
    "PairedFolders",
    "ShardItems",
    "ShardStream",
    "SyntheticBlur",
    "batch_loader",
    "build_dataset",
    "collate",
    "glob_files",
    "relative_name",
    "stream_loader",
]

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
            raise ValueError(f"Unknown corrupt transform {name!r}.{did_you_mean(name, CORRUPT_NAMES)} "
                             f"Valid: {list(CORRUPT_NAMES)}")


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


def _parts(pattern: str) -> tuple[str, ...]:
    """Path components of a local path or of a URL's part after ``scheme://`` (bucket first)."""
    return PurePosixPath(strip_protocol(pattern)[1]).parts if is_url(pattern) else Path(pattern).parts


def _root_parts(pattern: str) -> tuple[str, ...]:
    """The leading components of a glob that contain no wildcard."""
    root: list[str] = []
    for part in _parts(pattern):
        if glob.has_magic(part):
            break
        root.append(part)
    return tuple(root)


def _glob_root(pattern: str) -> Path:
    """The leading components of a local glob that contain no wildcard."""
    root = _root_parts(pattern)
    return Path(*root) if root else Path(".")


def relative_name(f: Path | str, pattern: str) -> PurePosixPath:
    """``f`` (a match of ``pattern``) relative to the pattern's wildcard-free root."""
    if isinstance(f, str):  # a URL
        return PurePosixPath(*PurePosixPath(strip_protocol(f)[1]).parts[len(_root_parts(pattern)):])
    root = _glob_root(pattern)
    return PurePosixPath((f.relative_to(root) if root != Path(".") else f).as_posix())


def glob_files(pattern: str, exts: set[str] | None = None, remote: Remote | None = None) -> list[Path | str]:
    """Sorted matches of a local glob (Paths) or of an fsspec URL glob (URL strings)."""
    if is_url(pattern):
        return (remote or Remote()).glob(pattern, exts)
    files = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True))
    files = [f for f in files if f.is_file() and (exts is None or f.suffix.lower() in exts)]
    if not files:
        raise FileNotFoundError(
            f"No files match the glob {pattern!r} (cwd {os.getcwd()}). Check the path, or run "
            f"`python scripts/fetch_data.py` to populate data/."
        )
    return files


def decode_rgb(data: bytes, name: str) -> np.ndarray:
    """Decode encoded image bytes to (H,W,3) uint8 RGB; ValueError naming ``name`` if they are not an image."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if img is None:
        raise ValueError(f"Cannot read image {mask_url(name)}: missing, truncated or not an image. Remove or replace it.")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_rgb(path: str | Path, remote: Remote | None = None) -> np.ndarray:
    """Decode an image file or URL to (H,W,3) uint8 RGB; ValueError naming the file if it cannot be read."""
    if isinstance(path, str) and is_url(path):
        return decode_rgb((remote or Remote()).read(path), path)
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
        self.remote = Remote(cfg.timeout, cfg.retries, cfg.cache_dir, cfg.cache_gb)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch for per-item randomness (ignored by centre-cropped datasets)."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        epoch = 0 if self.cfg.crop == "center" else self.epoch
        return np.random.default_rng([self.seed, epoch, int(index)])

    def _finish(self, blur: np.ndarray, sharp: np.ndarray, name: str, rng: np.random.Generator,
                kernel: np.ndarray | None = None) -> dict:
        if self._corrupt is not None:
            self._corrupt.set_random_seed(int(rng.integers(2**31)))
            blur = self._corrupt(image=np.ascontiguousarray(blur))["image"]
        item = {"blur": _to_tensor(blur), "sharp": _to_tensor(sharp), "name": name}
        if kernel is not None:  # synthetic blur: the true kernel (a refiner can train on perturbed true kernels)
            item["kernel"] = torch.from_numpy(np.ascontiguousarray(kernel, dtype=np.float32))
        return item

    def _paired_item(self, blur: np.ndarray, sharp: np.ndarray, name: str, rng: np.random.Generator) -> dict:
        """Same crop (after a random ``scale``), flips and rotation of an aligned blurred/sharp pair."""
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
        return self._finish(blur, sharp, name, rng)

    def _synthetic_item(self, img: np.ndarray, name: str, rng: np.random.Generator) -> dict:
        """Crop a sharp image with a margin, blur it with a sampled kernel, keep the centre of both."""
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
        return self._finish(blur, np.ascontiguousarray(sharp), name, rng, kernel)

    def _check_pair_shapes(self, blur: np.ndarray, sharp: np.ndarray, name_a: str, name_b: str) -> None:
        if blur.shape != sharp.shape:
            raise ValueError(
                f"Pair sizes differ: {mask_url(name_a)} is {blur.shape[1]}x{blur.shape[0]}, "
                f"{mask_url(name_b)} is {sharp.shape[1]}x{sharp.shape[0]}. Paired images must align."
            )


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
                f"files_a {mask_url(cfg.files_a)!r} and files_b {mask_url(cfg.files_b)!r} do not pair up: "
                f"{len(only_a)} blurred without a sharp match (first: {only_a[:5]}), "
                f"{len(only_b)} sharp without a blurred match (first: {only_b[:5]}). Pairs are matched by "
                f"relative path with the blur/sharp directory names removed; fix the globs or the tree."
            )
        names = sorted(k for k in keys_a if _in_bounds(_split_key(k), cfg.bounds))
        if not names:
            raise ValueError(f"No pairs of {mask_url(cfg.files_a)!r} fall in bounds {cfg.bounds}; widen 'bounds'.")
        self.names = names
        self.files_a = [keys_a[k] for k in names]
        self.files_b = [keys_b[k] for k in names]
        self._cache: list[tuple[np.ndarray, np.ndarray]] | None = None
        if cfg.preload:
            self._cache = [self._load(i) for i in range(len(names))]
        logger.info("PairedFolders: %d pairs in bounds %s (of %d)", len(names), cfg.bounds, len(keys_a))

    def _keys(self, pattern: str, other: str) -> dict[str, Path | str]:
        files = glob_files(pattern, IMAGE_EXTS, self.remote)
        pat_parts = _parts(pattern)[len(_root_parts(pattern)) :]
        other_parts = _parts(other)[len(_root_parts(other)) :]
        only_here = {p for p in pat_parts[:-1] if not glob.has_magic(p)} - set(other_parts[:-1])
        strip_ext = bool(pat_parts and other_parts and pat_parts[-1] != other_parts[-1])
        keys: dict[str, Path | str] = {}
        for f in files:
            rel = relative_name(f, pattern)
            parts = [p for p in rel.parts[:-1] if p not in only_here]
            last = rel.stem if strip_ext else rel.name
            key = PurePosixPath(*parts, last).as_posix()
            if key in keys:
                raise ValueError(f"Glob {mask_url(pattern)!r}: {mask_url(str(keys[key]))} and {mask_url(str(f))} map "
                                 f"to the same pair key {key!r}")
            keys[key] = f
        return keys

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        blur, sharp = read_rgb(self.files_a[i], self.remote), read_rgb(self.files_b[i], self.remote)
        self._check_pair_shapes(blur, sharp, str(self.files_a[i]), str(self.files_b[i]))
        if self.cfg.preload and self.cfg.preload_size > 0:
            blur, sharp = _shrink(blur, self.cfg.preload_size), _shrink(sharp, self.cfg.preload_size)
        return blur, sharp

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        rng = self._rng(index)
        blur, sharp = self._cache[index] if self._cache is not None else self._load(index)
        return self._paired_item(blur, sharp, self.names[index], rng)


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
        sources: list[Path | str | np.ndarray] = []
        seen_files: set[Path | str] = set()
        seen_names: set[str] = set()
        for pattern in cfg.sources:
            files = glob_files(pattern, IMAGE_EXTS | VIDEO_EXTS, self.remote)
            for f in files:
                ident = f if isinstance(f, str) else f.resolve()
                if ident in seen_files:  # the same file matched by two globs
                    continue
                seen_files.add(ident)
                rel = relative_name(f, pattern).as_posix()
                if rel in seen_names:  # another file of the same relative name under another root: keep both
                    rel = mask_url(f) if isinstance(f, str) else f.as_posix()
                seen_names.add(rel)
                if PurePosixPath(str(f)).suffix.lower() in VIDEO_EXTS:
                    for frame_no, frame in self._decode_video(f, rel):
                        names.append(f"{rel}#{frame_no:06d}")
                        sources.append(frame)
                elif _in_bounds(_split_key(rel), cfg.bounds):
                    names.append(rel)
                    sources.append(read_rgb(f, self.remote) if cfg.preload else f)
        if cfg.preload and cfg.preload_size > 0:
            sources = [_shrink(s, cfg.preload_size) if isinstance(s, np.ndarray) else s for s in sources]
        if not names:
            raise ValueError(f"No images of sources {cfg.masked().sources} fall in bounds {cfg.bounds}; widen 'bounds'.")
        self.names = names
        self._sources = sources
        logger.info("SyntheticBlur: %d images/frames in bounds %s from %s", len(names), cfg.bounds, cfg.masked().sources)

    def image(self, index: int) -> np.ndarray:
        """The whole sharp image ``index`` as (H,W,3) uint8 RGB (shrunk to ``preload_size`` when preloading)."""
        src = self._sources[index]
        return src if isinstance(src, np.ndarray) else read_rgb(src, self.remote)

    def _decode_video(self, path: Path | str, rel: str) -> list[tuple[int, np.ndarray]]:
        import av

        step = self.cfg.video_frame_step
        frames = []
        remote = isinstance(path, str) and is_url(path)
        try:
            with av.open(io.BytesIO(self.remote.read(path)) if remote else str(path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for i, frame in enumerate(container.decode(stream)):
                    if i % step or not _in_bounds(f"{rel}#{i // FRAME_BLOCK}", self.cfg.bounds):
                        continue
                    frames.append((i, frame.to_ndarray(format="rgb24")))
        except (av.error.FFmpegError, IndexError) as e:
            raise ValueError(f"Cannot decode video {mask_url(str(path))}: {e}. Remove or replace it.") from e
        return frames

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        return self._synthetic_item(self.image(index), self.names[index], self._rng(index))



# ----------------------------------------------------------------------------- WebDataset shards
def _image_of(sample: dict[str, bytes], role: str) -> tuple[str, bytes] | None:
    """The ``<role>.<image ext>`` member of a shard sample, as (ext, bytes), or None."""
    for ext, data in sample.items():
        head, _, tail = ext.partition(".")
        if head == role and f".{tail}" in IMAGE_EXTS:
            return ext, data
    return None


def _key_seed(key: str) -> int:
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big")


class _ShardBase(_Base):
    """What shard datasets share: shard listing and decoding one sample into a training item."""

    def __init__(self, cfg: DataConfig, seed: int = 0):
        super().__init__(cfg, seed)
        self.shards = resolve_shards(cfg.shards, self.remote)
        self.expected = load_manifests(self.shards, self.remote)  # shard -> (bytes, sha256) of its manifest
        self.skipped = 0  # bad samples skipped (in this process)

    def _samples(self, shards: Iterable[str]):
        """(name, sample, shard) of every in-bounds sample of ``shards``, in order, streamed. The name is the
        sample's ``name.txt`` member when it has one (scripts/make_shards.py writes the source file's relative
        name there, so names and the hash split equal the folder's), else its key. Every shard is checked at
        its end (``deblur.data.shards``); ``shards`` may be endless."""
        dry = 0  # shards in a row without a sample in bounds
        for shard in shards:
            try:
                f = self.remote.open_stream(shard, checked(self.expected.get(shard), shard))
            except FileNotFoundError as e:
                raise FileNotFoundError(f"Shard {mask_url(shard)} does not exist: {e}") from e
            dry += 1
            with f:
                for key, sample in iter_shard(f, shard):
                    name = sample["name.txt"].decode("utf-8", "replace") if "name.txt" in sample else key
                    if _in_bounds(_split_key(name), self.cfg.bounds):
                        dry = 0
                        yield name, sample, shard
            if dry > 20 * len(self.shards):
                raise ValueError(f"{dry} shards in a row of {[mask_url(s) for s in self.shards[:5]]}... hold no "
                                 f"sample in bounds {self.cfg.bounds}; widen 'bounds'.")

    def _decode(self, key: str, sample: dict[str, bytes], shard: str) -> tuple[np.ndarray | None, np.ndarray] | None:
        """(blur or None, sharp) as (H,W,3) uint8 RGB; None (logged and counted) for a bad sample."""
        sharp, blur = _image_of(sample, "sharp"), _image_of(sample, "blur")
        try:
            if sharp is None:
                raise ValueError(f"no sharp.<image ext> member (members: {sorted(sample)})")
            sharp_img = decode_rgb(sharp[1], f"{shard}:{key}.{sharp[0]}")
            blur_img = decode_rgb(blur[1], f"{shard}:{key}.{blur[0]}") if blur is not None else None
            if blur_img is not None:
                self._check_pair_shapes(blur_img, sharp_img, f"{key}.{blur[0]}", f"{key}.{sharp[0]}")
        except ValueError as e:
            self.skipped += 1
            logger.warning("Shard %s: sample %r skipped (%s); %d bad samples skipped so far",
                           mask_url(shard), key, e, self.skipped)
            return None
        return blur_img, sharp_img

    def _item(self, blur: np.ndarray | None, sharp: np.ndarray, name: str, rng: np.random.Generator) -> dict:
        if blur is None:
            return self._synthetic_item(sharp, name, rng)
        return self._paired_item(blur, sharp, name, rng)


class ShardItems(_ShardBase):
    """WebDataset shards read once into memory (``preload``): a map-style dataset like PairedFolders.

    Pairs (``NAME.blur.*`` + ``NAME.sharp.*``) are cropped like PairedFolders, sharp-only samples are blurred
    like SyntheticBlur. Items are named by their sample key.
    """

    def __init__(self, cfg: DataConfig, seed: int = 0):
        super().__init__(cfg, seed)
        self.names: list[str] = []
        self._images: list[tuple[np.ndarray | None, np.ndarray]] = []
        for key, sample, shard in self._samples(self.shards):
            pair = self._decode(key, sample, shard)
            if pair is None:
                continue
            if cfg.preload_size > 0:
                pair = tuple(_shrink(im, cfg.preload_size) if im is not None else None for im in pair)
            self.names.append(key)
            self._images.append(pair)
        if not self.names:
            raise ValueError(f"No samples of shards {cfg.masked().shards} fall in bounds {cfg.bounds}; widen 'bounds'.")
        logger.info("ShardItems: %d samples in bounds %s from %d shards (%d bad, skipped)",
                    len(self.names), cfg.bounds, len(self.shards), self.skipped)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        blur, sharp = self._images[index]
        return self._item(blur, sharp, self.names[index], self._rng(index))


class ShardStream(_ShardBase, IterableDataset):
    """WebDataset shards streamed: an IterableDataset of items, split across DDP ranks and DataLoader workers.

    Reader ``(rank, worker)`` reads the shards ``deblur.data.shards.reader_shards`` deals it: with ``loop``
    (training) an endless draw with replacement (webdataset's ``ResampledShards``), so every rank streams at
    the same rate for any shard count; without it one pass, every shard once across all readers. Samples
    pass webdataset's ``shuffle`` buffer of ``shuffle_buffer`` seeded by (seed, epoch, rank, worker), and
    item ``n`` of a reader draws its crop and blur from (seed, epoch, key, n; n = 0 in one pass). So the
    stream is the same for the same seed, world size and worker count. ``rank``/``world`` default to
    webdataset's reading of ``RANK``/``WORLD_SIZE`` or the process group.

    ``skip_batches`` and ``batch_size`` resume a DataLoader over this stream at a global batch b: the
    DataLoader takes batches from its workers in turn, starting with worker 0, so worker w plays the part
    of worker ``(w + b) % W`` of the uninterrupted run and drops the items of that worker's batches before
    b. Dropped items are decoded (a bad sample fills no batch slot, so only decoding tells which samples
    count) but not cropped or blurred.
    """

    def __init__(self, cfg: DataConfig, seed: int = 0, rank: int | None = None, world: int | None = None,
                 loop: bool = False):
        super().__init__(cfg, seed)
        if rank is None:
            import webdataset as wds

            rank, world = wds.utils.pytorch_worker_info()[:2]
        self.rank, self.world, self.loop = int(rank), int(world or 1), loop
        if len(self.shards) < self.world and not loop:
            raise ValueError(
                f"{len(self.shards)} shards for {self.world} DDP ranks: in one pass every rank needs at least one "
                f"shard. Write more, smaller shards (scripts/make_shards.py --samples-per-shard) or set preload=true."
            )
        self.skip_batches, self.batch_size = 0, 1
        logger.info("ShardStream: %d shards, rank %d of %d, shuffle buffer %d, %s", len(self.shards), self.rank,
                    self.world, cfg.shuffle_buffer, "resampled" if loop else "one pass")

    def __iter__(self):
        import webdataset as wds

        info = get_worker_info()
        workers = info.num_workers if info is not None else 1
        role = ((info.id if info is not None else 0) + self.skip_batches) % workers  # the worker it continues
        epoch = 0 if self.cfg.crop == "center" else self.epoch
        samples = self._samples(reader_shards(self.shards, self.seed + 1_000_003 * epoch, self.rank, self.world,
                                              role, workers, self.loop))
        size = self.cfg.shuffle_buffer if self.cfg.crop == "random" else 0
        if size > 1:
            rng = random.Random(wds.utils.make_seed(self.seed, epoch, self.rank, role))
            samples = wds.shuffle(size, initial=size, rng=rng)(samples)
        skip = max(0, (self.skip_batches - role + workers - 1) // workers) * self.batch_size
        n = 0
        for key, sample, shard in samples:
            pair = self._decode(key, sample, shard)
            if pair is None:
                continue
            n += 1
            if skip:
                skip -= 1
                continue
            rng = np.random.default_rng([self.seed, epoch, _key_seed(key), n if self.loop else 0])
            yield self._item(*pair, key, rng)


def build_dataset(cfg: DataConfig, seed: int = 0) -> PairedFolders | SyntheticBlur | ShardItems | ShardStream:
    """PairedFolders when ``cfg.files_a`` is set; else, for ``cfg.shards``, ShardItems (``preload``, or a
    centre-cropped validation split) or a looping ShardStream; else SyntheticBlur over ``cfg.sources``."""
    if cfg.files_a:
        return PairedFolders(cfg, seed)
    if cfg.shards:
        return ShardItems(cfg, seed) if cfg.preload or cfg.crop == "center" else ShardStream(cfg, seed, loop=True)
    return SyntheticBlur(cfg, seed)


# ----------------------------------------------------------------------------- batches (DataLoader workers)
def collate(items: list[dict]) -> dict:
    """Items -> ``{"blur","sharp": (B,3,S,S) RGB float32 [-1,1], "name": list[str]}``, and ``"kernel"`` (B,K,K)
    when every item has its true kernel (synthetic blur), each zero-padded about its centre to the largest side."""
    batch = {
        "blur": torch.stack([it["blur"] for it in items]),
        "sharp": torch.stack([it["sharp"] for it in items]),
        "name": [it["name"] for it in items],
    }
    if items and all("kernel" in it for it in items):
        side = max(max(it["kernel"].shape) for it in items)

        def centred(k: torch.Tensor) -> torch.Tensor:
            (top, left), (h, w) = ((side - n) // 2 for n in k.shape), k.shape
            return F.pad(k, [left, side - w - left, top, side - h - top])

        batch["kernel"] = torch.stack([centred(it["kernel"]) for it in items])
    return batch


class KeyedBatches(Dataset):
    """A map-style dataset's batches as items: ``self[(key, indices)]`` is the collated batch of
    ``dataset[i] for i in indices`` drawn at ``set_epoch(key)``. A batch depends only on (seed, key,
    indices), so it is the same in the main process and in any DataLoader worker."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __getitem__(self, task: tuple[int, list[int]]) -> dict:
        key, indices = task
        self.dataset.set_epoch(key)
        return collate([self.dataset[i] for i in indices])


def _workers_context(num_workers: int):
    """How DataLoader workers start: from a fork server that has imported torch and this module and runs no
    threads, not forked from this process. A process that has run OpenVINO, ONNX Runtime or torch has threads
    whose locks a forked child inherits as they were, held ones included, and then waits on forever
    (tests/test_dataset.py holds one while workers start). The fork server costs a pickled copy of the dataset per
    worker and epoch (the 125 preloaded training photos: 143 MB, 0.02 s to pickle)."""
    if num_workers <= 0:
        return None
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "cv2", __name__])
    return ctx


def batch_loader(dataset: Dataset, tasks: list[tuple[int, list[int]]], num_workers: int = 0,
                 pin_memory: bool = False, seed: int = 0) -> torch.utils.data.DataLoader:
    """Batches of a map-style dataset, in the order of ``tasks`` [(key, indices)], decoded, cropped and
    blurred in ``num_workers`` processes (0 = this one). ``seed`` seeds the loader's own generator, so the
    global torch RNG is not touched."""
    return torch.utils.data.DataLoader(
        KeyedBatches(dataset), sampler=tasks, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed), multiprocessing_context=_workers_context(num_workers),
    )


def stream_loader(stream: ShardStream, batch_size: int, num_workers: int = 0, skip_batches: int = 0,
                  pin_memory: bool = False, seed: int = 0) -> torch.utils.data.DataLoader:
    """Batches of a ShardStream, starting at global batch ``skip_batches`` (resume), read, decoded and
    blurred in ``num_workers`` processes (0 = this one)."""
    stream.batch_size, stream.skip_batches = int(batch_size), int(skip_batches)
    return torch.utils.data.DataLoader(
        stream, batch_size=batch_size, collate_fn=collate, num_workers=num_workers, pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed), multiprocessing_context=_workers_context(num_workers),
    )
