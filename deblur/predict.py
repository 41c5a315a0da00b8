"""Deblur images with an exported generator: the ``Deblurrer`` class and the ``python -m deblur.predict`` CLI.

``Deblurrer(weights)(frames_bgr)`` takes and returns ``list[np.ndarray (H,W,3) BGR uint8]``; frames of equal
size are batched together. Inside: BGR -> RGB -> float in [-1,1] -> generator (eval mode: batch-invariant)
-> [0,255] -> BGR, rounded, so an identity generator gives back the input exactly.

CLI::

    python -m deblur.predict photo.jpg frames/ "shots/**/*.png" --weights gen.pt --out restored/ --device auto

Without ``--out`` each result is written beside its input as ``<stem>_deblurred<ext>``; with ``--out DIR``
it gets the input's file name inside DIR.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import time
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
import torch
from torch import nn

from configs import IMAGE_EXTENSIONS
from deblur.archs.fpn_mobilenet_arch import STRIDE
from deblur.frames import SmallFrames, check_bgr_frames
from deblur.kernel_deblur import KernelDeblurConfig, KernelDeblurrer
from deblur.models import (
    DEFAULT_DEBLURRER,
    ESTIMATOR_FORMAT,
    file_format,
    load_generator,
)
from runtime import (
    PRECISIONS,
    RUNTIMES,
    TORCH_DTYPES,
    compile_module,
    resolve_amp,
    resolve_device,
    resolve_runtime,
)
from runtime.files import atomic_write_bytes

logger = logging.getLogger(__name__)

__all__ = ["Deblurrer", "IMAGE_EXTENSIONS", "load_deblurrer", "collect_images", "output_path", "read_image", "write_image", "main"]

OUTPUT_SUFFIX = "_deblurred"


class Deblurrer:
    """Reusable image/frame deblurrer around a generator in eval mode.

    Args:
        weights: exported generator file (``deblur.save_generator``); None -> ``deblur.models.DEFAULT_WEIGHTS``.
        device: 'auto' (CUDA if available, else CPU), 'cpu', 'cuda' or 'cuda:N'.
        channels_last: run the model in channels_last memory format (faster on CPU and GPU; same result).
        amp: 'fp32', 'bf16' (autocast bfloat16: ~2x faster on AMX/AVX512-bf16 CPUs and on GPUs,
            but ~10x SLOWER on CPUs without them, e.g. AVX2-only: it is emulated there), 'fp16' (autocast
            float16, CUDA only) or 'auto' (runtime.resolve_amp: the policy's choice for the runtime and device).
            ``self.amp`` is the resolved name. 'none' is a deprecated alias of 'fp32'.
        max_batch: frames of one size are run at most this many at a time.
        expect_name: if set, the weights must hold this generator architecture.
        runtime: 'torch' (eager, this class's own path), 'torch_compile', 'onnxruntime', 'openvino' (CPU) or
            'auto' (the fastest available: openvino on CPU, torch with CUDA graphs on CUDA); see runtime/.
            Non-torch runtimes pad to a multiple of 32 outside the exported graph and crop back.
        threads: intra-op threads of onnxruntime/openvino (0 = torch.get_num_threads()).
        cache_dir: where exports are cached (None = $BLURDET_CACHE or ~/.cache/blurdet).
    """

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        device: str | torch.device = "auto",
        channels_last: bool = True,
        amp: str = "fp32",
        max_batch: int = 8,
        expect_name: str | None = None,
        runtime: str = "torch",
        threads: int = 0,
        cache_dir: str | os.PathLike | None = None,
    ):
        dev = resolve_device(device)
        model, cfg = load_generator(weights, device=dev, expect_name=expect_name)
        self._setup(model, dev, channels_last, amp, max_batch, runtime, threads, cache_dir)
        self.cfg = cfg

    @classmethod
    def from_model(
        cls, model: nn.Module, device: str | torch.device = "auto", channels_last: bool = True, amp: str = "fp32",
        max_batch: int = 8, runtime: str = "torch", threads: int = 0, cache_dir: str | os.PathLike | None = None,
    ) -> "Deblurrer":
        """Wrap an already built generator (it is moved to ``device`` and put in eval mode)."""
        self = cls.__new__(cls)
        dev = resolve_device(device)
        self._setup(model.to(dev), dev, channels_last, amp, max_batch, runtime, threads, cache_dir)
        self.cfg = None
        return self

    def _setup(self, model: nn.Module, device: torch.device, channels_last: bool, amp: str, max_batch: int,
               runtime: str = "torch", threads: int = 0, cache_dir: str | os.PathLike | None = None) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"Unknown runtime '{runtime}'. Available: {list(RUNTIMES)}")
        if max_batch < 1:
            raise ValueError(f"'max_batch' must be >= 1, got {max_batch}")
        # the one precision policy for the runtime that will run: 'auto' resolved, fp16 off CUDA an error,
        # bf16 where it is emulated a warning
        amp = resolve_amp(amp, device, resolve_runtime(runtime, device))
        self.device = device
        self._small = SmallFrames(STRIDE, "the generator's smallest input")
        self.channels_last = channels_last
        self.amp = amp
        self.max_batch = max_batch
        self.model = model.eval()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.runtime = resolve_runtime(runtime, device)
        self.engine = None  # runtime.CompiledModule when not eager torch on the CPU
        if self.runtime != "torch" or device.type == "cuda":
            self.engine = compile_module(self.model, None, self.runtime, device, amp, cache_dir=cache_dir,
                                         threads=threads, spatial_multiple=32, pad_mode="reflect")
            logger.info("Deblurrer runtime: %s", self.engine.name)

    # --- stages -------------------------------------------------------------------------------------
    def preprocess(self, frames_bgr: Sequence[np.ndarray]) -> torch.Tensor:
        """list of (H,W,3) BGR uint8 frames of one size -> (B,3,H,W) RGB float in [-1,1] on the device."""
        batch = np.stack([np.ascontiguousarray(f[..., ::-1]) for f in frames_bgr])  # BGR -> RGB, (B,H,W,3)
        x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float()
        x = x / 127.5 - 1.0
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)

    @torch.inference_mode()
    def restore(self, blur: torch.Tensor) -> torch.Tensor:
        """blur (B,3,H,W) RGB float in [-1,1] on the device -> restored, same layout, float32 in [-1,1]. Frames
        smaller than 32x32 are run mirror-padded and cropped back (counted in ``small_frames``, logged once)."""
        blur, crop = self._small.pad(blur)
        if self.engine is not None:
            return crop(self.engine(blur).clamp_(-1.0, 1.0))
        if self.amp == "fp32":
            return crop(self.model(blur).float())
        with torch.autocast(device_type=self.device.type, dtype=TORCH_DTYPES[self.amp]):
            return crop(self.model(blur).float())

    @property
    def small_frames(self) -> int:
        """Frames smaller than the generator's 32x32 minimum, deblurred padded."""
        return self._small.count

    @staticmethod
    def postprocess(restored: torch.Tensor) -> list[np.ndarray]:
        """(B,3,H,W) RGB float in [-1,1] -> list of (H,W,3) BGR uint8 (rounded, clipped)."""
        img = ((restored.float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
        img = img.permute(0, 2, 3, 1).cpu().numpy()  # (B,H,W,3) RGB
        return [np.ascontiguousarray(f[..., ::-1]) for f in img]

    def __call__(self, frames_bgr: Sequence[np.ndarray]) -> list[np.ndarray]:
        """frames_bgr: list of (H,W,3) BGR uint8 -> deblurred frames, same order, shapes and dtype."""
        check_bgr_frames(frames_bgr)
        results: list[np.ndarray | None] = [None] * len(frames_bgr)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, f in enumerate(frames_bgr):
            by_shape.setdefault(f.shape, []).append(i)
        for indices in by_shape.values():
            for start in range(0, len(indices), self.max_batch):
                chunk = indices[start:start + self.max_batch]
                restored = self.postprocess(self.restore(self.preprocess([frames_bgr[i] for i in chunk])))
                for i, out in zip(chunk, restored):
                    results[i] = out
        return results  # type: ignore[return-value]

    def warmup(self, height: int = 360, width: int = 640) -> None:
        """One forward pass on a grey frame (first-call allocations, oneDNN/cuDNN kernel selection)."""
        self([np.full((height, width, 3), 128, np.uint8)])


def load_deblurrer(weights: str | os.PathLike, device: str | torch.device = "auto",
                   kernel: KernelDeblurConfig | None = None, **generator_options) -> Deblurrer | KernelDeblurrer:
    """The deblurrer a weights file describes: a kernel estimator file gives a ``KernelDeblurrer`` (options
    ``kernel``), a generator file a ``Deblurrer`` (``generator_options``: runtime, threads, amp, ...). Both
    map a list of (H,W,3) BGR uint8 frames to the deblurred frames."""
    if file_format(weights) == ESTIMATOR_FORMAT:
        return KernelDeblurrer(weights, device=device, cfg=kernel, runtime=generator_options.get("runtime", "torch"),
                               threads=generator_options.get("threads", 0))
    return Deblurrer(weights, device=device, **generator_options)


# --- files ------------------------------------------------------------------------------------------
def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.stem.endswith(OUTPUT_SUFFIX)


def collect_images(inputs: Iterable[str]) -> list[Path]:
    """Expand files, directories (their images, not recursive) and globs into a list of image paths.

    Files named ``*_deblurred.*`` found in directories or globs are skipped (they are our outputs).
    Raises FileNotFoundError naming the missing file, the empty glob or the directory without images.
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if _is_image(p))
            if not images:
                raise FileNotFoundError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) in directory {path}")
        elif path.is_file():
            images = [path]
        elif glob.has_magic(item):
            images = sorted(p for p in map(Path, glob.glob(item, recursive=True)) if _is_image(p))
            if not images:
                raise FileNotFoundError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) match the glob {item!r}")
        else:
            raise FileNotFoundError(f"Image not found: {item}")
        found.extend(images)
    unique = {p.resolve(): p for p in reversed(found)}  # first occurrence wins, order kept below
    return [p for p in dict.fromkeys(unique[q.resolve()] for q in found)]


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as (H,W,3) BGR uint8; ValueError naming the file if it cannot be decoded."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)  # cv2.imread cannot report why, and fails on some paths
    except OSError as e:
        raise FileNotFoundError(f"Cannot open image {path}: {e}") from e
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise ValueError(f"Cannot read image {path}: not an image or an unsupported format")
    return img


def write_image(path: str | os.PathLike, image_bgr: np.ndarray) -> None:
    """Write (H,W,3) BGR uint8 to ``path`` (format from the extension) atomically."""
    path = Path(path)
    ok, buf = cv2.imencode(path.suffix, image_bgr)
    if not ok:
        raise ValueError(f"Cannot encode an image as {path.suffix!r} for {path}; use .png or .jpg")
    atomic_write_bytes(path, buf.tobytes())


def output_path(image: Path, out_dir: Path | None) -> Path:
    """``out_dir/<name>`` with --out, else ``<stem>_deblurred<ext>`` beside the input."""
    if out_dir is not None:
        return out_dir / image.name
    return image.with_name(f"{image.stem}{OUTPUT_SUFFIX}{image.suffix}")


# --- CLI --------------------------------------------------------------------------------------------
def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m deblur.predict",
        description="Deblur images with an exported generator. Inputs: image files, directories or globs.",
    )
    parser.add_argument("inputs", nargs="+", metavar="IMG_OR_DIR_OR_GLOB")
    parser.add_argument("--weights", default=None,
                        help="kernel estimator or generator file (default: deblur/weights/kernel_estimator.pt)")
    parser.add_argument("--out", default=None, help="output directory (default: beside each input as <stem>_deblurred<ext>)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--amp", default="fp32", choices=PRECISIONS,
                        help="precision: auto = the policy's choice for the runtime and device (default: fp32)")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                        help="keep the default NCHW memory format")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    parser.add_argument("--runtime", default="auto", choices=RUNTIMES,
                        help="inference runtime (default: auto = the fastest available here)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> list[Path]:
    """Deblur every input of ``args``; returns the written paths."""
    images = collect_images(args.inputs)
    out_dir = Path(args.out) if args.out else None
    outputs = [output_path(p, out_dir) for p in images]
    clashes = {o for o in outputs if outputs.count(o) > 1}
    if clashes:
        names = [str(p) for p, o in zip(images, outputs) if o in clashes]
        raise ValueError(f"Inputs {names} would all be written to the same file in {out_dir}; "
                         "run them separately or omit --out to write beside each input")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    deblurrer = load_deblurrer(args.weights or str(DEFAULT_DEBLURRER), device=args.device, channels_last=args.channels_last,
                               amp=args.amp, runtime=args.runtime, threads=args.threads)
    logger.info("Deblurring %d image(s) on %s (amp=%s)", len(images), deblurrer.device, args.amp)
    for src, dst in zip(images, outputs):
        frame_bgr = read_image(src)
        t0 = time.perf_counter()
        (restored,) = deblurrer([frame_bgr])
        logger.info("%s (%dx%d): %.0f ms -> %s", src, frame_bgr.shape[1], frame_bgr.shape[0],
                    (time.perf_counter() - t0) * 1e3, dst)
        write_image(dst, restored)
    return outputs


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 ok, 1 bad input or weights)."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        written = run(args)
    except (FileNotFoundError, ValueError) as e:
        logger.error("%s", e)
        return 1
    print("\n".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
