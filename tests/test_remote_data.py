"""Training data off this disk, loopback only: S3 (moto's server on 127.0.0.1), WebDataset shards over a
local HTTP server, the read-through cache, errors that name the fix (never a hang), DDP shard splitting,
and DataLoader workers that give the same batches as the main process."""

import functools
import http.server
import io
import json
import logging
import socket
import sys
import tarfile
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from configs import load_config
from deblur.config import DataConfig, TrainConfig
from deblur.data.dataset import (
    PairedFolders,
    ShardItems,
    ShardStream,
    build_dataset,
)
from deblur.data.shards import ShardError, iter_shard
from runtime.remote import ReadCache, Remote, expand_braces
from deblur.train.gan_trainer import Trainer
from runtime.urls import mask_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import make_shards

BUCKET = "deblur-data"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def paired(tmp_path_factory) -> Path:
    """GoPro-style tree: gopro/train/<clip>/{blur,sharp}/<n>.png, 8 pairs of 40x48 images."""
    root = tmp_path_factory.mktemp("data") / "gopro"
    rng = np.random.default_rng(0)
    for clip in ("clipA", "clipB"):
        for i in range(4):
            sharp = cv2.resize(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8), (48, 40), interpolation=cv2.INTER_CUBIC)
            blur = cv2.GaussianBlur(sharp, (5, 5), 1.5)
            for kind, img in (("blur", blur), ("sharp", sharp)):
                path = root / "train" / clip / kind / f"{i:04d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(path), img)
    return root


