"""Evaluation-set loaders (YOLO, COCO json, paired, images/video) and their bad-input errors; conditions."""

import json

import cv2
import numpy as np
import pytest

from configs import ConfigError, load_config
from detect import COCO_NAMES
from evaluation.conditions import blur_image, blur_kernel, psnr, ssim, stable_seed, unsharp, wiener
from evaluation.config import EvalBlurConfig, EvalConfig, EvalDataConfig
from evaluation.data import FrameReader, ground_truth_boxes, load_eval_set, spread_subset

NAMES = list(COCO_NAMES)


def _img(path, h=64, w=96, value=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(path.name)) % 1000)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8) if value is None else np.full((h, w, 3), value, np.uint8)
    cv2.imwrite(str(path), img)
    return img


def _yolo_set(root):
    _img(root / "images" / "a.jpg")
    _img(root / "images" / "b.jpg")
    (root / "labels").mkdir(parents=True)
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.25 0.5\n1 0.1 0.1 0.1 0.1\n")
    (root / "data.yaml").write_text("names: {0: person, 1: motorcycle}\n")  # COCO-2017 spelling


def test_yolo_loader(tmp_path):
    _yolo_set(tmp_path / "ds")
    cfg = EvalDataConfig(format="yolo", sources=[str(tmp_path / "ds")], names=str(tmp_path / "ds" / "data.yaml"))
    s = load_eval_set(cfg, NAMES)
    assert s.labelled and [x.name for x in s.samples] == ["a", "b"]
    gt = ground_truth_boxes(s.samples[0], 64, 96)
    assert gt.cls.tolist() == [0, NAMES.index("motorbike")]  # mapped by name onto the detector's spelling
    assert np.allclose(gt.xyxy[0], [36, 16, 60, 48])
    assert len(ground_truth_boxes(s.samples[1], 64, 96)) == 0  # no label file: background image


def test_yolo_bad_inputs(tmp_path):
    root = tmp_path / "ds"
    _yolo_set(root)
    names = str(root / "data.yaml")
    (root / "labels" / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(FileNotFoundError, match="missing images.*ghost.txt"):
        load_eval_set(EvalDataConfig(format="yolo", sources=[str(root)], names=names), NAMES)
    (root / "labels" / "ghost.txt").unlink()
    (root / "labels" / "b.txt").write_text("7 0.5 0.5 0.1 0.1\n")
    with pytest.raises(ValueError, match=r"b.txt:1: class id 7 is out of range: valid ids are 0..1"):
        load_eval_set(EvalDataConfig(format="yolo", sources=[str(root)], names=names), NAMES)
    (root / "labels" / "b.txt").write_text("0 0.5 0.5\n")
    with pytest.raises(ValueError, match="cls cx cy w h"):
        load_eval_set(EvalDataConfig(format="yolo", sources=[str(root)], names=names), NAMES)
    with pytest.raises(FileNotFoundError, match="no images/ folder"):
        load_eval_set(EvalDataConfig(format="yolo", sources=[str(tmp_path / "nope")]), NAMES)


def test_coco_loader_and_errors(tmp_path):
    _img(tmp_path / "imgs" / "x.jpg")
    _img(tmp_path / "imgs" / "y.jpg")
    data = {
        "images": [{"id": 1, "file_name": "x.jpg"}, {"id": 2, "file_name": "y.jpg"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 20, 30, 40], "iscrowd": 0}],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
    }
    ann = tmp_path / "inst.json"
    ann.write_text(json.dumps(data))
    cfg = EvalDataConfig(format="coco", sources=[str(tmp_path / "imgs")], annotations=str(ann))
    s = load_eval_set(cfg, NAMES)
    gt = ground_truth_boxes(s.samples[0], 64, 96)
    assert gt.cls.tolist() == [NAMES.index("car")] and np.allclose(gt.xyxy[0], [10, 20, 40, 60])

    data["annotations"][0]["category_id"] = 9
    ann.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="category_id 9, out of range"):
        load_eval_set(cfg, NAMES)
    data["annotations"][0]["category_id"] = 3
    data["images"].append({"id": 3, "file_name": "gone.jpg"})
    ann.write_text(json.dumps(data))
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        load_eval_set(cfg, NAMES)


def test_empty_set_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="evaluation set is empty.*fetch_data"):
        load_eval_set(EvalDataConfig(sources=[str(tmp_path / "*.jpg")]), NAMES)


def test_images_sequences_video_and_limit(tmp_path):
    for i in range(0, 60, 5):
        _img(tmp_path / "v" / f"vtest_{i:06d}.jpg")
    _img(tmp_path / "p" / "dog.jpg")
    _img(tmp_path / "p" / "kite.jpg")
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 64))
    for k in range(12):
        writer.write(np.full((64, 96, 3), 20 * k, np.uint8))
    writer.release()
    cfg = EvalDataConfig(sources=[str(tmp_path / "v" / "*.jpg"), str(tmp_path / "p" / "*.jpg"), str(video)],
                         video_frame_step=4)
    s = load_eval_set(cfg, NAMES)
    seqs = [x.sequence for x in s.samples]
    assert len(set(seqs[:12])) == 1 and seqs[12] != seqs[13]  # frames share a sequence, photos do not
    frames = [x for x in s.samples if x.frame >= 0]
    assert [x.frame for x in frames] == [0, 4, 8] and len({x.sequence for x in frames}) == 1
    with FrameReader() as reader:
        assert reader.read(frames[1].path, frames[1].frame).mean() == pytest.approx(80, abs=3)
        assert reader.read(frames[0].path, frames[0].frame).mean() == pytest.approx(0, abs=3)
    sub = spread_subset(s.samples, 6)  # 12 frames, 2 photos, 1 video: every sequence gets its share
    assert len(sub) == 6 and {x.sequence for x in sub} == set(seqs)
    frames_kept = [x for x in sub if x.sequence == seqs[0]]
    assert len(frames_kept) == 2 and frames_kept[0] is s.samples[0] and frames_kept[1] is s.samples[11]


