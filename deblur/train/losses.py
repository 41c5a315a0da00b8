"""Training losses: adversarial losses (``ModelConfig.disc_loss``) and content losses
(``ModelConfig.content_loss``).

All inputs are ``restored, sharp: Tensor (B,3,H,W) RGB float in [-1, 1]`` (the generator's range).
Every loss returns a float32 scalar, also under bf16/fp16 autocast: inputs and discriminator
scores are cast with ``.float()`` and the reductions (and SSIM/FFT filtering) run with autocast
off. Networks inside a loss (the discriminator, VGG) still run under the caller's autocast, except the
critic inside the WGAN-GP gradient penalty (float32: a gradient of a half graph underflows).

Adversarial (``build_adv_loss(name)``): one interface for every discriminator kind of
``deblur.archs.discriminator_arch`` (a tensor, a ``{"full", "patch"}`` dict or a list of scales; the loss
is the mean over components, i.e. (full + patch) / 2 for ``double_gan`` as in DeblurGANv2)::

    adv = build_adv_loss("ragan-ls")
    loss_d = adv.d_loss(D, restored, sharp)           # restored is detached inside
    loss_g = content + adv_lambda * adv.g_loss(D, restored, sharp)

Content (``build_content_loss({"l1": 1.0, "fft": 0.1})``): a ``ContentLoss`` module whose
forward returns ``(total, {name: value})``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from configs import did_you_mean
from deblur.metrics import ssim_components

logger = logging.getLogger(__name__)

__all__ = [
    "FeatureLoss",
    "ADV_LOSSES",
    "CONTENT_LOSSES",
    "AdversarialLoss",
    "CharbonnierLoss",
    "ContentLoss",
    "FFTLoss",
    "L1Loss",
    "MSSSIMLoss",
    "PerceptualLoss",
    "SSIMLoss",
    "build_adv_loss",
    "build_content_loss",
    "load_vgg19_features",
]


def _unknown(kind: str, name: str, choices, fix: str = "") -> ValueError:
    return ValueError(f"Unknown {kind} '{name}'.{did_you_mean(name, choices)} Available: {sorted(choices)}{fix}")


def _no_autocast(x: Tensor):
    return torch.autocast(x.device.type, enabled=False)


# --------------------------------------------------------------------------------------------
# Adversarial losses
# --------------------------------------------------------------------------------------------

DiscOut = Tensor | Mapping[str, Tensor] | list[Tensor] | tuple[Tensor, ...]
Disc = Callable[[Tensor], DiscOut]


def _components(out: DiscOut) -> list[Tensor]:
    """Discriminator output -> list of float32 score maps (one per component/scale)."""
    if isinstance(out, Tensor):
        parts = [out]
    elif isinstance(out, Mapping):
        parts = [out[k] for k in sorted(out)]
    elif isinstance(out, (list, tuple)):
        parts = list(out)
    else:
        raise TypeError(
            f"discriminator output must be a Tensor, a dict of Tensors or a list of Tensors, got {type(out).__name__}"
        )
    if not parts:
        raise ValueError("discriminator returned no scores (empty dict/list)")
    return [p.float() for p in parts]


class AdversarialLoss:
    """Base of the adversarial losses; subclasses define ``_d`` and ``_g`` on one score map.

    ``D`` is any callable ``(B,3,H,W) -> scores`` (a discriminator of this package). Scores of
    each component are paired (real with fake) and the loss is the mean over components.
    ``g_loss`` runs ``D(sharp)`` under ``no_grad`` and only for relativistic losses. Note that
    ``g_loss`` backpropagates through D, so D's parameters collect gradients: zero them before
    the D step (or ``D.requires_grad_(False)`` around the G step).
    """

    name = ""
    relativistic = False  # g_loss needs D(sharp)

    def _d(self, real: Tensor, fake: Tensor) -> Tensor:
        raise NotImplementedError

    def _g(self, fake: Tensor, real: Tensor | None) -> Tensor:
        raise NotImplementedError

    def d_loss(self, D: Disc, restored: Tensor, sharp: Tensor) -> Tensor:
        """Discriminator loss (float32 scalar). restored, sharp: (B,3,H,W) RGB [-1,1]; restored is detached."""
        fake = _components(D(restored.detach()))
        real = _components(D(sharp))
        if len(fake) != len(real):
            raise AssertionError(f"discriminator gave {len(fake)} fake and {len(real)} real components")
        with _no_autocast(sharp):
            return torch.stack([self._d(r, f) for r, f in zip(real, fake)]).mean()

    def g_loss(self, D: Disc, restored: Tensor, sharp: Tensor) -> Tensor:
        """Generator's adversarial loss (float32 scalar); gradients flow into ``restored``.
        Multiply by ``ModelConfig.adv_lambda`` and add to the content loss."""
        fake = _components(D(restored))
        if self.relativistic:
            with torch.no_grad():
                real: list[Tensor | None] = list(_components(D(sharp)))
        else:
            real = [None] * len(fake)
        with _no_autocast(restored):
            return torch.stack([self._g(f, r) for f, r in zip(fake, real)]).mean()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class RaGANLSLoss(AdversarialLoss):
    """Relativistic average LSGAN, DeblurGANv2's ``RelativisticDiscLossLS`` (``ragan-ls``).

    D: ((D(r) - E D(f) - 1)^2 + (D(f) - E D(r) + 1)^2) / 2; G: the same with the signs of 1 swapped.
    The means are over the current batch (DeblurGANv2 also pools past scores; not done here).
    """

    name = "ragan-ls"
    relativistic = True

    def _d(self, real, fake):
        return (((real - fake.mean() - 1) ** 2).mean() + ((fake - real.mean() + 1) ** 2).mean()) / 2

    def _g(self, fake, real):
        return (((real - fake.mean() + 1) ** 2).mean() + ((fake - real.mean() - 1) ** 2).mean()) / 2


class LSGANLoss(AdversarialLoss):
    """Least-squares GAN (``lsgan``): D: ((D(r)-1)^2 + D(f)^2) / 2; G: (D(f)-1)^2."""

    name = "lsgan"

    def _d(self, real, fake):
        return (((real - 1) ** 2).mean() + (fake**2).mean()) / 2

    def _g(self, fake, real):
        return ((fake - 1) ** 2).mean()


class BCEGANLoss(AdversarialLoss):
    """Original GAN with BCE on logits (``gan``): D: (BCE(D(r),1) + BCE(D(f),0)) / 2; G: BCE(D(f),1)."""

    name = "gan"

    def _d(self, real, fake):
        bce = F.binary_cross_entropy_with_logits
        return (bce(real, torch.ones_like(real)) + bce(fake, torch.zeros_like(fake))) / 2

    def _g(self, fake, real):
        return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))


class WGANGPLoss(AdversarialLoss):
    """WGAN with gradient penalty (``wgan-gp``, Gulrajani et al.), ``gp_lambda`` = 10.

    D: E D(f) - E D(r) + gp_lambda * E (||grad_x c(x)|| - 1)^2 on random interpolates x of sharp
    and restored, where the critic c(x) of one image is the mean of its patch scores (per
    component). G: -E D(f). Avoid BatchNorm in D with this loss (use instance or none).
    """

    name = "wgan-gp"

    def __init__(self, gp_lambda: float = 10.0):
        if gp_lambda < 0:
            raise ValueError(f"gp_lambda must be >= 0, got {gp_lambda}")
        self.gp_lambda = gp_lambda

    def _d(self, real, fake):
        return fake.mean() - real.mean()

    def _g(self, fake, real):
        return -fake.mean()

    def gradient_penalty(self, D: Disc, restored: Tensor, sharp: Tensor) -> Tensor:
        """Mean over components of E (||grad c(x)||_2 - 1)^2 (float32 scalar, not yet times gp_lambda).

        The critic's forward and its input gradient run in float32 whatever the caller's autocast: under
        fp16 the gradient would be taken on an unscaled half graph (GradScaler scales only the final loss),
        where small input gradients underflow to 0 and the norm is wrong.
        """
        b = sharp.shape[0]
        alpha = torch.rand(b, 1, 1, 1, device=sharp.device, dtype=torch.float32)
        x = (alpha * sharp.detach().float() + (1 - alpha) * restored.detach().float()).requires_grad_(True)
        with _no_autocast(x):
            parts = _components(D(x))
            penalties = []
            for p in parts:
                # per-image critic = mean of its scores (rows of a double_gan crop batch included)
                (grad,) = torch.autograd.grad(p.sum() * (b / p.numel()), x, create_graph=True)
                penalties.append(((grad.float().flatten(1).norm(2, dim=1) - 1) ** 2).mean())
        return torch.stack(penalties).mean()

    def d_loss(self, D: Disc, restored: Tensor, sharp: Tensor) -> Tensor:
        loss = super().d_loss(D, restored, sharp)
        if self.gp_lambda:
            loss = loss + self.gp_lambda * self.gradient_penalty(D, restored, sharp)
        return loss

    def __repr__(self) -> str:
        return f"WGANGPLoss(gp_lambda={self.gp_lambda})"


ADV_LOSSES: dict[str, type[AdversarialLoss]] = {
    "ragan-ls": RaGANLSLoss,
    "wgan-gp": WGANGPLoss,
    "lsgan": LSGANLoss,
    "gan": BCEGANLoss,
}


def build_adv_loss(name: str, **kwargs) -> AdversarialLoss:
    """Adversarial loss by name (``ModelConfig.disc_loss``): ragan-ls | wgan-gp | lsgan | gan.
    kwargs: ``gp_lambda`` for wgan-gp."""
    if name not in ADV_LOSSES:
        raise _unknown("adversarial loss", name, ADV_LOSSES, " (set model.disc_loss=NAME)")
    try:
        return ADV_LOSSES[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"adversarial loss '{name}' got unexpected arguments {sorted(kwargs)}: {e}") from e


# --------------------------------------------------------------------------------------------
# Content losses: forward(restored, sharp), both (B,3,H,W) RGB [-1,1] -> float32 scalar
# --------------------------------------------------------------------------------------------


class L1Loss(nn.Module):
    """Mean absolute error on the [-1,1] values (``l1``)."""

    def forward(self, restored: Tensor, sharp: Tensor) -> Tensor:
        with _no_autocast(sharp):
            return (restored.float() - sharp.float()).abs().mean()


class CharbonnierLoss(nn.Module):
    """``charbonnier``: mean of sqrt((restored - sharp)^2 + eps^2) on [-1,1] values; eps for identical inputs."""

    def __init__(self, eps: float = 1.0e-3):
        super().__init__()
        self.eps = eps

    def forward(self, restored: Tensor, sharp: Tensor) -> Tensor:
        with _no_autocast(sharp):
            d = restored.float() - sharp.float()
            return torch.sqrt(d * d + self.eps**2).mean()


class SSIMLoss(nn.Module):
    """``ssim``: 1 - SSIM on [0,1] (inputs mapped from [-1,1]), Gaussian window 11 taps, sigma 1.5,
    population covariance (Wang et al. 2004), mean over valid region, channels and batch.
    Needs H, W >= 11."""

    def forward(self, restored: Tensor, sharp: Tensor) -> Tensor:
        with _no_autocast(sharp):
            x, y = (restored.float() + 1) / 2, (sharp.float() + 1) / 2
            s, _ = ssim_components(x, y, 1.0, gaussian_weights=True, use_sample_covariance=False)
            return 1 - s.mean()


class MSSSIMLoss(nn.Module):
    """``ms_ssim``: 1 - MS-SSIM (5 scales, Wang et al. 2003 weights) on [0,1], Gaussian 11/1.5.
    Needs H, W >= 176 (the window must fit at 1/16 scale); use ``ssim`` for smaller crops."""

    WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)

    def forward(self, restored: Tensor, sharp: Tensor) -> Tensor:
        if min(restored.shape[-2:]) < 176:
            raise ValueError(
                f"ms_ssim needs images of at least 176x176 px, got {tuple(restored.shape[-2:])}: "
                "use a larger crop or the 'ssim' content loss"
            )
        with _no_autocast(sharp):
            x, y = (restored.float() + 1) / 2, (sharp.float() + 1) / 2
            value = 1.0
            for i, w in enumerate(self.WEIGHTS):
                s, cs = ssim_components(x, y, 1.0, gaussian_weights=True, use_sample_covariance=False)
                if i < len(self.WEIGHTS) - 1:
                    value = value * cs.clamp_min(1e-6) ** w
                    x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
                else:
                    value = value * s.clamp_min(1e-6) ** w
            return 1 - value.mean()


class FFTLoss(nn.Module):
    """``fft``: L1 between the 2-D real FFTs (``torch.fft.rfft2``, real and imaginary parts
    stacked), as MIMO-UNet's frequency loss: mean |view_as_real(rfft2(restored) - rfft2(sharp))|.

    ``norm="backward"`` (MIMO-UNet's unnormalised FFT): the value grows with the image size
    (DC bin = sum of the difference), so its weight depends on the crop size; ``"ortho"`` makes
    it size-independent for white-noise errors.
    """

    def __init__(self, norm: str = "backward"):
        super().__init__()
        if norm not in ("backward", "ortho", "forward"):
            raise ValueError(f"FFTLoss norm must be 'backward', 'ortho' or 'forward', got {norm!r}")
        self.norm = norm

    def forward(self, restored: Tensor, sharp: Tensor) -> Tensor:
        with _no_autocast(sharp):
            # the FFT is linear: rfft2(r) - rfft2(s) == rfft2(r - s), one transform instead of two
            spec = torch.fft.rfft2(restored.float() - sharp.float(), norm=self.norm)
            return torch.view_as_real(spec).abs().mean()


# VGG19 ``features`` up to conv3_3 (index 14), torchvision's layer indices.
_VGG19_TO_CONV3_3 = [(3, 64), (64, 64), "M", (64, 128), (128, 128), "M", (128, 256), (256, 256), (256, 256)]
_VGG_FIX = (
    "The 'perceptual' content loss needs VGG19 weights: set model.vgg_weights=PATH to a torchvision "
    "VGG19 state dict (e.g. vgg19-dcbb9e9d.pth; no registry package ships one), or use the offline "
    "content losses instead: l1, charbonnier, ssim, fft (e.g. model.content_loss={l1: 1.0, fft: 0.1})."
)


def _vgg19_to_conv3_3() -> nn.Sequential:
    layers: list[nn.Module] = []
    for item in _VGG19_TO_CONV3_3:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(item[0], item[1], 3, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers[:15])  # ends with conv3_3, before its ReLU (DeblurGANv2's cut)


def load_vgg19_features(path: str | Path) -> nn.Sequential:
    """VGG19 ``features[:15]`` (conv1_1 .. conv3_3) with weights from a torchvision-format state dict
    file (keys ``features.N.weight``; classifier keys are ignored; bare ``N.weight`` keys also work).
    Returned frozen: eval mode, ``requires_grad=False``. Input: ImageNet-normalised RGB."""
    if not str(path):
        raise ValueError(_VGG_FIX)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VGG19 weights file not found: {str(path)!r}. {_VGG_FIX}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise ValueError(f"could not read VGG19 weights from {str(path)!r} ({type(e).__name__}: {e}). {_VGG_FIX}") from e
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{str(path)!r} holds a {type(state).__name__}, expected a VGG19 state dict. {_VGG_FIX}")
    prefix = "features." if any(k.startswith("features.") for k in state) else ""
    net = _vgg19_to_conv3_3()
    wanted = {k: state.get(prefix + k) for k in net.state_dict()}
    missing = [prefix + k for k, v in wanted.items() if v is None]
    if missing:
        raise ValueError(f"{str(path)!r} is not a torchvision VGG19 state dict: missing {missing}. {_VGG_FIX}")
    try:
        net.load_state_dict(wanted)
    except RuntimeError as e:
        raise ValueError(f"{str(path)!r} does not fit VGG19 (wrong shapes): {e}") from e
    net.requires_grad_(False)
    return net.eval()


class PerceptualLoss(nn.Module):
    """``perceptual``: DeblurGANv2's PerceptualLoss with its batch bug fixed.

    Both images are mapped [-1,1] -> [0,1], ImageNet-normalised (whole batch), passed through
    frozen VGG19 features up to conv3_3; loss = ``feature_weight`` * MSE(features) +
    ``pixel_weight`` * MSE of the [0,1] images (reference weights 0.006 and 0.5). VGG runs under
    the caller's autocast; the MSEs are float32. The VGG stays in eval mode whatever ``.train()``.
    """

    def __init__(self, vgg_weights: str | Path = "", feature_weight: float = 0.006, pixel_weight: float = 0.5):
        super().__init__()
        self.vgg = load_vgg19_features(vgg_weights)
        self.feature_weight = feature_weight
        self.pixel_weight = pixel_weight
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.vgg.eval()
        return self

    def forward(self, restored: Tensor, sharp: Tensor) -> Tensor:
        x, y = (restored.float() + 1) / 2, (sharp.float() + 1) / 2
        f_restored = self.vgg((x - self.mean) / self.std)
        with torch.no_grad():
            f_sharp = self.vgg((y - self.mean) / self.std)
        with _no_autocast(sharp):
            feat = F.mse_loss(f_restored.float(), f_sharp.float())
            pix = F.mse_loss(x, y)
            return self.feature_weight * feat + self.pixel_weight * pix


# Built-in content losses, each constructible without arguments except 'perceptual' (vgg_weights).
class FeatureLoss(nn.Module):
    """Distance between a frozen network's features of the restored and the sharp image.

    ``net`` is any module with ``forward_features(x, layers) -> {layer: Tensor}`` taking (B,3,H,W) RGB in
    [0,1] (the darknet detector's convention; the entry point builds it, deblur/ never imports detect/).
    The network is frozen and kept in eval mode; gradients reach only the restored image. Each layer's
    distance is divided by the mean square (``mse``) or mean magnitude (``l1``) of the sharp features, so
    layers of different scale weigh alike; ``layer_weights`` then weighs them.
    """

    def __init__(self, net: nn.Module, layers: Sequence[int], layer_weights: Sequence[float] | None = None,
                 criterion: str = "mse"):
        super().__init__()
        if not hasattr(net, "forward_features"):
            raise TypeError(f"{type(net).__name__} has no forward_features(x, layers); pass e.g. detect.build_darknet_model(cfg)")
        if not layers:
            raise ValueError("FeatureLoss needs at least one layer index to tap (model.detector_layers)")
        layer_weights = list(layer_weights) if layer_weights else [1.0] * len(layers)
        if len(layer_weights) != len(layers):
            raise ValueError(f"{len(layers)} layers {list(layers)} but {len(layer_weights)} layer weights {layer_weights}")
        if criterion not in ("mse", "l1"):
            raise ValueError(f"criterion must be 'mse' or 'l1', got {criterion!r}")
        self.net = net.eval().requires_grad_(False)
        self.layers = [int(i) for i in layers]
        self.layer_weights = [float(w) for w in layer_weights]
        self.criterion = criterion

    def train(self, mode: bool = True):  # the frozen network stays in eval mode
        return self

    def forward(self, restored: Tensor, sharp: Tensor) -> Tensor:
        restored01 = (restored.float() + 1) / 2
        with torch.no_grad():
            target = self.net.forward_features((sharp.float() + 1) / 2, self.layers)
        feats = self.net.forward_features(restored01, self.layers)
        total = restored.new_zeros((), dtype=torch.float32)
        for layer, w in zip(self.layers, self.layer_weights):
            f, t = feats[layer].float(), target[layer].float()
            if self.criterion == "mse":
                total = total + w * F.mse_loss(f, t) / (t.pow(2).mean() + 1e-6)
            else:
                total = total + w * F.l1_loss(f, t) / (t.abs().mean() + 1e-6)
        return total / sum(self.layer_weights)


CONTENT_LOSSES: dict[str, type[nn.Module]] = {
    "l1": L1Loss,
    "charbonnier": CharbonnierLoss,
    "ssim": SSIMLoss,
    "ms_ssim": MSSSIMLoss,
    "fft": FFTLoss,
    "perceptual": PerceptualLoss,
}


class ContentLoss(nn.Module):
    """Weighted sum of named content losses.

    forward(restored, sharp: (B,3,H,W) RGB [-1,1]) -> ``(total, {name: value})``: total is a
    float32 scalar with gradients, the values are the unweighted, detached terms (call
    ``.item()`` only when logging, it syncs CUDA). Terms keep their own train/eval mode:
    ``ContentLoss.train()`` does not touch them (frozen networks stay in eval).
    """

    def __init__(self, terms: Mapping[str, nn.Module], weights: Mapping[str, float]):
        super().__init__()
        if set(terms) != set(weights):
            raise AssertionError(f"terms {sorted(terms)} and weights {sorted(weights)} differ")
        self.terms = nn.ModuleDict(dict(terms))
        self.weights = {k: float(weights[k]) for k in terms}

    def train(self, mode: bool = True):
        self.training = mode
        return self

    def forward(self, restored: Tensor, sharp: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        total: Tensor | None = None
        values: dict[str, Tensor] = {}
        for name, term in self.terms.items():
            v = term(restored, sharp).float()
            values[name] = v.detach()
            total = self.weights[name] * v if total is None else total + self.weights[name] * v
        assert total is not None, "ContentLoss without terms"  # build_content_loss never builds one
        return total, values

    def extra_repr(self) -> str:
        return f"weights={self.weights}"


def build_content_loss(
    weights: Mapping[str, float],
    vgg_weights: str = "",
    extra: Mapping[str, nn.Module] | None = None,
) -> ContentLoss:
    """ContentLoss from ``ModelConfig.content_loss`` ({name: weight}, e.g. {"l1": 1.0, "fft": 0.1}).

    Names: the built-ins in ``CONTENT_LOSSES`` plus the keys of ``extra``, ready-made modules with
    ``forward(restored, sharp) -> scalar`` on (B,3,H,W) RGB [-1,1] (an entry point plugs in e.g. a
    detector-feature loss; an ``extra`` key overrides a built-in of the same name). Terms with
    weight 0 are not built. ``vgg_weights`` is ``ModelConfig.vgg_weights`` (for ``perceptual``).
    """
    extra = dict(extra or {})
    for name, module in extra.items():
        if not isinstance(module, nn.Module):
            raise TypeError(f"extra content loss '{name}' must be an nn.Module, got {type(module).__name__}")
    known = sorted(set(CONTENT_LOSSES) | set(extra))
    for name, w in weights.items():
        if name not in known:
            raise _unknown("content loss", name, known, " (set model.content_loss={name: weight, ...})")
        if not isinstance(w, (int, float)) or w < 0:
            raise ValueError(f"content_loss.{name} must be a number >= 0, got {w!r}")
    active = {k: float(w) for k, w in weights.items() if w > 0}
    if not active:
        raise ValueError(
            f"model.content_loss needs at least one positive weight, got {dict(weights)}; e.g. {{l1: 1.0, fft: 0.1}}"
        )
    terms: dict[str, nn.Module] = {}
    for name in active:
        if name in extra:
            terms[name] = extra[name]
        elif name == "perceptual":
            terms[name] = PerceptualLoss(vgg_weights)
        else:
            terms[name] = CONTENT_LOSSES[name]()
    skipped = sorted(set(weights) - set(active))
    if skipped:
        logger.info("content losses with weight 0 are off: %s", skipped)
    logger.debug("content loss: %s", active)
    return ContentLoss(terms, active)

