"""Our COCO-style AP against faster-coco-eval, recovery math and the block bootstrap."""

import math

import numpy as np
import pytest

from evaluation.bootstrap import block_bootstrap_weights, make_blocks, percentile_interval
from evaluation.matching import Boxes, average_precision, match_all, mean_ap, operating_point
from evaluation.scoring import recovery_fraction


def _synthetic_case(seed=0, n_images=6, n_classes=3):
    """Ground truth and jittered, partly wrong detections with distinct scores (no ties)."""
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    scores = iter(rng.permutation(np.linspace(0.01, 0.99, 2000)))
    for i in range(n_images):
        n = int(rng.integers(1 if i else 0, 7))
        xy = rng.uniform(0, 400, (n, 2))
        wh = rng.uniform(20, 150, (n, 2))
        g_xyxy = np.concatenate([xy, xy + wh], 1)
        g_cls = rng.integers(0, n_classes, n)
        gts.append(Boxes.make(g_xyxy, g_cls))
        d_xyxy, d_cls = [], []
        for box, c in zip(g_xyxy, g_cls):
            for _ in range(int(rng.integers(0, 3))):  # 0, 1 or 2 detections per object (duplicates)
                d_xyxy.append(box + rng.normal(0, 0.08 * (box[2] - box[0]), 4))
                d_cls.append(c if rng.random() > 0.15 else (c + 1) % n_classes)
        for _ in range(int(rng.integers(0, 4))):  # false positives
            xy = rng.uniform(0, 400, 2)
            d_xyxy.append(np.concatenate([xy, xy + rng.uniform(20, 100, 2)]))
            d_cls.append(int(rng.integers(0, n_classes)))
        d_xyxy = np.array(d_xyxy).reshape(-1, 4)
        d_xyxy[:, 2:] = np.maximum(d_xyxy[:, 2:], d_xyxy[:, :2] + 1)
        dets.append(Boxes.make(d_xyxy, d_cls, [next(scores) for _ in d_cls]))
    return gts, dets