def test_every_image_suffix_the_pipeline_reads_is_an_eval_image(tmp_path):
    """One list of image suffixes (configs.IMAGE_EXTENSIONS): a folder the pipeline plays as --source is
    the same set of images here (the evaluation once skipped .ppm/.pgm files the pipeline read)."""
    from pipeline.sources import open_source

    for name in ("a.jpg", "b.ppm", "c.PNG", "d.tiff"):
        _img(tmp_path / "set" / name)
    (tmp_path / "set" / "notes.txt").write_text("not an image")
    s = load_eval_set(EvalDataConfig(format="images", sources=[str(tmp_path / "set")]), NAMES)
    assert sorted(x.path.rsplit("/", 1)[-1] for x in s.samples) == ["a.jpg", "b.ppm", "c.PNG", "d.tiff"]
    assert [str(p) for p in open_source(str(tmp_path / "set")).files] == sorted(x.path for x in s.samples)


def test_paired_loader(tmp_path):
    for seq in ("GOPR01", "GOPR02"):
        for i in (1, 2):
            _img(tmp_path / seq / "sharp" / f"{i:06d}.png")
            _img(tmp_path / seq / "blur" / f"{i:06d}.png")
    cfg = EvalDataConfig(format="paired", sources=[str(tmp_path / "*" / "sharp" / "*.png")],
                         blurred=str(tmp_path / "*" / "blur" / "*.png"))
    s = load_eval_set(cfg, NAMES)
    assert [x.name for x in s.samples] == ["GOPR01/000001", "GOPR01/000002", "GOPR02/000001", "GOPR02/000002"]
    assert s.samples[0].sequence == s.samples[1].sequence != s.samples[2].sequence
    assert "blur" in s.samples[0].blurred_path and not s.labelled
    (tmp_path / "GOPR02" / "blur" / "000002.png").unlink()
    with pytest.raises(ValueError, match="without a blurred partner"):
        load_eval_set(cfg, NAMES)


def test_config_checks():
    with pytest.raises(ConfigError, match="method 'deblur' is unknown"):
        load_config(EvalConfig, overrides=["methods=[deblur]"])
    with pytest.raises(ConfigError, match="operating_conf"):
        load_config(EvalConfig, overrides=["detector.conf=0.5"])
    with pytest.raises(ConfigError, match="'severities' must be in"):
        load_config(EvalConfig, overrides=["blur.severities=[6]"])
    with pytest.raises(ConfigError, match="annotations"):
        load_config(EvalConfig, overrides=["data.format=coco"])


def test_blur_is_seeded_and_methods_behave():
    cfg = EvalBlurConfig()
    assert stable_seed(0, "a", 3) == stable_seed(0, "a", 3) != stable_seed(0, "a", 4)
    assert np.array_equal(blur_kernel(cfg, "img", 3), blur_kernel(cfg, "img", 3))
    assert not np.array_equal(blur_kernel(cfg, "img", 3), blur_kernel(cfg, "img2", 3))
    from skimage import data

    sharp = cv2.cvtColor(data.astronaut()[::2, ::2], cv2.COLOR_RGB2BGR).copy()
    for kind in ("imagenet_c", "shake", "trajectory"):
        k = blur_kernel(EvalBlurConfig(kind=kind), "astro", 3)
        blurred = blur_image(sharp, k)
        assert blurred.dtype == np.uint8 and blurred.shape == sharp.shape
        assert psnr(wiener(blurred, k, 0.002), sharp) > psnr(blurred, sharp) + 3  # the oracle helps
    assert unsharp(blurred, 1.5, 2.0).shape == sharp.shape


def test_ssim_matches_skimage():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)
    b = cv2.GaussianBlur(a, (5, 5), 1.5)
    assert ssim(b, a) == pytest.approx(structural_similarity(a, b, channel_axis=-1, data_range=255), abs=1e-6)
    assert psnr(b, a) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), abs=1e-9)
    assert psnr(a, a) == float("inf") and ssim(a, a) == pytest.approx(1.0)


def test_colliding_stems_rename_only_the_colliding_samples(tmp_path):
    """a/x.jpg and b/x.jpg fall back to their paths; every other sample keeps its name (its blur seed, its cache)."""
    for folder, name in (("a", "x"), ("b", "x"), ("a", "dog"), ("b", "kite")):
        _img(tmp_path / folder / f"{name}.jpg")
    cfg = EvalDataConfig(sources=[str(tmp_path / "a/*.jpg"), str(tmp_path / "b/*.jpg")])
    names = sorted(s.name for s in load_eval_set(cfg, COCO_NAMES).samples)
    assert "dog" in names and "kite" in names
    assert sorted(n for n in names if n not in ("dog", "kite")) == sorted(str(tmp_path / f / "x.jpg") for f in "ab")
