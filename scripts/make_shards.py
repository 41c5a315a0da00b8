"""Write a local image folder as WebDataset shards (tar files) with a manifest, for object storage.

    # blurred/sharp pairs (matched as train.files_a/files_b match them)
    python scripts/make_shards.py --blur 'data/gopro/train/*/blur/*.png' --sharp 'data/gopro/train/*/sharp/*.png' --out shards/gopro
    # sharp images only (synthetic blur at training time)
    python scripts/make_shards.py --sharp 'data/train/**/*.jpg' --out shards/photos

``--sharp`` and ``--blur`` take several comma-separated globs; with ``--blur`` the i-th blur glob pairs with
the i-th sharp glob.

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
from deblur.data.dataset import IMAGE_EXTS, PairedFolders, glob_files, relative_name
from runtime.remote import Remote, mask_url
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


def _globs(arg: str) -> list[str]:
    return [g.strip() for g in arg.split(",") if g.strip()]


def collect(blur: str, sharp: str) -> list[tuple[str, dict[str, object]]]:
    """[(relative name, {"blur": path, "sharp": path})] for pairs, or [(name, {"sharp": path})], from
    comma-separated globs. A file matched twice is taken once; a name that another root already gave is
    replaced by the file's whole path (as SyntheticBlur names it), so no file is lost."""
    sharps, blurs = _globs(sharp), _globs(blur)
    if blurs and len(blurs) != len(sharps):
        raise ValueError(f"--blur has {len(blurs)} globs and --sharp {len(sharps)}: the i-th blur glob pairs with "
                         f"the i-th sharp glob, so give as many of each.")
    found: list[tuple[str, object, dict[str, object]]] = []  # (relative name, identity, files)
    remote = Remote()
    for i, pattern in enumerate(sharps):
        if blurs:
            pairs = PairedFolders(DataConfig(files_a=blurs[i], files_b=pattern, bounds=(0.0, 1.0)))
            found += [(n, b, {"blur": a, "sharp": b}) for n, a, b in zip(pairs.names, pairs.files_a, pairs.files_b)]
        else:
            found += [(relative_name(f, pattern).as_posix(), f, {"sharp": f})
                      for f in glob_files(pattern, IMAGE_EXTS, remote)]
    out, seen_files, seen_names = [], set(), set()
    for name, ident, files in found:
        ident = ident if isinstance(ident, str) else Path(ident).resolve()
        if ident in seen_files:
            continue
        seen_files.add(ident)
        if name in seen_names:
            name = mask_url(ident) if isinstance(ident, str) else ident.as_posix()
        seen_names.add(name)
        out.append((name, files))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sharp", required=True, help="glob (or URL glob) of sharp images; several: comma-separated")
    ap.add_argument("--blur", default="", help="glob of the blurred images paired with --sharp (omit: sharp only); "
                    "several: comma-separated, the i-th pairs with the i-th --sharp glob")
    ap.add_argument("--out", required=True, type=Path, help="folder for shard-*.tar and manifest.json")
    ap.add_argument("--samples-per-shard", type=int, default=1000)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.samples_per_shard < 1:
        ap.error(f"--samples-per-shard must be >= 1, got {args.samples_per_shard}")
    try:
        samples = collect(args.blur, args.sharp)
    except (ValueError, FileNotFoundError) as e:
        ap.error(str(e))
    manifest = write_shards(samples, args.out, args.samples_per_shard, Remote())
    print(f"{manifest['samples']} {manifest['kind']} samples in {len(manifest['shards'])} shards: "
          f"{args.out / manifest['pattern']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
