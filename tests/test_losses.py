"""Adversarial and content losses: values, gradients, autocast, errors."""

import pytest
import torch
from torch import nn

from deblur.archs.discriminator_arch import build_discriminator
from deblur.train.losses import (
    ADV_LOSSES,
    CONTENT_LOSSES,
    ContentLoss,
    FFTLoss,
    WGANGPLoss,
    build_adv_loss,
    build_content_loss,
)

SMALL = {"ndf": 8}


def _pair(shape=(2, 3, 32, 32), seed=0):
    """(restored, sharp), both (B,3,H,W) RGB [-1,1]; restored requires grad."""
    g = torch.Generator().manual_seed(seed)
    sharp = torch.rand(shape, generator=g) * 2 - 1
    restored = (sharp + 0.2 * torch.randn(shape, generator=g)).clamp(-1, 1).requires_grad_(True)
    return restored, sharp


@pytest.fixture(scope="module")
def discs():
    torch.manual_seed(0)
    return {
        "patch_gan": build_discriminator("patch_gan", **SMALL),
        "double_gan": build_discriminator("double_gan", crop_size=32, **SMALL),
        "multi_scale": build_discriminator("multi_scale", **SMALL),
    }


@pytest.mark.parametrize("loss_name", sorted(ADV_LOSSES))
@pytest.mark.parametrize("d_name", ["patch_gan", "double_gan", "multi_scale"])
def test_adversarial_losses(discs, loss_name, d_name):
    D = discs[d_name]
    adv = build_adv_loss(loss_name)
    restored, sharp = _pair((2, 3, 64, 64))

    D.zero_grad(set_to_none=True)
    loss_d = adv.d_loss(D, restored, sharp)
    assert loss_d.dim() == 0 and loss_d.dtype == torch.float32 and torch.isfinite(loss_d)
    loss_d.backward()
    grads = [p.grad for p in D.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert restored.grad is None  # detached in d_loss

    loss_g = adv.g_loss(D, restored, sharp)
    assert loss_g.dim() == 0 and torch.isfinite(loss_g)
    loss_g.backward()
    assert restored.grad is not None and torch.isfinite(restored.grad).all()
    assert restored.grad.abs().sum() > 0


def test_double_gan_is_mean_of_components():
    """(full + patch) / 2, as DeblurGANv2's DoubleGAN; checked with a constant-score D."""
    adv = build_adv_loss("lsgan")
    restored, sharp = _pair()

    def D(x):  # full scores 1 (loss 0 for real), patch scores 0 (loss 0 for fake)
        return {"full": torch.ones(x.shape[0], 1, 2, 2), "patch": torch.zeros(x.shape[0], 1, 3, 3)}

    # full: ((1-1)^2 + 1^2)/2 = 0.5; patch: ((0-1)^2 + 0)/2 = 0.5 -> mean 0.5
    assert adv.d_loss(D, restored, sharp).item() == pytest.approx(0.5)
    # G: full (1-1)^2 = 0, patch (0-1)^2 = 1 -> 0.5
    assert adv.g_loss(D, restored, sharp).item() == pytest.approx(0.5)


def test_ragan_ls_matches_reference_formula():
    adv = build_adv_loss("ragan-ls")
    restored, sharp = _pair()
    w = torch.randn(3)

    def D(x):
        return (x * w.view(1, 3, 1, 1)).mean(1, keepdim=True)

    pr, pf = D(sharp), D(restored.detach())
    want_d = (torch.mean((pr - pf.mean() - 1) ** 2) + torch.mean((pf - pr.mean() + 1) ** 2)) / 2
    want_g = (torch.mean((pr - pf.mean() + 1) ** 2) + torch.mean((pf - pr.mean() - 1) ** 2)) / 2
    assert adv.d_loss(D, restored, sharp).item() == pytest.approx(want_d.item(), rel=1e-5)
    assert adv.g_loss(D, restored, sharp).item() == pytest.approx(want_g.item(), rel=1e-5)


def test_wgan_gp_penalty_zero_for_unit_linear_critic():
    restored, sharp = _pair()
    w = torch.randn(1, 3, 32, 32)
    w = w / w.norm()  # ||grad|| = 1 everywhere

    def D(x):
        return (x * w).sum(dim=(1, 2, 3)).view(-1, 1, 1, 1)

    adv = build_adv_loss("wgan-gp")
    assert isinstance(adv, WGANGPLoss) and adv.gp_lambda == 10.0
    assert adv.gradient_penalty(D, restored, sharp).item() == pytest.approx(0.0, abs=1e-8)

    def D3(x):
        return 3 * D(x)  # ||grad|| = 3 -> (3-1)^2 = 4

    assert adv.gradient_penalty(D3, restored, sharp).item() == pytest.approx(4.0, rel=1e-5)


def test_adversarial_under_bf16_autocast(discs):
    restored, sharp = _pair((2, 3, 64, 64))
    for name in ("ragan-ls", "wgan-gp"):
        adv = build_adv_loss(name)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss_d = adv.d_loss(discs["double_gan"], restored, sharp)
            loss_g = adv.g_loss(discs["patch_gan"], restored, sharp)
        assert loss_d.dtype == loss_g.dtype == torch.float32
        assert torch.isfinite(loss_d) and torch.isfinite(loss_g)
        loss_d.backward()
        loss_g.backward()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d_name", ["patch_gan", "double_gan"])
def test_wgan_gp_penalty_is_float32_under_autocast(discs, d_name, dtype):
    """The penalty's critic forward and input gradient run in float32 under bf16/fp16 autocast: the same ops,
    so the same value as without autocast. In half precision the gradient was taken on the unscaled half
    graph (small input gradients underflow under fp16; here the value was off by 1e-5..4e-5 relative)."""
    restored, sharp = _pair((2, 3, 64, 64))
    adv = build_adv_loss("wgan-gp")
    torch.manual_seed(1)  # the same interpolation weights (and double_gan crops) for both
    want = adv.gradient_penalty(discs[d_name], restored, sharp)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=dtype):
        got = adv.gradient_penalty(discs[d_name], restored, sharp)
    assert got.dtype == torch.float32 and want.item() > 0
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    got.backward()  # second order through the float32 critic
    assert all(p.grad is not None for p in discs[d_name].parameters() if p.requires_grad)


