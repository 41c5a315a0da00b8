"""Write a local image folder as WebDataset shards (tar files) with a manifest, for object storage.

    # blurred/sharp pairs (matched as train.files_a/files_b match them)
    python scripts/make_shards.py --blur 'data/gopro/train/*/blur/*.png' --sharp 'data/gopro/train/*/sharp/*.png' --out shards/gopro
    # sharp images only (synthetic blur at training time)
    python scripts/make_shards.py --sharp 'data/train/**/*.jpg' --out shards/photos

Each sample is ``<key>.blur.<ext>`` + ``<key>.sharp.<ext>`` (or ``<key>.sharp.<ext>`` alone) + ``<key>.name.txt``
(the file's relative name, so names and the train/val hash split equal the folder's). Image bytes are
copied as they are (no re-encoding). Shards are ``shard-000000.tar`` ... of ``--samples-per-shard``
samples, written under a temporary name and renamed; ``manifest.json`` lists each shard's sample count,
size and sha256. Upload the folder with your storage's tool (``aws s3 sync shards/gopro s3://bucket/gopro``)
and train with ``'train.shards=["s3://bucket/gopro/shard-{000000..000009}.tar"]' train.preload=false``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import sys
import tarfile
from pathlib import Path, PurePosixPath

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from deblur.config import DataConfig
from deblur.data.dataset import IMAGE_EXTS, PairedFolders, _glob, _relative
from runtime.remote import Remote
from runtime.files import atomic_write_text, file_sha256

logger = logging.getLogger("make_shards")
MANIFEST_FORMAT = "deblur-webdataset/1"


def _key(name: str, index: int) -> str:
    """A WebDataset key for a relative name: no dots (they start the extension), unique by its index."""
    stem = str(PurePosixPath(name).with_suffix(""))
    return f"{index:07d}_" + re.sub(r"[^A-Za-z0-9_/-]", "_", stem).strip("/")


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: the same folder gives the same bytes
    tar.addfile(info, io.BytesIO(data))


def _read(path, remote: Remote) -> bytes:
    return remote.read(path) if isinstance(path, str) else Path(path).read_bytes()


def write_shards(samples: list[tuple[str, dict[str, object]]], out: Path, per_shard: int, remote: Remote) -> dict:
    """Write ``samples`` [(name, {role: path})] as shards under ``out``; returns the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for first in range(0, len(samples), per_shard):
        path = out / f"shard-{first // per_shard:06d}.tar"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        chunk = samples[first : first + per_shard]
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i, (name, files) in enumerate(chunk, start=first):
                key = _key(name, i)
                for role, src in files.items():
                    _add(tar, f"{key}.{role}{PurePosixPath(str(src)).suffix.lower()}", _read(src, remote))
                _add(tar, f"{key}.name.txt", name.encode("utf-8"))
        os.replace(tmp, path)
        shards.append({"name": path.name, "samples": len(chunk), "bytes": path.stat().st_size, "sha256": file_sha256(path)})
        logger.info("%s: %d samples, %.1f MB", path, len(chunk), path.stat().st_size / 1e6)
    last = len(shards) - 1
    manifest = {
        "format": MANIFEST_FORMAT,
        "kind": "paired" if samples and "blur" in samples[0][1] else "sharp",
        "samples": len(samples),
        "pattern": f"shard-{{000000..{last:06d}}}.tar" if last > 0 else "shard-000000.tar",
        "shards": shards,
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return manifest


def collect(blur: str, sharp: str) -> list[tuple[str, dict[str, object]]]:
    """[(relative name, {"blur": path, "sharp": path})] for pairs, or [(name, {"sharp": path})]."""
    if blur:
        pairs = PairedFolders(DataConfig(files_a=blur, files_b=sharp, bounds=(0.0, 1.0)))
        return [(n, {"blur": a, "sharp": b}) for n, a, b in zip(pairs.names, pairs.files_a, pairs.files_b)]
    remote = Remote()
    out, seen = [], set()
    for pattern in sharp.split(","):
        for f in _glob(pattern, IMAGE_EXTS, remote):
            name = _relative(f, pattern).as_posix()
            if name not in seen:
                seen.add(name)
                out.append((name, {"sharp": f}))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sharp", required=True, help="glob (or URL glob) of sharp images; several: comma-separated")
    ap.add_argument("--blur", default="", help="glob of the blurred images paired with --sharp (omit: sharp only)")
    ap.add_argument("--out", required=True, type=Path, help="folder for shard-*.tar and manifest.json")
    ap.add_argument("--samples-per-shard", type=int, default=1000)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.samples_per_shard < 1:
        ap.error(f"--samples-per-shard must be >= 1, got {args.samples_per_shard}")
    samples = collect(args.blur, args.sharp)
    manifest = write_shards(samples, args.out, args.samples_per_shard, Remote())
    print(f"{manifest['samples']} {manifest['kind']} samples in {len(manifest['shards'])} shards: "
          f"{args.out / manifest['pattern']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
