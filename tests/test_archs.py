"""Generator archs, registry, backbone loading and the export format (CPU, tiny inputs)."""

import dataclasses

import pytest
import torch
import torchvision

from deblur import models
from deblur.config import GeneratorConfig
from deblur.models import GENERATORS, build_generator, generator_flops, load_generator, save_generator

MOBILE = ["fpn_mobilenet_v2", "fpn_mobilenet_v2_dsc"]


def _rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g) * 2 - 1  # RGB float in [-1, 1]


def _build(name="fpn_mobilenet_v2", seed=0, **kw):
    torch.manual_seed(seed)
    return build_generator(GeneratorConfig(name=name, **kw))


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_every_registered_name_builds_its_class(name):
    model = _build(name, zero_init_last=False).eval()
    assert type(model) is GENERATORS[name]  # the name picks the class, and the builder does not fall back to another
    x = _rand(1, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1 and not torch.equal(y, x)


@pytest.mark.parametrize("name", MOBILE)
@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (2, 3, 45, 70)])
def test_shape_and_range(name, shape):
    model = _build(name, zero_init_last=False).eval()
    x = _rand(*shape)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert y.min() >= -1 and y.max() <= 1
    assert not torch.equal(y, x)  # not zero-initialised: the residual is non-zero


def test_densenet_shape_range_identity():
    model = _build("fpn_densenet121").eval()
    x = _rand(1, 3, 64, 64)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, x, rtol=0, atol=0)  # zero_init_last: exactly the identity


@pytest.mark.parametrize("name", MOBILE)
def test_identity_at_init(name):
    model = _build(name)  # zero_init_last=True is the default; train mode too
    x = _rand(2, 3, 45, 70)
    with torch.no_grad():
        assert torch.equal(model(x), x)
        assert torch.equal(model.eval()(x), x)


def test_learn_residual_false_is_tanh():
    model = _build(learn_residual=False).eval()
    with torch.no_grad():
        y = model(_rand(1, 3, 64, 64))
    assert torch.equal(y, torch.zeros_like(y))  # tanh(0) with the zero-initialised last conv
    model = _build(learn_residual=False, zero_init_last=False).eval()
    with torch.no_grad():
        y = model(_rand(1, 3, 64, 64))
    assert y.abs().max() < 1 and y.abs().max() > 0


@pytest.mark.parametrize("shape", [(1, 3, 31, 64), (1, 3, 64, 20)])
def test_too_small_input_names_shape(shape):
    model = _build().eval()
    with pytest.raises(ValueError, match=str(shape[2]) + ", " + str(shape[3])):
        model(_rand(*shape))


@pytest.mark.parametrize("name,norm", [("fpn_mobilenet_v2", "instance"), ("fpn_mobilenet_v2", "batch"),
                                       ("fpn_mobilenet_v2_dsc", "instance"), ("fpn_mobilenet_v2", "none")])
def test_eval_is_batch_invariant(name, norm):
    model = _build(name, norm_layer=norm, zero_init_last=False)
    with torch.no_grad():
        model.train()(_rand(2, 3, 64, 64, seed=5))  # non-trivial BatchNorm running statistics
        model.eval()
        frames = _rand(3, 3, 64, 64, seed=1)
        frames[1] = frames[1] * 0.2  # very different statistics per frame
        batch = model(frames)
        for i in range(3):
            alone = model(frames[i : i + 1])
            # float rounding differs with batch size (oneDNN picks other kernels): ~1e-5
            torch.testing.assert_close(batch[i : i + 1], alone, rtol=0, atol=3e-5)
        # the reference's train-mode inference (batch statistics in the backbone) fails this
        model.train()
        assert (model(frames)[:1] - model(frames[:1])).abs().max() > 1e-3