def test_unknown_adv_loss():
    with pytest.raises(ValueError, match=r"Unknown adversarial loss 'ragan_ls'.*'ragan-ls'.*Available"):
        build_adv_loss("ragan_ls")


# ---------------------------------------------------------------- content losses

OFFLINE = ["l1", "charbonnier", "ssim", "fft"]


@pytest.mark.parametrize("name", OFFLINE)
def test_content_loss_zero_for_identical_positive_otherwise(name):
    loss = CONTENT_LOSSES[name]()
    restored, sharp = _pair()
    same = loss(sharp, sharp)
    assert same.item() == pytest.approx(0.0, abs=2e-3)  # charbonnier gives eps = 1e-3
    value = loss(restored, sharp)
    assert value.dtype == torch.float32 and value.item() > same.item() + 1e-3
    value.backward()
    assert torch.isfinite(restored.grad).all() and restored.grad.abs().sum() > 0


def test_ms_ssim():
    restored, sharp = _pair((1, 3, 176, 176))
    loss = CONTENT_LOSSES["ms_ssim"]()
    assert loss(sharp, sharp).item() == pytest.approx(0.0, abs=1e-5)
    value = loss(restored, sharp)
    assert 0 < value.item() < 1
    value.backward()
    assert torch.isfinite(restored.grad).all()
    with pytest.raises(ValueError, match="at least 176x176.*'ssim'"):
        loss(*_pair((1, 3, 64, 64)))


def test_fft_loss_by_hand():
    restored = torch.zeros(1, 1, 2, 2)
    sharp = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    # rfft2 of d = -sharp over a 2x2 grid (last axis keeps 2 bins):
    # F[0,0] = -(1+2+3+4) = -10, F[0,1] = -((1-2)+(3-4)) = 2, F[1,0] = -((1+2)-(3+4)) = 4,
    # F[1,1] = -((1-2)-(3-4)) = 0; all real -> |real| + |imag| over 4 bins x 2 parts = 16 / 8
    assert FFTLoss()(restored, sharp).item() == pytest.approx(16 / 8)
    # ortho divides by sqrt(H*W) = 2
    assert FFTLoss(norm="ortho")(restored, sharp).item() == pytest.approx(16 / 8 / 2)


