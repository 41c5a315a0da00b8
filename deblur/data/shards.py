"""WebDataset shards of our training data: listing, checking, reading and dealing them to readers.

A shard is a plain tar file whose members ``<key>.<ext>`` are grouped by ``key`` (everything before the
first dot of the file name): ``0001.blur.png`` + ``0001.sharp.png`` is one pair, a lone ``0001.sharp.png`` a
sharp image for synthetic blur. The ``webdataset`` package reads them (its tar iterator and key grouping,
as a stream: nothing is unpacked to disk).

Checking: every shard is read to its end through ``_CheckedStream``. When a ``manifest.json`` written by
``scripts/make_shards.py`` lies beside the shards, each shard's size and sha256 must equal the manifest's;
without one, a ``.tar`` file must end in the tar end-of-archive zero blocks. (Python's ``tarfile`` in stream mode
ends quietly at a header cut short, so a shard cut there would otherwise read as a short shard.) A failure
raises ``ShardError`` naming the shard, before the read cache keeps its copy, so a bad file is never cached.

Dealing (``reader_shards``): a training stream (``loop``) gives each reader (DDP rank x DataLoader worker)
an endless sequence of shards drawn with replacement, webdataset's ``ResampledShards`` seeded by (seed, rank,
worker): every reader draws from all shards at the same rate whatever the shard count, so no rank runs dry
or cycles a smaller share than the others, and the stream is reproducible (resumable). One pass (no
``loop``) deals every shard exactly once: ``shards[rank::world][worker::workers]``, as webdataset's
``split_by_node`` and ``split_by_worker`` do, but with the worker number given (a resumed DataLoader's
worker may play another worker's part, see ``ShardStream``).
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import os
import sys
import tarfile
from collections.abc import Iterator
from pathlib import PurePosixPath

import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_expander

from runtime.remote import Remote, expand_braces, has_magic, is_url
from runtime.urls import mask_url

logger = logging.getLogger(__name__)

__all__ = ["MANIFEST", "ShardError", "iter_shard", "load_manifests", "reader_shards", "resolve_shards"]

MANIFEST = "manifest.json"  # scripts/make_shards.py writes it beside the shards
_END_OF_ARCHIVE = bytes(2 * tarfile.BLOCKSIZE)  # a tar ends in (at least) two zero blocks
_FIX = "re-create it with scripts/make_shards.py and upload it again"


class ShardError(ValueError):
    """A shard that cannot be read to its end (truncated, not a tar file, or not the bytes its manifest lists)."""


def resolve_shards(patterns: list[str], remote: Remote) -> list[str]:
    """Shard paths/URLs of ``patterns`` (``{000..009}`` ranges expanded, globs listed), sorted, no duplicates.

    A name without a wildcard is taken as given (a missing one fails when it is opened, naming it).
    """
    found: list[str] = []
    for pattern in patterns:
        for name in expand_braces(pattern):
            if not has_magic(name):
                found.append(name)
            elif is_url(name):
                found.extend(remote.glob(name, {".tar"}))
            else:
                local = sorted(p for p in glob.glob(os.path.expanduser(name), recursive=True) if p.endswith(".tar"))
                if not local:
                    raise FileNotFoundError(f"No shards match {name!r} (cwd {os.getcwd()}). Check the path.")
                found.extend(local)
    return sorted(dict.fromkeys(found))


def _folder(shard: str) -> str:
    return shard.split("?", 1)[0].rsplit("/", 1)[0] if is_url(shard) else os.path.dirname(shard) or "."


def load_manifests(shards: list[str], remote: Remote) -> dict[str, tuple[int, str]]:
    """``{shard: (bytes, sha256)}`` from the ``manifest.json`` beside each shard (folders without one: none)."""
    expected: dict[str, tuple[int, str]] = {}
    by_folder: dict[str, list[str]] = {}
    for shard in shards:
        by_folder.setdefault(_folder(shard), []).append(shard)
    for folder, members in by_folder.items():
        where = f"{folder}/{MANIFEST}"
        try:
            raw = remote.read(where) if is_url(where) else open(where, "rb").read()  # noqa: SIM115
        except (FileNotFoundError, PermissionError):  # none, or not readable with the shards' (signed) URLs
            continue
        try:
            listed = {s["name"]: (int(s["bytes"]), str(s["sha256"])) for s in json.loads(raw)["shards"]}
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{mask_url(where)} is not a shard manifest ({e}); re-create it with scripts/make_shards.py "
                             f"or delete it.") from e
        for shard in members:
            name = PurePosixPath(shard.split("?", 1)[0]).name
            if name in listed:
                expected[shard] = listed[name]
    return expected


class _CheckedStream(io.RawIOBase):
    """Reads ``src`` and, at its end, checks what was read (see the module docstring); ShardError if wrong."""

    def __init__(self, src, name: str, expected: tuple[int, str] | None):
        self.src, self.name, self.expected = src, name, expected
        self.size, self.digest, self.tail = 0, hashlib.sha256(), b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.src.read(len(b))
        n = len(data)
        if n:
            b[:n] = data
            self.size += n
            self.digest.update(data)
            self.tail = (self.tail + bytes(data[-len(_END_OF_ARCHIVE):]))[-len(_END_OF_ARCHIVE):]
        else:
            self._check()
        return n

    def _check(self) -> None:
        if self.expected is not None:
            size, sha = self.expected
            if (self.size, self.digest.hexdigest()) != (size, sha):
                raise ShardError(f"Shard {mask_url(self.name)} is {self.size} bytes with sha256 "
                                 f"{self.digest.hexdigest()[:12]}..., but {MANIFEST} lists {size} bytes with sha256 "
                                 f"{sha[:12]}... (truncated or changed): {_FIX}.")
        elif self.name.split("?", 1)[0].endswith(".tar") and (self.size % tarfile.BLOCKSIZE or self.tail != _END_OF_ARCHIVE):
            raise ShardError(f"Shard {mask_url(self.name)} is truncated: its {self.size} bytes do not end in the tar "
                             f"end-of-archive blocks; {_FIX}.")

    def close(self) -> None:
        if not self.closed:
            self.src.close()
        super().close()


def checked(expected: tuple[int, str] | None, name: str):
    """A ``Remote.open_stream`` wrapper that checks the shard ``name`` at its end (see ``_CheckedStream``)."""
    return lambda src: io.BufferedReader(_CheckedStream(src, name, expected), buffer_size=2**20)


def iter_shard(fileobj, shard_name: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {ext: bytes})`` per sample of a WebDataset tar read as a stream, then the rest of the file
    read to its end (so a ``_CheckedStream`` under it runs its check, and a cache copy completes).

    Members of one sample must be adjacent (as WebDataset writes them). ``ShardError`` names the shard when
    it is truncated or not a tar file.
    """
    try:
        for sample in group_by_keys(tar_file_expander([{"url": shard_name, "stream": fileobj}])):
            key = sample.pop("__key__")
            yield key, {k: v for k, v in sample.items() if not k.startswith("__")}
        while fileobj.read(2**20):  # the zero blocks after the end-of-archive marker
            pass
    except ShardError:
        raise
    except (tarfile.TarError, EOFError, ValueError) as e:
        raise ShardError(f"Shard {mask_url(shard_name)} is truncated or not a tar file ({mask_url(e.args[0] if e.args else e)}); "
                         f"{_FIX}.") from e


def reader_shards(shards: list[str], seed: int, rank: int, world: int, worker: int, workers: int,
                  loop: bool) -> Iterator[str]:
    """The shards reader (``rank`` of ``world``, ``worker`` of ``workers``) reads, in order (see the module
    docstring): endless and resampled when ``loop``, else its share of one pass."""
    if loop:
        drawn = wds.ResampledShards(shards, nshards=sys.maxsize, seed=int(seed), deterministic=True,
                                    worker_seed=lambda: int(rank) * 1000 + int(worker))
        return (d["url"] for d in drawn)
    return iter(shards[rank::world][worker::workers])