def _faster_coco_eval(gts, dets, n_classes):
    from faster_coco_eval import COCO, COCOeval_faster

    images, anns, results = [], [], []
    for i, (g, d) in enumerate(zip(gts, dets)):
        images.append({"id": i + 1, "width": 640, "height": 640, "file_name": f"{i}.jpg"})
        for (x1, y1, x2, y2), c in zip(g.xyxy.tolist(), g.cls.tolist()):
            w, h = x2 - x1, y2 - y1
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": c + 1, "bbox": [x1, y1, w, h],
                         "area": w * h, "iscrowd": 0})
        for (x1, y1, x2, y2), c, s in zip(d.xyxy.tolist(), d.cls.tolist(), d.conf.tolist()):
            results.append({"image_id": i + 1, "category_id": c + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": c + 1, "name": f"c{c}"} for c in range(n_classes)]}
    gt.createIndex()
    dt = gt.loadRes(results)
    ev = COCOeval_faster(gt, dt, iouType="bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats[1], ev.stats[0]  # AP50, AP50:95


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ap_matches_faster_coco_eval(seed):
    n_classes = 3
    gts, dets = _synthetic_case(seed, n_classes=n_classes)
    classes = sorted({int(c) for g in gts for c in g.cls})
    tables = match_all(gts, dets, classes)
    ap = mean_ap(tables)
    ref50, ref5095 = _faster_coco_eval(gts, dets, n_classes)
    assert abs(ap[0] - ref50) < 1e-3, (ap[0], ref50)
    assert abs(ap.mean() - ref5095) < 1e-3, (ap.mean(), ref5095)
    assert 0.1 < ap[0] < 1.0  # the case is neither trivial nor hopeless


def test_perfect_and_empty_detections():
    gts = [Boxes.make([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 1]), Boxes.make([[5, 5, 50, 50]], [0])]
    perfect = [Boxes.make(g.xyxy, g.cls, [0.9] * len(g)) for g in gts]
    assert np.allclose(mean_ap(match_all(gts, perfect, [0, 1])), 1.0)
    nothing = [Boxes.empty(), Boxes.empty()]
    tables = match_all(gts, nothing, [0, 1])
    assert np.allclose(mean_ap(tables), 0.0)
    op = operating_point(tables, 0.25)
    assert op["recall"] == 0 and op["n_det"] == 0 and math.isnan(op["precision"])


def test_weights_equal_duplicated_images():
    """AP with image multiplicities (bootstrap) == AP on the set with those images repeated."""
    gts, dets = _synthetic_case(3)
    classes = sorted({int(c) for g in gts for c in g.cls})
    counts = np.array([2, 0, 1, 3, 0, 1])
    rep = [i for i, c in enumerate(counts) for _ in range(c)]
    direct = mean_ap(match_all([gts[i] for i in rep], [dets[i] for i in rep], classes))
    weighted = mean_ap(match_all(gts, dets, classes), counts[None, :])[0]
    assert np.allclose(direct, weighted, atol=1e-9)


def test_operating_point_counts():
    gts = [Boxes.make([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 0])]
    dets = [Boxes.make([[0, 0, 10, 10], [0, 0, 10, 11], [100, 100, 120, 120], [20, 20, 40, 40]], [0, 0, 0, 0],
                       [0.9, 0.8, 0.7, 0.1])]
    op = operating_point(match_all(gts, dets, [0]), 0.25)
    assert op["n_det"] == 3 and op["n_tp"] == 1  # duplicate and stray box are false positives; 0.1 is below
    assert op["precision"] == pytest.approx(1 / 3) and op["recall"] == pytest.approx(0.5)
    assert op["mean_conf_tp"] == pytest.approx(0.9)


def test_recovery_fraction():
    assert recovery_fraction(0.8, 0.4, 0.6, 0.01) == pytest.approx(0.5)
    assert recovery_fraction(0.8, 0.4, 0.3, 0.01) == pytest.approx(-0.25)  # harmful
    assert recovery_fraction(0.8, 0.4, 0.9, 0.01) == pytest.approx(1.25)  # better than sharp
    assert math.isnan(recovery_fraction(0.5, 0.4995, 0.6, 0.01))  # no gap to recover
    vec = recovery_fraction(np.array([1.0, 0.5]), np.array([0.5, 0.5]), np.array([0.75, 0.7]), 0.01)
    assert vec[0] == pytest.approx(0.5) and math.isnan(vec[1])


def test_blocks_follow_sequences():
    seqs = ["vtest"] * 23 + ["photo:dog", "photo:eagle"]  # 23 frames of one video, then two photos
    blocks = make_blocks(seqs, block_size=10)
    assert len(blocks) == 3 + 2
    assert [len(b) for b in blocks] == [10, 10, 3, 1, 1]
    assert blocks[0] == list(range(10)) and blocks[3] == [23]
    assert sorted(i for b in blocks for i in b) == list(range(len(seqs)))  # every image in exactly one block
    assert all(len({seqs[i] for i in b}) == 1 for b in blocks)  # no block mixes sequences


def test_block_bootstrap_respects_blocks_and_is_deterministic():
    seqs = ["a"] * 20 + ["b"] * 10 + ["p1", "p2"]
    blocks = make_blocks(seqs, block_size=10)
    w1 = block_bootstrap_weights(blocks, 32, n_resamples=200, seed=7)
    w2 = block_bootstrap_weights(blocks, 32, n_resamples=200, seed=7)
    assert np.array_equal(w1, w2) and w1.shape == (200, 32)
    assert not np.array_equal(w1, block_bootstrap_weights(blocks, 32, n_resamples=200, seed=8))
    for b in blocks:  # every image of a block is drawn the same number of times
        assert (w1[:, b] == w1[:, b[:1]]).all()
    firsts = [b[0] for b in blocks]
    assert (w1[:, firsts].sum(1) == len(blocks)).all()  # each resample draws as many blocks as there are
    assert abs(w1.sum(1).mean() / 32 - 1.0) < 0.1  # and as many images as the set, on average


def test_bootstrap_interval_contains_point_estimate():
    gts, dets = _synthetic_case(4, n_images=30)
    classes = sorted({int(c) for g in gts for c in g.cls})
    tables = match_all(gts, dets, classes)
    point = mean_ap(tables)[0]
    blocks = make_blocks(["v"] * 20 + [f"p{i}" for i in range(10)], block_size=5)
    w = block_bootstrap_weights(blocks, 30, n_resamples=300, seed=0)
    samples = mean_ap(tables, w)[:, 0]
    lo, hi = percentile_interval(samples, 0.95)
    assert lo <= point <= hi and hi - lo > 0.01
    assert average_precision(tables[classes[0]], w).shape == (300, 10)
