"""On-disk cache of model exports (ONNX files), keyed by weights, input shape and library versions.

Layout: ``<cache_dir>/onnx/<key>.onnx`` plus ``<key>.json`` (the fields that made the key and the
file's sha256). An entry is trusted only when its JSON matches the key and the file's sha256 matches
the JSON; anything else (missing JSON, truncated or edited file) is deleted and rebuilt. Files are
written to a temporary name beside the target and ``os.replace``d, so a crash never leaves half a file
under the final name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from runtime.files import atomic_write_text, file_sha256

logger = logging.getLogger(__name__)

CACHE_ENV = "BLURDET_CACHE"
CACHE_FORMAT = 1  # bump when the export recipe changes: every old entry becomes a miss


def default_cache_dir() -> Path:
    """``$BLURDET_CACHE`` if set, else ``~/.cache/blurdet``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "blurdet"


def weights_digest(module: nn.Module) -> str:
    """sha256 over the module's architecture (its repr) and every parameter and buffer (names, dtypes,
    shapes, bytes), persistent or not. Equal digests mean the exported graphs are equal."""
    h = hashlib.sha256()
    h.update(type(module).__qualname__.encode())
    h.update(repr(module).encode())
    tensors = dict(module.named_parameters())
    tensors.update(dict(module.named_buffers()))
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def entry_key(fields: dict[str, Any]) -> str:
    """Short stable key (24 hex chars) of a JSON-serialisable dict."""
    blob = json.dumps({"cache_format": CACHE_FORMAT, **fields}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def remove_entry(path: Path) -> None:
    """Delete an entry (its file and its JSON), ignoring parts already gone."""
    for p in (path, path.with_suffix(".json")):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def check_entry(path: Path, fields: dict[str, Any]) -> None:
    """Raise ValueError saying why the entry at ``path`` cannot be trusted for ``fields``."""
    meta_path = path.with_suffix(".json")
    if not meta_path.is_file():
        raise ValueError(f"{meta_path} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{meta_path} is unreadable: {e}") from e
    if meta.get("fields") != json.loads(json.dumps(fields)):
        raise ValueError(f"{meta_path} was written for other inputs (stale entry)")
    digest = file_sha256(path)
    if meta.get("sha256") != digest:
        raise ValueError(f"{path} has sha256 {digest[:12]}.. but {meta_path.name} says {str(meta.get('sha256'))[:12]}.. "
                         "(truncated or modified)")


def cached_file(
    cache_dir: Path,
    kind: str,
    suffix: str,
    fields: dict[str, Any],
    build: Callable[[Path], None],
    verify: Callable[[Path], None],
) -> Path:
    """Path of a verified cache entry for ``fields``; built with ``build(tmp_path)`` when missing or bad.

    ``verify(path)`` must raise if the file cannot be used (e.g. onnx.load fails); it runs on every new
    build before the entry is published and on every hit after the sha256 check.
    """
    folder = Path(cache_dir) / kind
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{entry_key(fields)}{suffix}"
    if path.exists():
        try:
            check_entry(path, fields)
            verify(path)
            logger.debug("cache hit %s", path)
            return path
        except Exception as e:  # noqa: BLE001 - any failure to load means: do not trust it, rebuild
            logger.warning("Cache entry %s cannot be used (%s); deleting and rebuilding it", path, e)
            remove_entry(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{suffix}")
    try:
        build(tmp)
        verify(tmp)
        digest = file_sha256(tmp)
        # the .json first: an entry is visible (its file exists) only once its metadata does, so another
        # process never finds a fresh file without its .json and deletes it as broken
        atomic_write_text(path.with_suffix(".json"), json.dumps({"fields": fields, "sha256": digest}, indent=1, sort_keys=True))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    logger.info("Cached %s export %s", kind, path)
    return path
