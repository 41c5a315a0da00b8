"""scripts/fetch_data.py helpers (no downloads)."""

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("fetch_data", Path(__file__).parents[1] / "scripts" / "fetch_data.py")
fetch_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fetch_data)


def test_wallpaper_picks_largest_real_file_within_width(tmp_path):
    for name in ("1080x1920.png", "2560x1600.jpg", "5120x2880.jpg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "1920x1080.jpg").symlink_to(tmp_path / "2560x1600.jpg")
    assert fetch_data.wallpaper_image(tmp_path).name == "2560x1600.jpg"
    (tmp_path / "2560x1600.jpg").unlink()
    (tmp_path / "1920x1080.jpg").unlink()
    (tmp_path / "1080x1920.png").unlink()
    assert fetch_data.wallpaper_image(tmp_path).name == "5120x2880.jpg"  # none fits: the narrowest


def test_copy_is_idempotent_and_disjointness_is_checked(tmp_path):
    src = tmp_path / "a.jpg"
    src.write_bytes(b"photo")
    root = tmp_path / "data"
    assert fetch_data.copy_file(src, root / "train" / "x" / "a.jpg")
    assert not fetch_data.copy_file(src, root / "train" / "x" / "a.jpg")
    fetch_data.copy_file(src, root / "eval" / "photos" / "b.jpg")
    with pytest.raises(RuntimeError, match="b.jpg"):
        fetch_data.check_disjoint(root)
    with pytest.raises(FileNotFoundError, match="missing"):
        fetch_data.copy_file(tmp_path / "missing.jpg", root / "train" / "y.jpg")


def test_copy_photo_shrinks_large_photos_and_copies_small_ones(tmp_path):
    import cv2
    from skimage import data as skdata

    rgb = skdata.astronaut()  # 512 x 512, a real photo
    big, small = tmp_path / "big.png", tmp_path / "small.jpg"
    cv2.imwrite(str(big), cv2.cvtColor(cv2.resize(rgb, (1200, 900)), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(small), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert fetch_data.copy_photo(big, tmp_path / "out" / "big.png", 600)
    assert cv2.imread(str(tmp_path / "out" / "big.png")).shape == (450, 600, 3)
    assert fetch_data.copy_photo(small, tmp_path / "out" / "small.jpg", 600)
    assert (tmp_path / "out" / "small.jpg").read_bytes() == small.read_bytes()  # untouched, not re-encoded
    assert not fetch_data.copy_photo(big, tmp_path / "out" / "big.png", 600)  # idempotent
    with pytest.raises(FileNotFoundError, match="missing"):
        fetch_data.copy_photo(tmp_path / "none.jpg", tmp_path / "out" / "none.jpg", 600)
