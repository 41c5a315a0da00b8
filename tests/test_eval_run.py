"""End to end: eval_detection.py on real photos with the real detector and an identity generator, and
with a fake detector for the bad-image and paired paths."""

import csv
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from configs import load_config
from detect import COCO_NAMES, Detection
from evaluation import EvalConfig, run_blurred_vs_deblurred

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ("report.md", "report.json", "report.csv", "config.yaml", "map_vs_severity.png", "tp_confidence.png",
           "examples.png")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Two real photos with objects YOLOv3-tiny finds (darknet's person/dog from data/eval/photos, else
    Ultralytics' bus/zidane), shrunk to a long side of 512 px to keep the test fast."""
    from detect.assets import package_dir

    sources = [ROOT / "data" / "eval" / "photos" / f"{n}.jpg" for n in ("person", "dog")]
    if not all(p.is_file() for p in sources):
        sources = [package_dir("ultralytics") / "assets" / f"{n}.jpg" for n in ("bus", "zidane")]
    folder = tmp_path_factory.mktemp("photos")
    for src in sources:
        img = cv2.imread(str(src))
        s = 512 / max(img.shape[:2])
        cv2.imwrite(str(folder / src.name), cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA))
    return folder


@pytest.fixture(scope="module")
def identity_weights(tmp_path_factory):
    from deblur.config import GeneratorConfig
    from deblur.models import build_generator, save_generator

    cfg = GeneratorConfig(zero_init_last=True)  # the untrained generator is the identity
    path = tmp_path_factory.mktemp("weights") / "identity.pt"
    save_generator(build_generator(cfg), cfg, path)
    return path


def test_cli_end_to_end_identity_generator(photos, identity_weights, tmp_path, capsys):
    sys.path.insert(0, str(ROOT))
    import eval_detection

    out = tmp_path / "run"
    rc = eval_detection.main([
        "blurred_vs_deblurred", "--limit", "2", "--out", str(out), "--quiet",
        f"data.sources=[{photos}/*.jpg]", "blur.severities=[2]", f"deblur.weights={identity_weights}", "deblur.runtime=torch",
        "bootstrap=50", "n_examples=2",
    ])
    assert rc == 0
    for name in OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    printed = capsys.readouterr().out
    assert "| 2 | deblurred |" in printed and "Ground truth: pseudo" in printed

    report = json.loads((out / "report.json").read_text())
    assert report["ground_truth"]["kind"] == "pseudo" and report["data"]["n_images"] == 2
    assert report["deblur"]["sha256"] and report["detector"]["sha256"]
    res = report["results"]["2"]
    assert set(res) == {"sharp", "blurred", "deblurred", "unsharp", "wiener"}
    for cond, entry in res.items():
        for key in ("map50", "map50_95", "precision", "recall", "mean_conf_tp", "psnr", "ssim"):
            assert key in entry, (cond, key)
        assert "person" in entry["per_class"]
    assert res["sharp"]["map50"] == pytest.approx(1.0)
    # the identity generator gives back the blurred image: every number is the blurred one
    for key in ("map50", "map50_95", "precision", "recall", "mean_conf_tp", "n_det", "psnr", "ssim", "map50_ci"):
        assert res["deblurred"][key] == res["blurred"][key], key
    assert res["deblurred"]["delta_map50"] == 0.0
    assert "recovery_map50" in res["deblurred"] and "recovery_map50_ci" in res["deblurred"]
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert len(rows) == 5 and rows[0]["condition"] == "sharp"
    md = (out / "report.md").read_text()
    assert "| 2 | deblurred |" in md
    person = res["deblurred"]["per_class"]["person"]  # per class: AP at IoU 0.5 and over 0.5:0.95
    assert f"| 2 | deblurred | {person['ap50']:.3f} / {person['ap50_95']:.3f} |" in md

    # runs compare side by side only when they share data, blur and detector
    from evaluation.compare import compare_table

    table = compare_table({"a": report, "b": report})
    assert "| 2 | blurred |" in table and "| 2 | a |" in table and "| mean | b |" in table
    a_row = next(line for line in table.splitlines() if line.startswith("| 2 | a |"))
    assert f"{res['deblurred']['map50']:.3f}" in a_row
    other = json.loads(json.dumps(report))
    other["blur"]["seed"] = 1
    with pytest.raises(ValueError, match="differ in blur.seed"):
        compare_table({"a": report, "b": other})

    # a second run reuses the cached sharp detections
    cfg = load_config(EvalConfig, out / "config.yaml", ["methods=[unsharp]", "bootstrap=0", "n_examples=0"])
    again = run_blurred_vs_deblurred(cfg, progress=False)
    assert again["timing"]["sharp_cache_hits"] == 2
    assert again["results"]["2"]["blurred"]["map50"] == res["blurred"]["map50"]

    # blur in linear light (as a camera): other blurred images, said in the report, not comparable with sRGB blur
    cfg = load_config(EvalConfig, out / "config.yaml", ["methods=[unsharp]", "bootstrap=0", "n_examples=0",
                                                        "blur.linear=true", f"out={tmp_path / 'linear'}"])
    linear = run_blurred_vs_deblurred(cfg, progress=False)
    assert linear["blur"]["linear"] is True and "in linear light" in (tmp_path / "linear" / "report.md").read_text()
    assert abs(linear["results"]["2"]["blurred"]["psnr"] - res["blurred"]["psnr"]) > 0.05
    with pytest.raises(ValueError, match="differ in blur.linear"):
        compare_table({"a": report, "b": linear})


