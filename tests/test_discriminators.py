"""Discriminators: output shapes on tiny inputs, the registry and its errors."""

import pytest
import torch

from deblur.archs.discriminator_arch import DISCRIMINATORS, build_discriminator, random_crops

X = (2, 3, 64, 64)  # (B,3,H,W) RGB [-1,1]
SMALL = {"ndf": 8}  # narrow nets keep the tests fast; shapes do not depend on ndf


def _x():
    torch.manual_seed(0)
    return torch.rand(X) * 2 - 1


def test_no_gan_is_none():
    assert build_discriminator("no_gan") is None


@pytest.mark.parametrize("norm", ["instance", "batch", "none"])
def test_patch_gan_shape(norm):
    d = build_discriminator("patch_gan", norm_layer=norm, **SMALL)
    out = d(_x())
    # 64 -> 33 -> 17 -> 9 (3 stride-2 convs, padding 2) -> 10 -> 11 (two stride-1 convs)
    assert out.shape == (2, 1, 11, 11)


def test_patch_gan_default_width_and_spectral_norm():
    d = build_discriminator("patch_gan", spectral_norm=True, norm_layer="none")
    assert d.model[0].parametrizations.weight  # spectral norm attached
    assert d(_x()).shape == (2, 1, 11, 11)
    assert d.model[-1].in_channels == 512  # ndf=64, n_layers=3 -> 64*8


def test_double_gan_returns_full_and_cropped_patch():
    d = build_discriminator("double_gan", crop_size=32, num_crops=2, **SMALL)
    out = d(_x())
    assert set(out) == {"full", "patch"}
    assert out["full"].shape[:2] == (2, 1)
    # the patch D sees 2 crops of 32 px per image: 32 -> 17 -> 9 -> 5 -> 6 -> 7
    assert out["patch"].shape == (4, 1, 7, 7)


def test_random_crops_are_real_crops():
    x = torch.arange(2 * 1 * 10 * 10, dtype=torch.float32).view(2, 1, 10, 10)
    crops = random_crops(x, 4, num_crops=3, generator=torch.Generator().manual_seed(0))
    assert crops.shape == (6, 1, 4, 4)
    for i, c in enumerate(crops):
        src = x[i // 3, 0]
        y0, x0 = [int(v) for v in torch.nonzero(src == c[0, 0, 0])[0]]
        assert torch.equal(src[y0 : y0 + 4, x0 : x0 + 4], c[0])
    assert random_crops(x, 70).shape == (2, 1, 10, 10)  # clamped to the image


def test_multi_scale_three_outputs():
    d = build_discriminator("multi_scale", **SMALL)
    out = d(_x())
    assert isinstance(out, list) and len(out) == 3
    assert [tuple(o.shape) for o in out] == [(2, 1, 11, 11), (2, 1, 7, 7), (2, 1, 5, 5)]


@pytest.mark.parametrize("name", sorted(DISCRIMINATORS))
def test_every_registered_name_builds_its_class(name):
    cls = DISCRIMINATORS[name]
    d = build_discriminator(name, **(SMALL if cls else {}))
    if cls is None:  # no_gan: train without an adversarial loss
        assert d is None
        return
    assert type(d) is cls  # the name picks the class, and the builder does not fall back to another
    out = d(_x())
    parts = out if isinstance(out, list) else list(out.values()) if isinstance(out, dict) else [out]
    assert parts and all(p.ndim == 4 and p.shape[1] == 1 and torch.isfinite(p).all() for p in parts)


def test_unknown_name_suggests():
    with pytest.raises(ValueError, match=r"Unknown discriminator 'patchgan'.*Did you mean 'patch_gan'.*Available"):
        build_discriminator("patchgan")


def test_bad_kwargs_and_norm():
    with pytest.raises(ValueError, match="unknown argument.*'crop_size'"):
        build_discriminator("patch_gan", crop_size=32)
    with pytest.raises(ValueError, match="norm_layer must be one of"):
        build_discriminator("patch_gan", norm_layer="group")
