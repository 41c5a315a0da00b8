"""Files that are not on this disk: fsspec URLs, timeouts and retries, and a read-through cache.

URLs (``s3://``, ``gs://``, ``https://`` ... anything fsspec knows, with its backend installed: s3fs for
S3, gcsfs for GCS, aiohttp for HTTP) are globbed and read with ``fsspec``. Credentials come from each
backend's usual environment and config files (``AWS_ACCESS_KEY_ID``/``AWS_PROFILE``/``AWS_ENDPOINT_URL``,
``GOOGLE_APPLICATION_CREDENTIALS``, ...); a URL is passed through ``runtime.urls.mask_url`` before it
reaches a log line or an error, so a token in a query string or a password in the userinfo never does.

Network reads have a timeout (``timeout`` seconds per connect/read) and are retried ``retries`` times
with exponential backoff (0.5 s, 1 s, 2 s ...); an endpoint that stays unreachable is an ``OSError`` that
names the URL and the setting to check. A URL that does not exist, a bucket that does not exist and missing
credentials are not retried: they raise at once with the fix. The retry loop is ours, not ``tenacity``'s or
a backend's: most of it is sorting the backends' errors into these cases, which neither would do for us.

The read-through cache (``ReadCache``) keeps whole remote files under ``<cache_dir>/<sha256 of URL +
version>``, where the version is the object's ETag, modification time and size, so an object changed in
place is a miss. Its total size is bounded: the least recently used files are deleted first.

WebDataset shards of the training data (listing, checking, reading) are in ``deblur.data.shards``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TypeVar

from runtime.cache import default_cache_dir
from runtime.urls import mask_url

logger = logging.getLogger(__name__)

__all__ = [
    "ReadCache",
    "Remote",
    "expand_braces",
    "has_magic",
    "is_url",
    "mask_url",
    "strip_protocol",
]

T = TypeVar("T")
_URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_BRACE_RE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_CREDENTIAL_ERRORS = {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError", "DefaultCredentialsError"}


def is_url(path: str) -> bool:
    """True for ``scheme://...`` other than ``file://`` (those are read as local paths)."""
    return bool(_URL_RE.match(str(path))) and not str(path).startswith("file://")


def has_magic(pattern: str) -> bool:
    """A glob wildcard in ``pattern`` (for http(s) URLs, in the path only: '?' starts their query)."""
    if strip_protocol(pattern)[0] in ("http://", "https://"):
        pattern = pattern.split("?", 1)[0]
    return any(c in pattern for c in "*?[")


def strip_protocol(url: str) -> tuple[str, str]:
    """``"s3://bucket/a/b.png"`` -> ``("s3://", "bucket/a/b.png")``."""
    m = _URL_RE.match(url)
    return (m.group(0), url[m.end():]) if m else ("", url)


def expand_braces(pattern: str) -> list[str]:
    """WebDataset's shard ranges: ``shard-{000..002}.tar`` -> the three names (zero padding kept)."""
    m = _BRACE_RE.search(pattern)
    if not m:
        return [pattern]
    lo, hi = m.group(1), m.group(2)
    if int(lo) > int(hi):
        raise ValueError(f"Shard range {{{lo}..{hi}}} in {mask_url(pattern)!r} runs backwards; write it low..high.")
    width = len(lo)
    out = []
    for i in range(int(lo), int(hi) + 1):
        out.extend(expand_braces(pattern[: m.start()] + f"{i:0{width}d}" + pattern[m.end():]))
    return out


def _is_credential_error(e: BaseException) -> bool:
    while e is not None:
        if type(e).__name__ in _CREDENTIAL_ERRORS:
            return True
        e = e.__cause__ or e.__context__
    return False


def _credentials_hint(url: str) -> str:
    proto = strip_protocol(url)[0]
    if proto in ("s3://", "s3a://"):
        return ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE; AWS_ENDPOINT_URL for MinIO and "
                "other S3-compatible servers)")
    if proto in ("gs://", "gcs://"):
        return "set GOOGLE_APPLICATION_CREDENTIALS or run `gcloud auth application-default login`"
    return "check the credentials this backend reads from its environment"