def test_param_count_matches_the_design():
    """fpn_mobilenet_v2 = MobileNetV2 features[:16] + the FPN/head convs the design lists (~2.1 M)."""
    model = _build()
    total = sum(p.numel() for p in model.parameters())
    backbone = sum(p.numel() for p in torchvision.models.mobilenet_v2(weights=None).features[:16].parameters())
    fpn, nf = 128, 64
    laterals = 16 * nf + (24 + 32 + 64 + 160) * fpn  # 1x1, no bias
    top_down = 3 * (fpn * fpn * 9 + 2 * fpn)  # 3x3 no bias + InstanceNorm(affine)
    heads = 4 * (fpn * nf * 9 + nf * nf * 9)  # two 3x3 each, no bias
    smooth = 4 * nf * nf * 9 + 2 * nf + nf * (nf // 2) * 9 + 2 * (nf // 2)
    final = (nf // 2) * 3 * 9 + 3
    assert total == backbone + laterals + top_down + heads + smooth + final
    assert 1.9e6 <= total <= 2.4e6, total  # the spec: "about 2.1 M parameters"
    dsc = sum(p.numel() for p in _build("fpn_mobilenet_v2_dsc").parameters())
    assert backbone < dsc < total  # separable convs: fewer FPN/head params, same backbone


def test_channels_last_and_bf16_autocast():
    model = _build(zero_init_last=False).eval()
    x = _rand(1, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(model_cl(x_cl), ref, rtol=0, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model_cl(x_cl)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert (y - ref).abs().max() < 0.1


def test_bf16_autocast_identity_is_exact():
    model = _build().eval().to(memory_format=torch.channels_last)
    x = _rand(1, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model(x), x)


def test_unknown_generator_did_you_mean():
    with pytest.raises(ValueError, match=r"Unknown generator 'fpn_mobilenet'.*Available.*Did you mean 'fpn_mobilenet_v2"):
        build_generator(GeneratorConfig(name="fpn_mobilenet"))


def test_flop_counter_runs_on_meta():
    flops = generator_flops(GeneratorConfig(), 64, 64)
    assert flops > 0
    # conv FLOPs scale with pixels: 1280x720 pads to 1280x736 = 230 times 64x64
    assert generator_flops(GeneratorConfig(), 128, 128) == 4 * flops


# --- backbone weights --------------------------------------------------------------------------------
def test_backbone_weights_from_torchvision_state_dict(tmp_path):
    torch.manual_seed(123)
    reference = torchvision.models.mobilenet_v2(weights=None).state_dict()
    path = tmp_path / "mobilenet_v2_tv.pth"
    torch.save(reference, path)
    model = build_generator(GeneratorConfig(backbone_weights=str(path)))
    got = model.backbone.state_dict()
    assert len(got) > 100
    for key, value in got.items():
        assert torch.equal(value, reference["features." + key]), key


def test_backbone_weights_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_generator(GeneratorConfig(backbone_weights=str(tmp_path / "nope.pth")))
    wrong = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), wrong)
    with pytest.raises(ValueError, match="unexpected keys"):
        build_generator(GeneratorConfig(backbone_weights=str(wrong)))
    sd = torchvision.models.mobilenet_v2(weights=None).state_dict()
    sd["features.0.0.weight"] = torch.zeros(8, 3, 3, 3)
    bad_shape = tmp_path / "bad_shape.pth"
    torch.save(sd, bad_shape)
    with pytest.raises(ValueError, match=r"wrong shapes.*0\.0\.weight"):
        build_generator(GeneratorConfig(backbone_weights=str(bad_shape)))


# --- export / load --------------------------------------------------------------------------------
@pytest.mark.parametrize("half", [False, True])
def test_save_load_roundtrip(tmp_path, half):
    cfg = GeneratorConfig(name="fpn_mobilenet_v2_dsc", zero_init_last=False)
    model = _build(cfg.name, zero_init_last=False).eval()
    path = save_generator(model, cfg, tmp_path / "sub" / "g.pt", step=7, meta={"psnr_gain": 0.7}, half=half)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "deblur-generator-v1" and raw["step"] == 7 and raw["meta"] == {"psnr_gain": 0.7}
    assert raw["cfg"] == dataclasses.asdict(cfg)
    assert raw["model"]["final.weight"].dtype == (torch.float16 if half else torch.float32)
    assert not list(tmp_path.glob("sub/.*tmp*"))  # atomic write left no temp file

    loaded, loaded_cfg = load_generator(path)
    assert loaded_cfg == cfg and not loaded.training
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = _rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=2e-2 if half else 0)


def test_save_strips_wrapper_prefixes(tmp_path):
    cfg = GeneratorConfig()
    wrapped = torch.nn.DataParallel(_build())
    path = save_generator(wrapped, cfg, tmp_path / "g.pt")
    keys = torch.load(path, weights_only=True)["model"].keys()
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in keys)


