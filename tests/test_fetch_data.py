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