@pytest.fixture(scope="module")
def s3(paired):
    """A real S3-compatible server on 127.0.0.1 holding ``paired`` under s3://deblur-data/gopro/.
    Fake credentials and the endpoint are set in the environment for this module only."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret",
                     "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                     "AWS_EC2_METADATA_DISABLED": "true"}.items():
            mp.setenv(k, v)
        mp.delenv("AWS_PROFILE", raising=False)
        import boto3
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        for f in sorted(paired.rglob("*.png")):
            client.put_object(Bucket=BUCKET, Key=f"gopro/{f.relative_to(paired).as_posix()}", Body=f.read_bytes())
        yield client
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def _train_cfg(tmp_path: Path, *extra: str) -> TrainConfig:
    overrides = [
        f"project={tmp_path / 'runs'}", "name=tiny", "image_size=32", "batch_size=2", "train_batches_per_epoch=3",
        "val_batches_per_epoch=0", "num_epochs=1", "device=cpu", "amp=fp32", "threads=1", "save_every=100",
        "log_every=100", "image_every=100", "ema=0", "model.zero_init_last=false", "train.preload=false",
        "train.bounds=[0.0, 1.0]", "train.sources=[]", f"train.cache_dir={tmp_path / 'cache'}", *extra,
    ]
    return load_config(TrainConfig, ROOT / "configs" / "deblur_train.yaml", overrides)


def _batches(trainer: Trainer, epoch: int = 0) -> list[dict]:
    return list(trainer._train_batches(epoch, 0))


def _same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["name"] == y["name"]
        assert torch.equal(x["blur"], y["blur"]) and torch.equal(x["sharp"], y["sharp"])


# ----------------------------------------------------------------------------- S3
def test_s3_globs_train_like_the_same_files_read_locally(paired, s3, tmp_path):
    local = _train_cfg(tmp_path, f"train.files_a={paired}/train/*/blur/*.png", f"train.files_b={paired}/train/*/sharp/*.png")
    remote = _train_cfg(tmp_path, f"train.files_a=s3://{BUCKET}/gopro/train/*/blur/*.png",
                        f"train.files_b=s3://{BUCKET}/gopro/train/*/sharp/*.png", "name=tiny_s3")
    t_local, t_s3 = Trainer(local), Trainer(remote)
    assert t_s3.train_set.names == t_local.train_set.names and len(t_s3.train_set) == 8  # paired by relative path
    assert t_s3.train_set.files_a[0].startswith(f"s3://{BUCKET}/gopro/train/clipA/blur/")
    _same_batches(_batches(t_s3), _batches(t_local))
    for t in (t_local, t_s3):
        t.cfg = t.cfg.__class__(**{**t.cfg.__dict__, "max_steps": 2})
        t.fit()
    for (k, a), b in zip(t_local.G.state_dict().items(), t_s3.G.state_dict().values()):
        assert torch.equal(a, b), k
    assert "s3://deblur-data/gopro" in (tmp_path / "runs" / "tiny_s3" / "config.yaml").read_text()


def test_s3_split_bounds_and_preload_match_local(paired, s3, tmp_path):
    for bounds in ((0.0, 0.5), (0.5, 1.0)):
        kw = {"bounds": bounds, "size": 32, "preload": True, "cache_dir": str(tmp_path)}
        local = PairedFolders(DataConfig(files_a=f"{paired}/train/*/blur/*.png", files_b=f"{paired}/train/*/sharp/*.png", **kw))
        remote = PairedFolders(DataConfig(files_a=f"s3://{BUCKET}/gopro/train/*/blur/*.png",
                                          files_b=f"s3://{BUCKET}/gopro/train/*/sharp/*.png", **kw))
        assert remote.names == local.names
        for i in range(len(local)):
            assert torch.equal(remote[i]["blur"], local[i]["blur"])


def test_cache_serves_epoch_two_and_misses_a_changed_object(paired, s3, tmp_path, monkeypatch):
    cfg = DataConfig(files_a=f"s3://{BUCKET}/gopro/train/*/blur/*.png", files_b=f"s3://{BUCKET}/gopro/train/*/sharp/*.png",
                     bounds=(0.0, 1.0), size=32, cache_dir=str(tmp_path / "cache"), cache_gb=0.01)
    ds = PairedFolders(cfg)
    first = [ds[i]["blur"] for i in range(len(ds))]
    assert len(list((tmp_path / "cache").glob("*/*"))) == 16  # every file once

    def offline(self, what, url, fn):
        raise AssertionError(f"network {what} of {url} on epoch 2")

    with monkeypatch.context() as m:
        m.setattr(Remote, "_call", offline)
        assert all(torch.equal(ds[i]["blur"], first[i]) for i in range(len(ds)))  # epoch 2: from the cache

    # the object changes in place: new ETag -> a miss, the new bytes are read
    key = "gopro/train/clipA/blur/0000.png"
    flat = cv2.imencode(".png", np.full((40, 48, 3), 200, np.uint8))[1].tobytes()
    original = (paired / "train/clipA/blur/0000.png").read_bytes()
    s3.put_object(Bucket=BUCKET, Key=key, Body=flat)
    try:
        ds2 = PairedFolders(cfg)
        i = ds2.names.index("clipA/0000.png")
        assert float(ds2[i]["blur"].std()) < 1e-6 and not torch.equal(ds2[i]["blur"], first[i])
    finally:
        s3.put_object(Bucket=BUCKET, Key=key, Body=original)


def test_cache_is_size_bounded_least_recently_used_first(tmp_path):
    cache = ReadCache(tmp_path, max_bytes=250)
    for name in ("a", "b", "c"):
        cache.put(f"s3://x/{name}", "v1", name.encode() * 100)
        p = cache.path(f"s3://x/{name}", "v1")
        import os

        os.utime(p, (ord(name), ord(name)))  # a older than b older than c
    assert cache.get("s3://x/a", "v1") is None and cache.get("s3://x/c", "v1") is not None
    assert cache.get("s3://x/c", "v2") is None  # another version is another entry
    cache.put("s3://x/big", "v1", b"x" * 1000)  # larger than the whole cache: not kept
    assert cache.get("s3://x/big", "v1") is None


def test_missing_bucket_and_missing_path_are_named(s3, tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-bucket.*does not exist"):
        PairedFolders(DataConfig(files_a="s3://no-such-bucket/x/*.png", files_b="s3://no-such-bucket/y/*.png", size=32))
    with pytest.raises(FileNotFoundError, match=f"{BUCKET}/nothing.*does not exist"):
        build_dataset(DataConfig(sources=[f"s3://{BUCKET}/nothing/*.png"], size=32))


def test_missing_credentials_say_which_variables(s3, tmp_path, monkeypatch):
    import s3fs

    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        with pytest.raises(PermissionError, match="AWS_ACCESS_KEY_ID"):
            build_dataset(DataConfig(sources=[f"s3://{BUCKET}/gopro/train/*/sharp/*.png"], size=32))
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


# ----------------------------------------------------------------------------- HTTP + shards
@pytest.fixture(scope="module")
def shards(paired, tmp_path_factory) -> Path:
    """The paired set as 4 shards of 2 pairs (scripts/make_shards.py), plus a truncated copy and a bad one."""
    out = tmp_path_factory.mktemp("shards")
    assert make_shards.main(["--blur", f"{paired}/train/*/blur/*.png", "--sharp", f"{paired}/train/*/sharp/*.png",
                             "--out", str(out / "gopro"), "--samples-per-shard", "2"]) == 0
    whole = (out / "gopro" / "shard-000001.tar").read_bytes()
    (out / "truncated.tar").write_bytes(whole[: len(whole) // 2 + 100])
    buf = io.BytesIO()  # one good pair, one whose sharp half is not an image, one with no sharp half
    with tarfile.open(fileobj=buf, mode="w") as tar, tarfile.open(out / "gopro" / "shard-000000.tar") as good:
        for m in good.getmembers()[:3]:
            tar.addfile(m, good.extractfile(m))
        for name, data in (("bad.blur.png", whole[:10]), ("bad.sharp.png", b"not a png"), ("lonely.blur.png", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (out / "bad.tar").write_bytes(buf.getvalue())
    return out


@pytest.fixture(scope="module")
def http_root(shards):
    handler = functools.partial(_QuietHandler, directory=str(shards))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_make_shards_writes_a_manifest_and_the_folders_names(paired, shards):
    manifest = json.loads((shards / "gopro" / "manifest.json").read_text())
    assert manifest["samples"] == 8 and manifest["kind"] == "paired" and len(manifest["shards"]) == 4
    assert manifest["pattern"] == "shard-{000000..000003}.tar"
    items = ShardItems(DataConfig(shards=[str(shards / "gopro" / manifest["pattern"])], bounds=(0.0, 1.0), size=32, preload=True))
    local = PairedFolders(DataConfig(files_a=f"{paired}/train/*/blur/*.png", files_b=f"{paired}/train/*/sharp/*.png",
                                     bounds=(0.0, 1.0), size=32))
    assert items.names == local.names  # same names, so the same hash split
    assert torch.equal(items[3]["blur"], local[3]["blur"])  # same images, same draws


def test_http_shards_stream_every_sample_once_and_cache_them(http_root, paired, tmp_path):
    cfg = DataConfig(shards=[f"{http_root}/gopro/shard-{{000000..000003}}.tar"], bounds=(0.0, 1.0), size=32,
                     shuffle_buffer=4, cache_dir=str(tmp_path / "cache"))
    stream = ShardStream(cfg, seed=1)
    names = [it["name"] for it in stream]
    assert sorted(names) == sorted(PairedFolders(DataConfig(
        files_a=f"{paired}/train/*/blur/*.png", files_b=f"{paired}/train/*/sharp/*.png", bounds=(0.0, 1.0), size=32)).names)
    assert names != sorted(names)  # shuffled
    assert len(list((tmp_path / "cache").glob("*/*"))) == 4  # each shard kept whole while it streamed
    again = ShardStream(cfg, seed=1)
    again.remote._call = lambda what, url, fn: (_ for _ in ()).throw(AssertionError(f"network {what} {url}"))
    again.remote.versions = dict(stream.remote.versions)
    assert [it["name"] for it in again] == names  # epoch 2 from the cache, same order for the same seed


def test_truncated_shard_is_a_clear_error(http_root):
    stream = ShardStream(DataConfig(shards=[f"{http_root}/truncated.tar"], bounds=(0.0, 1.0), size=32, cache_gb=0))
    with pytest.raises(ShardError, match="truncated.tar is truncated"):
        list(stream)


def test_missing_shard_url_is_named(http_root):
    stream = ShardStream(DataConfig(shards=[f"{http_root}/gopro/shard-000099.tar?token=s3cr3t"], size=32, cache_gb=0))
    with pytest.raises(FileNotFoundError, match="shard-000099.tar") as e:
        list(stream)
    assert "s3cr3t" not in str(e.value) and "token=***" in str(e.value)


def test_bad_samples_are_skipped_counted_and_logged(http_root, caplog):
    stream = ShardStream(DataConfig(shards=[f"{http_root}/bad.tar"], bounds=(0.0, 1.0), size=32, cache_gb=0))
    with caplog.at_level(logging.WARNING, logger="deblur.data.dataset"):
        items = list(stream)
    assert len(items) == 1 and stream.skipped == 2
    assert "'bad' skipped" in caplog.text and "'lonely' skipped" in caplog.text and "2 bad samples" in caplog.text


def test_unresponsive_server_times_out_and_retries(tmp_path):
    with socket.socket() as s:  # accepts connections (backlog) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        remote = Remote(timeout=0.3, retries=1, backoff=0.05)
        with pytest.raises(OSError, match="after 2 tries"):
            remote.read(f"http://127.0.0.1:{s.getsockname()[1]}/x.png")


def test_urls_and_ranges():
    assert expand_braces("a/s-{08..10}.tar") == ["a/s-08.tar", "a/s-09.tar", "a/s-10.tar"]
    cfg = DataConfig(files_a="https://u:pw@h/a/*.png", files_b="https://h/b/*.png?X-Amz-Signature=abc", shards=["s3://b/x.tar"])
    masked = cfg.masked()
    assert "pw" not in masked.files_a and "abc" not in masked.files_b and masked.shards == ["s3://b/x.tar"]
    assert mask_url("s3://bucket/key") == "s3://bucket/key"
    with pytest.raises(ShardError):
        list(iter_shard(io.BytesIO(b"\x00garbage" * 100), "x.tar"))


# ----------------------------------------------------------------------------- workers, resume, DDP
def test_workers_give_the_main_process_batches(paired, tmp_path):
    cfg = _train_cfg(tmp_path, f"train.files_a={paired}/train/*/blur/*.png", f"train.files_b={paired}/train/*/sharp/*.png")
    t = Trainer(cfg)
    main = _batches(t, epoch=1)
    t.cfg = t.cfg.__class__(**{**t.cfg.__dict__, "num_workers": 2})
    _same_batches(_batches(t, epoch=1), main)


def test_stream_resume_skips_to_the_same_batches(shards, tmp_path):
    from deblur.data.dataset import stream_loader

    cfg = DataConfig(shards=[str(shards / "gopro" / "shard-*.tar")], bounds=(0.0, 1.0), size=32, shuffle_buffer=3)
    for workers in (0, 2):
        full = iter(stream_loader(ShardStream(cfg, seed=3, loop=True), 2, workers))
        ref = [next(full) for _ in range(7)]  # more than the 8 samples: shards are drawn again
        resumed = iter(stream_loader(ShardStream(cfg, seed=3, loop=True), 2, workers, skip_batches=4))
        _same_batches([next(resumed) for _ in range(3)], ref[4:])


def _ddp_worker(rank: int, world: int, port: int, shard_glob: str, out: str) -> None:
    import torch.distributed as dist

    from deblur.data.dataset import stream_loader

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cfg = DataConfig(shards=[shard_glob], bounds=(0.0, 1.0), size=32, shuffle_buffer=4)
        names = {}
        for workers in (0, 2):  # as the trainer reads: an endless stream, batches of 2, 6 steps
            loader = iter(stream_loader(ShardStream(cfg, seed=5, loop=True), 2, workers))  # rank from the group
            names[workers] = [next(loader)["name"] for _ in range(6)]
        gathered = [None] * world
        dist.all_gather_object(gathered, names)
        if rank == 0:
            Path(out).write_text(json.dumps(gathered))
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_stream_equal_batches_from_a_shard_count_that_does_not_divide(paired, tmp_path):
    """3 shards (3, 3 and 2 pairs) for 2 ranks x 2 workers: each rank takes 6 full batches in step, and each
    draws from several shards (dealt, rank 1 would get one shard and cycle it while rank 0 reads two)."""
    import torch.multiprocessing as mp

    out = tmp_path / "names.json"
    make_shards.main(["--blur", f"{paired}/train/*/blur/*.png", "--sharp", f"{paired}/train/*/sharp/*.png",
                      "--out", str(tmp_path / "s"), "--samples-per-shard", "3"])
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "s" / "shard-*.tar"), str(out)), nprocs=2, join=True)
    gathered = json.loads(out.read_text())
    shard_of = {n: i // 3 for i, n in enumerate(sorted(PairedFolders(DataConfig(
        files_a=f"{paired}/train/*/blur/*.png", files_b=f"{paired}/train/*/sharp/*.png", bounds=(0.0, 1.0), size=32)).names))}
    for workers in ("0", "2"):
        for rank, g in enumerate(gathered):
            batches = g[workers]
            assert [len(b) for b in batches] == [2] * 6, (workers, rank, batches)
            assert len({shard_of[n] for b in batches for n in b}) >= 2, (workers, rank, batches)


def test_trainer_streams_shards_and_resumes_exactly(shards, tmp_path):
    """train.shards with preload=false streams; 2 steps + resume + 2 steps = 4 steps, with 2 DataLoader workers
    (train_batches_per_epoch=3 with 8 samples of batch 2: the stream crosses trainer epochs and data epochs)."""
    glob = f"train.shards=[{shards / 'gopro' / 'shard-*.tar'}]"

    def cfg(run: str, steps: int) -> TrainConfig:
        return _train_cfg(tmp_path / run, glob, "num_workers=2", f"max_steps={steps}", "num_epochs=3",
                          "train.shuffle_buffer=3")

    straight = Trainer(cfg("a", 5))
    assert straight.streaming
    straight.fit()
    Trainer(cfg("b", 2)).fit()
    resumed = Trainer(cfg("b", 5), resume=True)
    assert resumed.step == 2
    resumed.fit()
    assert straight.step == resumed.step == 5
    fresh = Trainer(cfg("c", 5))
    assert any(not torch.equal(fresh.G.state_dict()[k], v) for k, v in straight.G.state_dict().items())
    for (k, a), b in zip(straight.G.state_dict().items(), resumed.G.state_dict().values()):
        assert torch.equal(a, b), f"{k} differs after resume"


def test_http_urls_of_single_files_and_globs(http_root):
    remote = Remote(cache_gb=0)
    assert remote.glob(f"{http_root}/gopro/shard-000000.tar") == [f"{http_root}/gopro/shard-000000.tar"]
    assert len(remote.glob(f"{http_root}/gopro/*.tar", {".tar"})) == 4
    with pytest.raises(FileNotFoundError, match="missing.png"):
        remote.glob(f"{http_root}/missing.png")


# ----------------------------------------------------------------------------- issue 22: 2a, 2d, 2e, 2h, 2i
def _pair_sample(tar: tarfile.TarFile, key: str, members: dict[str, bytes]) -> None:
    for ext, data in members.items():
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def _ten_shards(root: Path, paired: Path) -> Path:
    """10 shards of one pair each (the 8 pairs, two of them twice under other keys)."""
    files = sorted((paired / "train").glob("*/blur/*.png"))
    root.mkdir(parents=True, exist_ok=True)
    for i in range(10):
        blur = files[i % len(files)]
        with tarfile.open(root / f"shard-{i:06d}.tar", "w") as tar:
            _pair_sample(tar, f"s{i:02d}", {"blur.png": blur.read_bytes(),
                                             "sharp.png": (blur.parent.parent / "sharp" / blur.name).read_bytes()})
    return root


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 4 workers on a small machine
def test_ten_shards_over_four_ranks_of_four_workers_all_get_equal_batches(paired, tmp_path):
    """2a: 10 shards do not divide over 4 ranks x 4 workers; every rank still streams endlessly at the same rate."""
    from deblur.data.dataset import stream_loader

    folder = _ten_shards(tmp_path / "ten", paired)
    cfg = DataConfig(shards=[str(folder / "shard-*.tar")], bounds=(0.0, 1.0), size=32, shuffle_buffer=2)
    per_rank = []
    for rank in range(4):
        loader = iter(stream_loader(ShardStream(cfg, seed=7, rank=rank, world=4, loop=True), 2, num_workers=4))
        batches = []
        for _ in range(5):
            try:
                batches.append(next(loader))
            except (StopIteration, RuntimeError) as e:
                raise AssertionError(f"rank {rank} ran dry after {len(batches)} batches: {e!r}") from e
        per_rank.append([n for b in batches for n in b["name"]])
    assert [len(names) for names in per_rank] == [10] * 4
    # every rank draws from several shards (none cycles a private subset); together they cover all 10
    assert all(len(set(names)) >= 3 for names in per_rank), per_rank
    assert len({n for names in per_rank for n in names}) == 10, per_rank


@pytest.fixture(scope="module")
def shards_with_bad_samples(shards, tmp_path_factory) -> Path:
    """The 4 gopro shards, each with an undecodable sample in front of its 2 good pairs."""
    out = tmp_path_factory.mktemp("bad_every_shard")
    for src in sorted((shards / "gopro").glob("shard-*.tar")):
        with tarfile.open(out / src.name, "w") as tar, tarfile.open(src) as good:
            _pair_sample(tar, f"bad{src.stem[-1]}", {"blur.png": b"not a png", "sharp.png": b"not a png"})
            for m in good.getmembers():
                tar.addfile(m, good.extractfile(m))
    return out


def test_resume_after_a_skipped_bad_sample_gives_the_same_batches(shards_with_bad_samples):
    """2d: a skipped bad sample fills no batch slot, so resuming at batch N must not count it."""
    from deblur.data.dataset import stream_loader

    cfg = DataConfig(shards=[str(shards_with_bad_samples / "shard-*.tar")], bounds=(0.0, 1.0), size=32, shuffle_buffer=3)
    for workers in (0, 2):
        full = iter(stream_loader(ShardStream(cfg, seed=3, loop=True), 2, workers))
        ref = [next(full) for _ in range(8)]
        for start in (3, 5):
            resumed = iter(stream_loader(ShardStream(cfg, seed=3, loop=True), 2, workers, skip_batches=start))
            _same_batches([next(resumed) for _ in range(8 - start)], ref[start:])


def _cut_in_a_header(data: bytes) -> bytes:
    """``data`` (a tar) cut 100 bytes into the header of its third member."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        third = tar.getmembers()[2]
    return data[: third.offset + 100]