def test_load_training_checkpoint_with_prefixes(tmp_path):
    model = _build(zero_init_last=False)
    state = {"_orig_mod." + k: v for k, v in model.state_dict().items()}
    train_cfg = {"name": "run1", "model": {"g_name": "fpn_mobilenet_v2", "norm_layer": "instance"}}
    path = tmp_path / "last.pt"
    torch.save({"model": state, "cfg": train_cfg, "step": 3, "optimizer": {}}, path)
    loaded, cfg = load_generator(path)
    assert cfg.name == "fpn_mobilenet_v2"
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_load_errors(tmp_path, monkeypatch):
    cfg = GeneratorConfig()
    good = save_generator(_build(), cfg, tmp_path / "mobilenet.pt")

    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_generator(tmp_path / "missing.pt")
    monkeypatch.setattr(models, "DEFAULT_WEIGHTS", tmp_path / "weights" / "fpn_mobilenet_v2.pt")
    with pytest.raises(FileNotFoundError, match="--weights"):
        load_generator(None)

    not_ours = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_ours)
    with pytest.raises(ValueError, match="holds a list"):
        load_generator(not_ours)
    bare = tmp_path / "bare.pt"
    torch.save(_build().state_dict(), bare)
    with pytest.raises(ValueError, match="bare state dict"):
        load_generator(bare)
    text = tmp_path / "text.pt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="text.pt"):
        load_generator(text)

    # cfg says dsc, weights are fpn_mobilenet_v2
    lying = tmp_path / "lying.pt"
    obj = torch.load(good, weights_only=True)
    obj["cfg"]["name"] = "fpn_mobilenet_v2_dsc"
    torch.save(obj, lying)
    with pytest.raises(ValueError, match=r"says 'fpn_mobilenet_v2_dsc'.*'fpn_mobilenet_v2' generator"):
        load_generator(lying)
    # the user asks for another architecture than the file holds
    with pytest.raises(ValueError, match=r"holds a 'fpn_mobilenet_v2' generator but 'fpn_densenet121' was asked"):
        load_generator(good, expect_name="fpn_densenet121")
    loaded, _ = load_generator(good, expect_name="fpn_mobilenet_v2")
    assert not loaded.training


def test_save_rejects_unloadable_meta(tmp_path):
    with pytest.raises(TypeError, match="meta.path"):
        save_generator(_build(), GeneratorConfig(), tmp_path / "g.pt", meta={"path": tmp_path})


# --- fpn_inception (DeblurGANv2's quality model on timm's inception_resnet_v2) ---------------------------------
@pytest.fixture(scope="module")
def inception():
    torch.manual_seed(0)
    return build_generator(GeneratorConfig(name="fpn_inception", zero_init_last=False)).eval()


@pytest.mark.parametrize("shape", [(1, 3, 32, 32), (2, 3, 45, 70), (1, 3, 100, 130)])
def test_inception_shape_and_range_on_sizes_its_unpadded_convs_do_not_divide(inception, shape):
    x = _rand(*shape)
    with torch.no_grad():
        y = inception(x)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1 and not torch.equal(y, x)


def test_inception_eval_is_batch_invariant(inception):
    frames = _rand(3, 3, 96, 96, seed=1)
    frames[1] = frames[1] * 0.2
    with torch.no_grad():
        batch = inception(frames)
        for i in range(3):
            torch.testing.assert_close(batch[i : i + 1], inception(frames[i : i + 1]), rtol=0, atol=3e-5)


def test_inception_config_round_trip_and_refiner_channels(inception, tmp_path):
    cfg = GeneratorConfig(name="fpn_inception", zero_init_last=False)
    path = save_generator(inception, cfg, tmp_path / "inc.pt")
    loaded, loaded_cfg = load_generator(path)
    assert loaded_cfg == cfg and type(loaded) is GENERATORS["fpn_inception"]
    x = _rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), inception(x), rtol=0, atol=0)
    refiner = _build("fpn_inception", in_channels=7).eval()
    y = torch.cat([x, x, torch.zeros(1, 1, 64, 64)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(refiner(y), x, rtol=0, atol=0)  # zero_init_last: the identity on channels 3..5


def test_inception_backbone_weights_from_a_timm_state_dict(tmp_path):
    import timm

    torch.manual_seed(7)
    reference = timm.create_model("inception_resnet_v2", pretrained=False).state_dict()  # with its classifier
    path = tmp_path / "inception_resnet_v2.pth"
    torch.save(reference, path)
    model = build_generator(GeneratorConfig(name="fpn_inception", backbone_weights=str(path)))
    got = model.backbone.state_dict()
    assert len(got) > 500 and all(torch.equal(v, reference[k]) for k, v in got.items())
