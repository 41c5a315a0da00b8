"""Datasets: paired folders and on-the-fly synthetic blur (deblur/data/dataset.py)."""

import random

import cv2
import numpy as np
import pytest
import torch

from deblur.config import BlurConfig, DataConfig
from deblur.data.dataset import PairedFolders, SyntheticBlur, _split_key, build_dataset

# a delta kernel and no noise: the "blurred" image must equal the sharp one exactly
IDENTITY_BLUR = BlurConfig(kinds={"linear": 1.0, "trajectory": 0.0, "imagenet_c": 0.0}, linear_length=(1, 1),
                           noise_sigma=(0.0, 0.0))  # fmt: skip


def smooth_image(seed: int, h: int = 80, w: int = 96) -> np.ndarray:
    """(h,w,3) uint8 with structure at several scales (so blur changes it)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h // 8, w // 8, 3)).astype(np.uint8)
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(img.astype(int) + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)


def make_paired_tree(root, scenes=("s1", "s2"), n=4):
    """GoPro layout train/<scene>/{blur,sharp}/NNN.png; blur is value v, sharp v + 1 (v unique per pair)."""
    jobs = []
    for si, scene in enumerate(scenes):
        for i in range(n):
            v = 10 * (si * n + i) + 5
            jobs.append((root / "train" / scene / "blur" / f"{i:03d}.png", v))
            jobs.append((root / "train" / scene / "sharp" / f"{i:03d}.png", v + 1))
    random.Random(0).shuffle(jobs)  # creation order must not matter
    for path, v in jobs:
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.full((40, 48, 3), v, np.uint8))
    return root


def paired_cfg(root, **kw):
    kw.setdefault("bounds", (0.0, 1.0))
    return DataConfig(files_a=str(root / "train/*/blur/*.png"), files_b=str(root / "train/*/sharp/*.png"),
                      size=32, **kw)  # fmt: skip


def to_u8(x: torch.Tensor) -> np.ndarray:
    return ((x + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def test_paired_folders_match_by_relative_path(tmp_path):
    make_paired_tree(tmp_path)
    ds = PairedFolders(paired_cfg(tmp_path), seed=0)
    assert len(ds) == 8
    assert sorted(ds.names) == [f"{s}/{i:03d}.png" for s in ("s1", "s2") for i in range(4)]
    for i in range(len(ds)):
        item = ds[i]
        assert item["blur"].shape == (3, 32, 32) and item["blur"].dtype == torch.float32
        blur, sharp = to_u8(item["blur"]), to_u8(item["sharp"])
        assert (sharp.astype(int) - blur.astype(int) == 1).all(), item["name"]


def test_paired_folders_mismatch_lists_names(tmp_path):
    make_paired_tree(tmp_path)
    (tmp_path / "train/s2/sharp/001.png").unlink()
    extra = tmp_path / "train/s1/sharp/099.png"
    cv2.imwrite(str(extra), np.zeros((40, 48, 3), np.uint8))
    with pytest.raises(ValueError) as e:
        PairedFolders(paired_cfg(tmp_path))
    assert "s2/001.png" in str(e.value) and "s1/099.png" in str(e.value)


def test_empty_glob_names_the_glob(tmp_path):
    cfg = DataConfig(files_a=str(tmp_path / "nothing/*.png"), files_b=str(tmp_path / "nothing/*.png"))
    with pytest.raises(FileNotFoundError, match="nothing"):
        PairedFolders(cfg)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        SyntheticBlur(DataConfig(sources=[str(tmp_path / "nowhere/**/*.jpg")]))


def test_hash_split_is_disjoint_and_covering(tmp_path):
    make_paired_tree(tmp_path, scenes=("a", "b", "c", "d"), n=6)
    train = PairedFolders(paired_cfg(tmp_path, bounds=(0.0, 0.6)))
    val = PairedFolders(paired_cfg(tmp_path, bounds=(0.6, 1.0)))
    assert not set(train.names) & set(val.names)
    assert len(train) + len(val) == 24
    # stable: the same split on a rebuilt dataset
    assert PairedFolders(paired_cfg(tmp_path, bounds=(0.0, 0.6))).names == train.names


def test_frame_files_split_in_blocks():
    assert _split_key("bikes/bikes_000105.jpg") == _split_key("bikes/bikes_000195.jpg") == "bikes/bikes#1"
    assert _split_key("photos/dog.jpg") == "photos/dog.jpg"


@pytest.fixture()
def photo_dir(tmp_path):
    for i in range(6):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), smooth_image(i))
    cv2.imwrite(str(tmp_path / "small.jpg"), smooth_image(9, 30, 40))  # smaller than the crop
    return tmp_path


def synth_cfg(root, **kw):
    kw.setdefault("bounds", (0.0, 1.0))
    kw.setdefault("size", 64)
    return DataConfig(sources=[str(root / "*.png"), str(root / "*.jpg")], **kw)


def test_synthetic_blur_items(photo_dir):
    ds = build_dataset(synth_cfg(photo_dir), seed=3)
    assert isinstance(ds, SyntheticBlur) and len(ds) == 7
    for i in range(len(ds)):
        item = ds[i]
        for key in ("blur", "sharp"):
            x = item[key]
            assert x.shape == (3, 64, 64) and x.dtype == torch.float32
            assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
        assert not torch.equal(item["blur"], item["sharp"])
        assert (item["blur"] - item["sharp"]).abs().mean() > 0.005


def test_synthetic_blur_determinism(photo_dir):
    a, b = SyntheticBlur(synth_cfg(photo_dir), seed=1), SyntheticBlur(synth_cfg(photo_dir), seed=1)
    for i in (0, 3):
        assert torch.equal(a[i]["blur"], b[i]["blur"]) and torch.equal(a[i]["sharp"], b[i]["sharp"])
    x0 = a[2]["blur"]
    a.set_epoch(1)
    assert not torch.equal(a[2]["blur"], x0)
    assert not torch.equal(SyntheticBlur(synth_cfg(photo_dir), seed=2)[2]["blur"], x0)
    # centre-cropped (val) datasets do not change with the epoch
    val = SyntheticBlur(synth_cfg(photo_dir, crop="center", flip=False), seed=0)
    v0 = val[1]["blur"]
    val.set_epoch(5)
    assert torch.equal(val[1]["blur"], v0)


def test_geometric_augmentation_is_identical_on_both(photo_dir):
    ds = SyntheticBlur(synth_cfg(photo_dir, blur=IDENTITY_BLUR, flip=True, scale=(0.8, 1.2)), seed=0)
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            assert torch.equal(item["blur"], item["sharp"]), (epoch, i)


def test_paired_geometric_augmentation_is_identical(tmp_path):
    for scene in ("x",):
        for i in range(3):
            img = smooth_image(i)
            for sub in ("blur", "sharp"):
                p = tmp_path / "train" / scene / sub / f"{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(p), img)
    ds = PairedFolders(paired_cfg(tmp_path, flip=True))
    for i in range(len(ds)):
        item = ds[i]
        assert torch.equal(item["blur"], item["sharp"])


def test_video_source(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 80, "yuv420p"
        for i in range(12):
            frame = av.VideoFrame.from_ndarray(smooth_image(i), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    ds = SyntheticBlur(DataConfig(sources=[str(tmp_path / "*.mp4")], size=48, bounds=(0.0, 1.0), video_frame_step=5))
    assert ds.names == ["clip.mp4#000000", "clip.mp4#000005", "clip.mp4#000010"]
    assert ds[1]["blur"].shape == (3, 48, 48)


def test_corrupt_names_are_validated(photo_dir):
    with pytest.raises(ValueError, match="Did you mean 'jpeg'"):
        SyntheticBlur(synth_cfg(photo_dir, corrupt=["jepg"]))
    ds = SyntheticBlur(synth_cfg(photo_dir, blur=IDENTITY_BLUR, corrupt=["jpeg", "rgb_shift"]), seed=0)
    changed = 0
    for i in range(len(ds)):
        item = ds[i]
        changed += not torch.equal(item["blur"], item["sharp"])
        again = ds[i]
        assert torch.equal(item["blur"], again["blur"])  # corrupt is deterministic per item too
    assert 0 < changed  # the sharp target is never corrupted; about half the inputs are


def test_preload_shrinks(photo_dir):
    ds = SyntheticBlur(synth_cfg(photo_dir, preload=True, preload_size=50, size=32), seed=0)
    assert all(min(s.shape[:2]) <= 50 for s in ds._sources)
    assert ds[0]["sharp"].shape == (3, 32, 32)


def test_sources_with_the_same_relative_names_are_all_kept(tmp_path):
    """a/x.png and b/x.png from two globs are two images; one file matched twice is one."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "x.png"), smooth_image(len(folder)))
    cfg = DataConfig(sources=[str(tmp_path / "a/*.png"), str(tmp_path / "b/*.png"), str(tmp_path / "*/x.png")],
                     bounds=(0.0, 1.0), size=32)
    ds = SyntheticBlur(cfg)
    assert len(ds) == 2 and len(set(ds.names)) == 2 and "x.png" in ds.names


# held by a thread of the test process while DataLoader workers start: a worker forked from this process would
# inherit it held (as it would a thread pool's lock in OpenVINO, ONNX Runtime or torch) and wait forever
_HELD = __import__("threading").Lock()


class _NeedsTheLock(torch.utils.data.Dataset):
    def set_epoch(self, key):
        pass

    def __getitem__(self, index):
        if not _HELD.acquire(timeout=5.0):
            raise RuntimeError("a lock held by the parent process's thread was inherited")
        _HELD.release()
        return {"blur": torch.zeros(3, 2, 2), "sharp": torch.zeros(3, 2, 2), "name": str(index)}


def test_workers_do_not_inherit_the_locks_of_this_process_threads():
    import threading

    from deblur.data.dataset import batch_loader

    held, done = threading.Event(), threading.Event()

    def hold():
        with _HELD:
            held.set()
            done.wait(60)

    threading.Thread(target=hold, daemon=True).start()
    held.wait(5)
    try:
        batches = list(batch_loader(_NeedsTheLock(), [(0, [0, 1]), (0, [2])], num_workers=2))
    finally:
        done.set()
    assert [b["name"] for b in batches] == [["0", "1"], ["2"]]