class FakeDetector:
    """Two fixed boxes on any frame; boxes shrink when the frame is darker (so conditions can differ)."""

    names = list(COCO_NAMES)

    def __init__(self):
        self.calls = 0

    def __call__(self, frames):
        self.calls += len(frames)
        out = []
        for f in frames:
            s = float(f.mean()) / 255.0
            out.append([Detection((10.0, 10.0, 10 + 40 * s + 10, 50.0), 0.9, 0, "person"),
                        Detection((60.0, 5.0, 90.0, 40.0), 0.6 * s + 0.2, 2, "car")])
        return out


def test_bad_image_is_skipped_and_counted(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for k in range(3):
        cv2.imwrite(str(folder / f"p{k}.jpg"), np.full((64, 96, 3), 100 + 40 * k, np.uint8))
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    cfg = load_config(EvalConfig, overrides=[f"data.sources=[{folder}/*.jpg]", f"out={tmp_path / 'out'}",
                                             "methods=[unsharp,wiener]", "blur.severities=[1,3]", "bootstrap=20"])
    report = run_blurred_vs_deblurred(cfg, detector=FakeDetector(), progress=False)
    assert report["data"]["n_skipped"] == 1 and "broken" in report["data"]["skipped"][0]
    assert report["data"]["n_images"] == 3
    assert any("skipped" in n for n in report["notes"])
    assert "broken" in (tmp_path / "out" / "report.md").read_text()


def test_paired_real_blur_with_fake_detector(tmp_path):
    for seq in ("A", "B"):
        for kind, value in (("sharp", 200), ("blur", 60)):
            (tmp_path / "d" / seq / kind).mkdir(parents=True)
            for i in range(3):
                cv2.imwrite(str(tmp_path / "d" / seq / kind / f"{i:04d}.png"), np.full((64, 96, 3), value, np.uint8))
    cfg = load_config(EvalConfig, overrides=[
        "data.format=paired", f"data.sources=[{tmp_path}/d/*/sharp/*.png]", f"data.blurred={tmp_path}/d/*/blur/*.png",
        f"out={tmp_path / 'out'}", "methods=[unsharp,wiener]", "bootstrap=20"])
    report = run_blurred_vs_deblurred(cfg, detector=FakeDetector(), progress=False)
    assert list(report["results"]) == ["real"] and report["conditions"] == ["sharp", "blurred", "unsharp"]
    assert any("wiener left out" in n for n in report["notes"])
    assert report["data"]["n_blocks"] == 2  # one block per sequence folder
    res = report["results"]["real"]
    assert res["sharp"]["map50_95"] == pytest.approx(1.0) and res["blurred"]["map50_95"] < 1.0


def test_missing_default_weights_is_a_clear_error(tmp_path, monkeypatch):
    import deblur.models

    monkeypatch.setattr(deblur.models, "DEFAULT_DEBLURRER", tmp_path / "none.pt")
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), np.full((64, 96, 3), 100, np.uint8))
    cfg = load_config(EvalConfig, overrides=[f"data.sources=[{folder}/*.jpg]", f"out={tmp_path / 'out'}"])
    with pytest.raises(FileNotFoundError, match="deblur.weights.*methods=\\[unsharp,wiener\\]"):
        run_blurred_vs_deblurred(cfg, detector=FakeDetector(), progress=False)