def _network_hint(url: str) -> str:
    if strip_protocol(url)[0] in ("s3://", "s3a://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
        where = f"AWS_ENDPOINT_URL={mask_url(endpoint)}" if endpoint else "AWS_ENDPOINT_URL is unset: AWS itself"
        return (f"Check the network and the S3 endpoint ({where}); set AWS_ENDPOINT_URL to a server that answers, "
                f"or unset it for AWS")
    return "Check the network and the server"


class ReadCache:
    """Whole remote files on local disk, keyed by URL and version, at most ``max_bytes`` in total (LRU).

    Safe for several processes (DataLoader workers, DDP ranks) sharing ``root``: files are written under a
    temporary name and ``os.replace``d, and a reader that loses a race with eviction reads the network again.

    Ours, not fsspec's ``filecache``/``simplecache``: neither bounds the cache's size (``filecache`` only
    expires by age), ``simplecache`` never checks the version, and ``filecache``'s ``check_files`` costs a
    request per open and keeps its index in one JSON file that concurrent workers and ranks rewrite.
    """

    RESCAN_EVERY = 256  # puts between full scans of the folder (other processes' writes are seen then)

    def __init__(self, root: str | os.PathLike, max_bytes: int):
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self._total: int | None = None  # bytes in the folder as last scanned, plus what this process added since
        self._puts = 0

    def path(self, url: str, version: str) -> Path:
        digest = hashlib.sha256(f"{url}\n{version}".encode()).hexdigest()
        return self.root / digest[:2] / digest

    def get(self, url: str, version: str) -> Path | None:
        p = self.path(url, version)
        try:
            os.utime(p)  # mark as recently used
        except FileNotFoundError:
            return None
        return p

    def put(self, url: str, version: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self.writer(url, version) as f:
            f.write(data)

    def writer(self, url: str, version: str) -> _CacheWriter:
        return _CacheWriter(self, self.path(url, version))

    def _added(self, size: int) -> None:
        """Account for a new entry; scan and evict only when the running total says the bound is passed."""
        self._puts += 1
        if self._total is not None and self._puts % self.RESCAN_EVERY:
            self._total += size
            if self._total <= self.max_bytes:
                return
        self._evict()

    def _evict(self) -> None:
        """Delete least recently used entries until the folder holds at most 90% of ``max_bytes``."""
        files = []
        for p in self.root.glob("*/*"):
            if p.name.startswith("."):
                continue
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            files.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in files)
        if total > self.max_bytes:
            for _, size, p in sorted(files, key=lambda t: t[0]):
                if total <= 0.9 * self.max_bytes:  # headroom: the next few puts need no scan
                    break
                p.unlink(missing_ok=True)
                total -= size
        self._total = total


class _CacheWriter:
    """A file that becomes a cache entry on ``commit()`` (and is discarded otherwise)."""

    def __init__(self, cache: ReadCache, path: Path):
        self.cache, self.path = cache, path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(self)}.tmp")
        self.f = open(self.tmp, "wb")  # noqa: SIM115 - closed by commit()/abort()
        self.size = 0

    def write(self, data: bytes) -> None:
        if self.f is None:
            return
        self.size += len(data)
        if self.size > self.cache.max_bytes:  # larger than the whole cache: do not keep it
            self.abort()
            return
        self.f.write(data)

    def commit(self) -> None:
        if self.f is None:
            return
        self.f.close()
        self.f = None
        os.replace(self.tmp, self.path)
        self.cache._added(self.size)

    def abort(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None
        self.tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.commit() if exc_type is None else self.abort()


class _TeeReader(io.RawIOBase):
    """Reads ``src`` and copies every byte to a cache writer; commits the entry at the end of the stream."""

    def __init__(self, src, writer: _CacheWriter, expected: int | None):
        self.src, self.writer, self.expected, self.seen = src, writer, expected, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.src.read(len(b))
        n = len(data)
        b[:n] = data
        if n:
            self.seen += n
            self.writer.write(data)
        elif self.expected is None or self.seen == self.expected:
            self.writer.commit()
        else:
            self.writer.abort()
        return n

    def close(self) -> None:
        if not self.closed:
            self.writer.abort()  # no-op after commit
            self.src.close()
        super().close()


class Remote:
    """Globs and reads of fsspec URLs with timeouts, retries and the read-through cache.

    Holds only plain values (picklable into DataLoader workers); fsspec caches the file-system objects.
    ``cache_gb`` 0 switches the cache off; ``cache_dir`` "" means ``runtime.cache.default_cache_dir()/data``.
    """

    def __init__(self, timeout: float = 60.0, retries: int = 3, cache_dir: str = "", cache_gb: float = 0.0,
                 backoff: float = 0.5):
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)
        root = Path(os.path.expanduser(cache_dir)) if cache_dir else default_cache_dir() / "data"
        self.cache = ReadCache(root, int(cache_gb * 2**30)) if cache_gb > 0 else None
        self.versions: dict[str, str] = {}  # URL -> ETag/mtime/size seen when globbing

    # ---------------------------------------------------------------- file systems
    def _fs(self, url: str):
        import fsspec

        proto = strip_protocol(url)[0][:-3]
        opts: dict = {}
        if proto in ("s3", "s3a"):
            opts = {"config_kwargs": {"connect_timeout": self.timeout, "read_timeout": self.timeout,
                                      "retries": {"max_attempts": 2}}}
        elif proto in ("http", "https"):
            import aiohttp

            opts = {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=self.timeout,
                                                                       sock_read=self.timeout)}}
        try:
            fs, _ = fsspec.core.url_to_fs(url, **opts)
        except ImportError as e:
            raise ImportError(f"Reading {mask_url(url)} needs the fsspec backend for {proto!r}: {e}") from e
        except ValueError as e:
            raise ValueError(f"{mask_url(url)}: fsspec knows no protocol {proto!r} ({e}).") from e
        return fs

    def _call(self, what: str, url: str, fn: Callable[[], T]) -> T:
        """``fn()`` with retries and backoff on transient network errors; clear errors for the rest."""
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except FileNotFoundError as e:
                raise FileNotFoundError(f"{mask_url(url)} does not exist ({what}): check the bucket, the path and "
                                        f"the endpoint.") from e
            except PermissionError as e:
                raise PermissionError(f"Access denied to {mask_url(url)} ({what}): {mask_url(e)}. "
                                      f"{_credentials_hint(url).capitalize()}.") from e
            except Exception as e:
                if _is_credential_error(e):
                    raise PermissionError(f"No credentials to read {mask_url(url)}: {_credentials_hint(url)}.") from e
                if not isinstance(e, (OSError, TimeoutError, ConnectionError)) and not _is_network_error(e):
                    raise
                if attempt == self.retries:
                    raise OSError(f"Could not {what} {mask_url(url)} after {attempt + 1} tries "
                                  f"(timeout {self.timeout:g} s): {mask_url(e)}. {_network_hint(url)}.") from e
                delay = self.backoff * 2**attempt
                logger.warning("%s %s failed (%s); retry %d/%d in %.1f s", what, mask_url(url), mask_url(e),
                               attempt + 1, self.retries, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    # ---------------------------------------------------------------- listing
    def glob(self, pattern: str, exts: set[str] | None = None) -> list[str]:
        """Full URLs of the files matching ``pattern`` (sorted), optionally only those ending in ``exts``."""
        proto, path = strip_protocol(pattern)
        fs = self._fs(pattern)
        fs.invalidate_cache()  # list afresh: a cached listing would hide a changed object (and its new ETag)
        target = path if _strip_ok(pattern) else pattern
        if has_magic(pattern):
            found = self._call("list", pattern, lambda: fs.glob(target, detail=True))
        else:
            found = {target: self._call("read", pattern, lambda: fs.info(target))}
        urls = []
        for name, info in sorted(found.items()):
            if info.get("type", "file") != "file":
                continue
            url = name if is_url(name) else proto + name  # s3fs/gcsfs list names without their protocol
            if exts is not None and PurePosixPath(strip_protocol(url)[1].split("?", 1)[0]).suffix.lower() not in exts:
                continue
            self.versions[url] = _version(info)
            urls.append(url)
        if not urls:
            root = _root_of(path)
            exists = bool(root) and self._call("list", pattern, lambda: fs.exists(root))
            where = f"{proto}{root} exists but holds no match" if exists else f"{proto}{root} does not exist (bucket or folder)"
            raise FileNotFoundError(f"No files match {mask_url(pattern)!r}: {mask_url(where)}. Check the URL and the endpoint.")
        return urls

    # ---------------------------------------------------------------- reading
    def read(self, url: str) -> bytes:
        """The whole object at ``url``, from the cache when it holds this version."""
        version = self.versions.get(url)
        if self.cache is not None and version is not None:
            hit = self.cache.get(url, version)
            if hit is not None:
                try:
                    return hit.read_bytes()
                except FileNotFoundError:  # evicted by another process between get and read
                    pass
        fs = self._fs(url)
        data = self._call("read", url, lambda: fs.cat_file(strip_protocol(url)[1] if _strip_ok(url) else url))
        if self.cache is not None and version is not None and _size_of(version) in (None, len(data)):  # never short
            self.cache.put(url, version, data)
        return data

    def open_stream(self, url: str, wrap: Callable | None = None):
        """A sequential binary file object over ``url`` (a cached copy when there is one; else the network,
        copied into the cache as it is read to its end).

        ``wrap(file) -> file``, when given, is laid over the source (network, cached copy or local file) to
        check the bytes as they pass; it raises to reject them, and the cache keeps only what it passed."""
        wrap = wrap or (lambda f: f)
        if not is_url(url):
            return wrap(open(url, "rb"))  # noqa: SIM115
        fs = self._fs(url)
        path = strip_protocol(url)[1] if _strip_ok(url) else url
        version = self.versions.get(url)
        if version is None:
            version = _version(self._call("read", url, lambda: fs.info(path)))
            self.versions[url] = version
        if self.cache is not None:
            hit = self.cache.get(url, version)
            if hit is not None:
                try:
                    return wrap(open(hit, "rb"))  # noqa: SIM115
                except FileNotFoundError:
                    pass
        src = wrap(self._call("open", url, lambda: fs.open(path, "rb", block_size=2**22)))
        if self.cache is None:
            return src
        size = _size_of(version)
        return io.BufferedReader(_TeeReader(src, self.cache.writer(url, version), size), buffer_size=2**20)


def _strip_ok(url: str) -> bool:
    return strip_protocol(url)[0] not in ("http://", "https://")  # fsspec's HTTP file system wants whole URLs


def _is_network_error(e: BaseException) -> bool:
    """aiohttp's client errors (https://) and botocore's connection errors (s3://, not OSErrors)."""
    if any(c.__module__.startswith("botocore") and c.__name__ in ("ConnectionError", "HTTPClientError")
           for c in type(e).__mro__):
        return True
    try:
        import aiohttp
    except ImportError:
        return False
    return isinstance(e, aiohttp.ClientError)


def _version(info: dict) -> str:
    """ETag / modification time / size of an fsspec ``info`` dict, as one string (the cache key's version)."""
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or ""
    mtime = info.get("LastModified") or info.get("Last-Modified") or info.get("mtime") or info.get("updated") or ""
    return f"etag={str(etag).strip(chr(34))};mtime={mtime};size={info.get('size', '')}"


def _size_of(version: str) -> int | None:
    m = re.search(r"size=(\d+)", version)
    return int(m.group(1)) if m else None


def _root_of(path: str) -> str:
    parts = []
    for part in PurePosixPath(path).parts:
        if any(c in part for c in "*?["):
            break
        parts.append(part)
    return str(PurePosixPath(*parts)) if parts else ""