def test_content_losses_float32_under_autocast():
    restored, sharp = _pair()
    total, parts = build_content_loss({"l1": 1.0, "ssim": 0.5, "fft": 0.1, "charbonnier": 1.0})(restored, sharp)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total_bf16, parts_bf16 = build_content_loss({"l1": 1.0, "ssim": 0.5, "fft": 0.1, "charbonnier": 1.0})(
            restored.bfloat16(), sharp.bfloat16()
        )
    assert total_bf16.dtype == torch.float32
    for k in parts:  # only the bf16 rounding of the inputs differs
        assert parts_bf16[k].item() == pytest.approx(parts[k].item(), rel=2e-2)


def test_content_loss_container():
    restored, sharp = _pair()
    loss = build_content_loss({"l1": 1.0, "fft": 0.1, "ssim": 0.0})
    assert isinstance(loss, ContentLoss) and set(loss.terms) == {"l1", "fft"}
    total, parts = loss(restored, sharp)
    assert set(parts) == {"l1", "fft"} and not parts["l1"].requires_grad
    assert total.item() == pytest.approx(parts["l1"].item() + 0.1 * parts["fft"].item(), rel=1e-6)
    total.backward()
    assert torch.isfinite(restored.grad).all()


def test_content_loss_extra_modules():
    class Const(nn.Module):
        def forward(self, restored, sharp):
            return (restored - sharp).pow(2).mean() + 1.0

    restored, sharp = _pair()
    loss = build_content_loss({"l1": 1.0, "detector_perceptual": 0.5}, extra={"detector_perceptual": Const()})
    total, parts = loss(restored, sharp)
    assert parts["detector_perceptual"].item() > 1.0
    assert total.item() == pytest.approx(parts["l1"].item() + 0.5 * parts["detector_perceptual"].item(), rel=1e-6)


def test_content_loss_errors():
    with pytest.raises(ValueError, match=r"Unknown content loss 'l2'.*Did you mean 'l1'.*Available: \['charbonnier'"):
        build_content_loss({"l2": 1.0})
    with pytest.raises(ValueError, match="at least one positive weight"):
        build_content_loss({"l1": 0.0})
    with pytest.raises(ValueError, match=">= 0"):
        build_content_loss({"l1": -1.0})


def test_perceptual_without_weights_names_option_and_alternatives():
    with pytest.raises(ValueError, match=r"model\.vgg_weights=PATH.*l1, charbonnier, ssim, fft"):
        build_content_loss({"perceptual": 1.0})
    with pytest.raises(FileNotFoundError, match=r"model\.vgg_weights=PATH"):
        build_content_loss({"perceptual": 1.0}, vgg_weights="/nonexistent/vgg19.pth")


@pytest.fixture(scope="module")
def vgg19_file(tmp_path_factory):
    """A torchvision VGG19 state dict (random weights) as a file, features + a classifier key."""
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    features = make_layers(cfgs["E"])  # == torchvision.models.vgg19(weights=None).features
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.6.bias"] = torch.zeros(1000)  # ignored
    path = tmp_path_factory.mktemp("vgg") / "vgg19.pth"
    torch.save(state, path)
    return path


def test_perceptual_with_weights(vgg19_file):
    loss = build_content_loss({"perceptual": 1.0}, vgg_weights=str(vgg19_file))
    vgg = loss.terms["perceptual"].vgg
    assert len(vgg) == 15 and isinstance(vgg[14], nn.Conv2d)  # ends at conv3_3
    assert not any(p.requires_grad for p in vgg.parameters())
    loss.train()
    assert not vgg.training
    restored, sharp = _pair()
    zero, _ = loss(sharp, sharp)
    assert zero.item() == pytest.approx(0.0, abs=1e-6)
    total, parts = loss(restored, sharp)
    assert total.item() > 0
    total.backward()
    assert torch.isfinite(restored.grad).all() and restored.grad.abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):  # VGG in bf16, the MSEs in float32
        total_bf16, _ = loss(restored, sharp)
    assert total_bf16.dtype == torch.float32
    assert total_bf16.item() == pytest.approx(total.item(), rel=0.1)


def test_perceptual_rejects_wrong_file(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, bad)
    with pytest.raises(ValueError, match="missing"):
        build_content_loss({"perceptual": 1.0}, vgg_weights=str(bad))