def test_compare_models_in_one_run_paired(tmp_path, identity_weights, capsys):
    """deblur.compare scores more generators on the same images and resamples: a copy of the main model
    differs from it by exactly 0 (interval [0, 0]); another model's differences agree with its own rows."""
    import torch

    from deblur.config import GeneratorConfig
    from deblur.models import build_generator, save_generator

    torch.manual_seed(0)
    cfg_g = GeneratorConfig(zero_init_last=False)  # an untrained residual: changes the image
    other = save_generator(build_generator(cfg_g), cfg_g, tmp_path / "other.pt")
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(4):
        cv2.imwrite(str(folder / f"p{k}.png"), rng.integers(40 + 30 * k, 120 + 30 * k, (64, 96, 3), dtype=np.uint8))
    out = tmp_path / "out"
    cfg = load_config(EvalConfig, overrides=[
        f"data.sources=[{folder}/*.png]", f"out={out}", "methods=[deblurred]", f"deblur.weights={identity_weights}",
        "deblur.runtime=torch", f"deblur.compare={{same: {identity_weights}, other: {other}}}", "blur.severities=[2]",
        "bootstrap=30", "n_examples=0"])
    report = run_blurred_vs_deblurred(cfg, detector=FakeDetector(), progress=False)
    assert report["conditions"] == ["sharp", "blurred", "deblurred", "same", "other"]
    assert set(report["compare"]) == {"same", "other"} and report["compare"]["other"]["sha256"]
    res = report["results"]["2"]
    assert "vs_deblurred" not in res["deblurred"]
    same, diff = res["same"]["vs_deblurred"], res["other"]["vs_deblurred"]
    assert same["delta_map50_95"] == 0.0 and same["delta_map50_95_ci"] == [0.0, 0.0] and same["delta_psnr"] == 0.0
    assert diff["delta_map50_95"] == pytest.approx(res["other"]["map50_95"] - res["deblurred"]["map50_95"], abs=1e-9)
    assert diff["delta_psnr"] == pytest.approx(res["other"]["psnr"] - res["deblurred"]["psnr"], abs=1e-6)
    assert diff["delta_psnr"] != 0.0 and diff["delta_psnr_ci"][0] <= diff["delta_psnr_ci"][1]
    md = (out / "report.md").read_text()
    assert "Other models against deblurred" in md and "| 2 | other |" in md and str(other) in md
    rows = {r["condition"]: r for r in csv.DictReader((out / "report.csv").open())}
    assert float(rows["other"]["vs_deblurred_delta_psnr"]) == pytest.approx(diff["delta_psnr"])
    assert rows["deblurred"]["vs_deblurred_delta_psnr"] == ""
    # the models of one run side by side: one condition per label
    from evaluation.compare import main as compare_main

    assert compare_main([str(out), str(out), "--condition", "deblurred", "other"]) == 0
    table = capsys.readouterr().out
    other_row = next(line for line in table.splitlines() if line.startswith("| 2 | other |"))
    assert f"{res['other']['map50_95']:.3f}" in other_row and "| mean | deblurred |" in table


@pytest.mark.parametrize("compare,err,match", [
    ("{blurred: x.pt}", ValueError, "deblur.compare: label 'blurred'"),
    ("{'a b': x.pt}", ValueError, "label 'a b'"),
    ("{tuned: missing.pt}", FileNotFoundError, r"deblur.compare.tuned: no weights at missing.pt"),
])
def test_compare_bad_labels_and_paths_are_clear_errors(tmp_path, compare, err, match):
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), np.full((64, 96, 3), 100, np.uint8))
    with pytest.raises(err, match=match):
        cfg = load_config(EvalConfig, overrides=[f"data.sources=[{folder}/*.jpg]", f"out={tmp_path / 'out'}",
                                                 "methods=[unsharp]", f"deblur.compare={compare}"])
        run_blurred_vs_deblurred(cfg, detector=FakeDetector(), progress=False)