@pytest.mark.parametrize("with_manifest", [True, False])
def test_shard_cut_in_a_header_is_an_error_and_never_cached(shards, http_root, tmp_path, with_manifest):
    """2e: tarfile ends quietly at a header cut short; the manifest's sha256 (or the missing end-of-archive
    blocks) must catch it, name the shard, and keep the file out of the read cache."""
    folder = shards / ("cut_manifest" if with_manifest else "cut_bare")
    if not folder.exists():
        folder.mkdir()
        for f in (shards / "gopro").iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
        (folder / "shard-000002.tar").write_bytes(_cut_in_a_header((folder / "shard-000002.tar").read_bytes()))
        if not with_manifest:
            (folder / "manifest.json").unlink()
    cache = tmp_path / "cache"
    for where in (str(folder), f"{http_root}/{folder.name}"):
        cfg = DataConfig(shards=[f"{where}/shard-000002.tar"], bounds=(0.0, 1.0), size=32, shuffle_buffer=0,
                         cache_dir=str(cache), cache_gb=0.01)
        with pytest.raises(ShardError, match="shard-000002.tar"):
            list(ShardStream(cfg, seed=0))
    assert not [p for p in cache.rglob("*") if p.is_file()], "a cut shard entered the read cache"


def test_make_shards_takes_comma_separated_globs_in_both_modes(paired, tmp_path):
    """2h: --blur and --sharp both take several comma-separated globs, paired or sharp-only."""
    blur = f"{paired}/train/clipA/blur/*.png,{paired}/train/clipB/blur/*.png"
    sharp = f"{paired}/train/clipA/sharp/*.png,{paired}/train/clipB/sharp/*.png"
    assert make_shards.main(["--blur", blur, "--sharp", sharp, "--out", str(tmp_path / "p")]) == 0
    assert json.loads((tmp_path / "p" / "manifest.json").read_text())["samples"] == 8
    assert make_shards.main(["--sharp", sharp, "--out", str(tmp_path / "s")]) == 0
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["samples"] == 8


def test_make_shards_uses_only_public_names_of_the_dataset_module():
    """2h: scripts import public helpers only."""
    import ast

    tree = ast.parse((ROOT / "scripts" / "make_shards.py").read_text())
    private = [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("deblur")
               for a in n.names if a.name.startswith("_")]
    assert not private, private


def test_unreachable_s3_endpoint_is_one_clear_error(tmp_path, monkeypatch, capsys):
    """2i: no endpoint answers: one `error:` line that names the masked URL and the fix, no traceback."""
    import signal

    import s3fs

    import train_deblur

    for k, v in {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "testing",
                 "AWS_SECRET_ACCESS_KEY": "testing-secret", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    url = f"s3://{BUCKET}/gopro/shard-*.tar"
    sigterm = signal.getsignal(signal.SIGTERM)
    s3fs.S3FileSystem.clear_instance_cache()  # not the moto server's file system
    try:
        code = train_deblur.main([f"train.shards=[{url}]", "train.timeout=0.5", "train.retries=0", "device=cpu",
                                  f"project={tmp_path}", f"train.cache_dir={tmp_path / 'c'}"])
    finally:
        signal.signal(signal.SIGTERM, sigterm)
        s3fs.S3FileSystem.clear_instance_cache()
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and url in errors[0] and "AWS_ENDPOINT_URL=http://127.0.0.1:9" in errors[0], err
    assert len(err.splitlines()) == 2, err  # the error and the --debug hint
