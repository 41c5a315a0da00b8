"""Typed config of the deblur package: generator, blur synthesis, data and training.

Every default lives here. Keys speak DeblurGANv2's config language (``files_a``, ``g_name``,
``adv_lambda`` ...). Range checks run once, when the loader builds these dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from configs.loader import check_range
from runtime import check_precision
from runtime.urls import mask_url


def _check_pair(name: str, pair: tuple, lo: float, hi: float) -> None:
    """A (low, high) range: both ends within [lo, hi] and low <= high."""
    for v in pair:
        check_range(name, v, lo, hi)
    if pair[0] > pair[1]:
        raise ValueError(f"'{name}' must be (low, high) with low <= high, got {tuple(pair)}")


def _check_kinds(kinds: dict[str, float], known: set[str], what: str) -> None:
    """Sampling weights of blur kinds: every kind known, every weight >= 0, at least one > 0."""
    for k, w in kinds.items():
        if k not in known:
            raise ValueError(f"{what} '{k}' is unknown. Available: {sorted(known)}")
        check_range(f"kinds.{k}", w, 0.0)
    if not any(w > 0 for w in kinds.values()):
        raise ValueError(f"'kinds' needs at least one positive weight, got {kinds}")


NormName = Literal["instance", "batch", "none"]


@dataclass(frozen=True)
class GeneratorConfig:
    """What build_generator needs: the architecture name and its constructor numbers."""

    name: str = "fpn_mobilenet_v2"  # fpn_mobilenet_v2 | fpn_mobilenet_v2_dsc | fpn_densenet121 | fpn_inception
    norm_layer: NormName = "instance"  # norm in the FPN and heads (the backbone keeps BatchNorm)
    num_filters: int = 64  # head width
    num_filters_fpn: int = 128  # FPN width
    learn_residual: bool = True  # output = clamp(input + tanh(...)), DeblurGANv2's global residual
    zero_init_last: bool = True  # last conv starts at zero: the untrained model is the identity
    dropout: float = 0.0
    # 3 = a frame; 6 = a refiner: blurred + Wiener-deconvolved frame, residual on the latter; 7 = a kernel-aware
    # refiner: also the deconvolution's luma residual y - k*x (deblur/archs/fpn_mobilenet_arch.py)
    in_channels: int = 3
    backbone_weights: str = ""  # optional torchvision-format state dict of the backbone (ImageNet)

    def __post_init__(self):
        check_range("dropout", self.dropout, 0.0, 1.0)
        check_range("num_filters", self.num_filters, 8)
        check_range("num_filters_fpn", self.num_filters_fpn, 8)


@dataclass(frozen=True)
class BlurConfig:
    """Mix of synthetic blur kernels applied on the fly to sharp images."""

    # relative weights of each kernel family; 0 switches a family off
    kinds: dict[str, float] = field(
        default_factory=lambda: {"trajectory": 0.6, "linear": 0.2, "imagenet_c": 0.2}
    )
    kernel_size: int = 31  # trajectory kernels are drawn on a canvas of this size
    trajectory_exposure: tuple[float, float] = (0.5, 1.0)  # fraction of the trajectory integrated
    trajectory_length: tuple[float, float] = (0.5, 2.0)  # walk length / kernel_size (walks that overflow are shrunk to fit)
    linear_length: tuple[int, int] = (5, 25)  # pixels
    imagenet_c_severities: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    centered: bool = True  # shift kernels so their centre of mass sits in the middle (no image shift)
    noise_sigma: tuple[float, float] = (0.0, 0.01)  # Gaussian sensor noise, sigma in [0,1] units
    jpeg_prob: float = 0.0
    jpeg_quality: tuple[int, int] = (60, 95)

    def __post_init__(self):
        _check_kinds(self.kinds, {"trajectory", "linear", "imagenet_c"}, "blur kind")
        check_range("kernel_size", self.kernel_size, 3, 201)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"'kernel_size' must be odd (the kernel has a centre pixel), got {self.kernel_size}")
        _check_pair("trajectory_exposure", self.trajectory_exposure, 0.01, 1.0)
        _check_pair("trajectory_length", self.trajectory_length, 0.0, 10.0)
        _check_pair("linear_length", self.linear_length, 1, 201)
        _check_pair("noise_sigma", self.noise_sigma, 0.0, 1.0)
        _check_pair("jpeg_quality", self.jpeg_quality, 1, 100)
        if not self.imagenet_c_severities and self.kinds.get("imagenet_c", 0) > 0:
            raise ValueError("'imagenet_c_severities' is empty but kinds.imagenet_c > 0: list severities 1..5 or set its weight to 0")
        for s in self.imagenet_c_severities:
            check_range("imagenet_c_severities", s, 1, 5)
        check_range("jpeg_prob", self.jpeg_prob, 0.0, 1.0)


@dataclass(frozen=True)
class DataConfig:
    """One split (train or val). Either paired folders (files_a/files_b) or synthetic blur (sources)."""

    files_a: str = ""  # glob of blurred images (paired data, GoPro-style)
    files_b: str = ""  # glob of sharp images, matched to files_a by relative path
    sources: list[str] = field(default_factory=list)  # globs of sharp images and/or videos -> synthetic blur
    blur: BlurConfig = field(default_factory=BlurConfig)
    size: int = 256  # crop side
    crop: Literal["random", "center"] = "random"
    preload: bool = False
    preload_size: int = 0  # when preloading, shrink so the short side is at most this (0 = keep)
    bounds: tuple[float, float] = (0.0, 0.9)  # hash-of-name split
    corrupt: list[str] = field(default_factory=list)  # cutout, jpeg, motion_blur, median_blur, gamma, rgb_shift, hsv_shift, sharpen
    flip: bool = True
    video_frame_step: int = 5  # take every Nth video frame
    scale: tuple[float, float] = (1.0, 1.0)  # random rescale of the sharp image before cropping
    # WebDataset tar shards (local globs or URLs, `{000..009}` ranges): NAME.blur.png + NAME.sharp.png pairs,
    # or NAME.sharp.png alone for synthetic blur. Streamed when preload is false, else read once into memory.
    shards: list[str] = field(default_factory=list)
    shuffle_buffer: int = 256  # samples held (undecoded) to shuffle a shard stream (0 or 1 = shard order)
    # files_a/files_b/sources/shards may be fsspec URLs (s3://, gs://, https://): network reads time out after
    # `timeout` seconds and are retried `retries` times with backoff; remote files are kept in a read-through
    # cache of at most `cache_gb` GiB (0 = off) in `cache_dir` ("" = $BLURDET_CACHE/data or ~/.cache/blurdet/data)
    timeout: float = 60.0
    retries: int = 3
    cache_dir: str = ""
    cache_gb: float = 10.0

    def __post_init__(self):
        check_range("size", self.size, 32)
        lo, hi = self.bounds
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"'bounds' must satisfy 0 <= lo < hi <= 1, got {self.bounds}")
        if bool(self.files_a) != bool(self.files_b):
            raise ValueError("'files_a' and 'files_b' go together: give both globs (blurred and sharp) or neither")
        if not self.files_a and not self.sources and not self.shards:
            raise ValueError("a data split needs 'files_a'+'files_b' (paired), 'sources' (synthetic blur) or 'shards' (WebDataset)")
        check_range("video_frame_step", self.video_frame_step, 1)
        check_range("shuffle_buffer", self.shuffle_buffer, 0)
        check_range("timeout", self.timeout, 0.1)
        check_range("retries", self.retries, 0, 20)
        check_range("cache_gb", self.cache_gb, 0.0)

    def masked(self) -> DataConfig:
        """This config with credentials in its URLs masked (what may be logged or written to a run folder)."""
        return replace(self, files_a=mask_url(self.files_a), files_b=mask_url(self.files_b),
                       sources=[mask_url(s) for s in self.sources], shards=[mask_url(s) for s in self.shards])


@dataclass(frozen=True)
class ModelConfig:
    g_name: str = "fpn_mobilenet_v2"
    d_name: str = "no_gan"  # no_gan | patch_gan | double_gan | multi_scale
    disc_loss: str = "ragan-ls"  # ragan-ls | wgan-gp | lsgan | gan
    content_loss: dict[str, float] = field(default_factory=lambda: {"l1": 1.0, "fft": 0.1})
    adv_lambda: float = 0.001
    norm_layer: NormName = "instance"
    learn_residual: bool = True
    zero_init_last: bool = True
    dropout: float = 0.0
    num_filters: int = 64  # head width
    num_filters_fpn: int = 128  # FPN width
    backbone_weights: str = ""
    # a refiner: the generator gets the blurred frame and its Wiener deconvolution with this kernel estimator's
    # kernels (6 channels) and learns to remove ringing and estimation error ("" = a plain generator)
    estimator: str = ""
    # a refiner's 7th input channel: the deconvolution's residual y - k*x in luma, the blurred frame's content
    # where the kernel passes little (the kernel seen as a map of where the deconvolution guessed)
    residual_map: bool = False
    # the refiner's first stage refines its kernels in closed form, as the pipeline does (RefineConfig's defaults
    # with one start on a 256-px tile; images refine from four on the whole frame up to 768 px), so it trains on the
    # deconvolutions it will see; off, it sees the network's unrefined kernels (blurrier deconvolutions) and learns a
    # fix that undoes the refinement's gain
    estimator_refine: bool = False
    # the refiner's crop of the first stage's output (0 = all of it): the first stage runs on the larger training
    # crops (e.g. image_size 512), where the kernel estimate and the deconvolution are as good as on a video frame,
    # and the refiner learns on a random (validation: centred) crop of this side. On 256-px crops the first stage
    # gained +0.2 dB over the blurred crops against ~+3 dB on the evaluation's frames, and a refiner trained there
    # over-corrected good deconvolutions (docs/results/2026-12-07_refiner.md)
    refiner_crop: int = 0
    # a refiner also learns to repair wrong kernels: this fraction of its crops (synthetic blur) is deconvolved with
    # the true kernel rotated by U(-a, a) degrees and stretched by U(1 - s, 1 + s), (a, s) = true_kernel_perturb
    true_kernel_prob: float = 0.0
    true_kernel_perturb: tuple[float, float] = (10.0, 0.3)
    vgg_weights: str = ""  # VGG19 state dict for the 'perceptual' content loss
    # 'detector_perceptual' content loss: layers of the frozen darknet detector (YOLOv3-tiny: 4 = stride 4,
    # 8 = stride 16, 13 = stride 32), their weights (empty = equal) and the distance
    detector_layers: list[int] = field(default_factory=lambda: [4, 8, 13])
    detector_layer_weights: list[float] = field(default_factory=list)
    detector_criterion: Literal["mse", "l1"] = "mse"

    def __post_init__(self):
        check_range("adv_lambda", self.adv_lambda, 0.0)
        check_range("true_kernel_prob", self.true_kernel_prob, 0.0, 1.0)
        check_range("refiner_crop", self.refiner_crop, 0)
        if self.refiner_crop and self.refiner_crop % 32:
            raise ValueError(f"'refiner_crop' must be a multiple of 32 (the generator's stride), got {self.refiner_crop}")
        check_range("true_kernel_perturb[0]", self.true_kernel_perturb[0], 0.0, 180.0)
        check_range("true_kernel_perturb[1]", self.true_kernel_perturb[1], 0.0, 0.9)
        for k, w in self.content_loss.items():
            check_range(f"content_loss.{k}", w, 0.0)

    def generator(self) -> GeneratorConfig:
        return GeneratorConfig(
            name=self.g_name,
            norm_layer=self.norm_layer,
            learn_residual=self.learn_residual,
            zero_init_last=self.zero_init_last,
            dropout=self.dropout,
            num_filters=self.num_filters,
            num_filters_fpn=self.num_filters_fpn,
            in_channels=(7 if self.residual_map else 6) if self.estimator else 3,
            backbone_weights=self.backbone_weights,
        )


@dataclass(frozen=True)
class OptimizerConfig:
    name: Literal["adam", "adamw"] = "adam"
    lr: float = 1.0e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self):
        check_range("lr", self.lr, 0.0, 1.0)
        check_range("weight_decay", self.weight_decay, 0.0)


@dataclass(frozen=True)
class SchedulerConfig:
    name: Literal["linear", "cosine", "constant"] = "linear"
    start_epoch: int = 50  # linear: constant lr until this epoch, then linear decay to min_lr
    min_lr: float = 1.0e-7
    warmup_steps: int = 0  # linear lr warm-up from 0 over this many steps

    def __post_init__(self):
        check_range("start_epoch", self.start_epoch, 0)
        check_range("min_lr", self.min_lr, 0.0)
        check_range("warmup_steps", self.warmup_steps, 0)


@dataclass(frozen=True)
class TrainConfig:
    name: str = "fpn_mobilenet_v2"  # run folder: <project>/<name>
    project: str = "runs/deblur"
    train: DataConfig = field(default_factory=lambda: DataConfig(
        sources=["data/train/**/*.jpg", "data/train/**/*.png"], preload=True, preload_size=720))
    val: DataConfig = field(default_factory=lambda: DataConfig(
        sources=["data/train/**/*.jpg", "data/train/**/*.png"], bounds=(0.9, 1.0), crop="center", flip=False,
        preload=True, preload_size=720))
    model: ModelConfig = field(default_factory=ModelConfig)
    num_epochs: int = 200
    train_batches_per_epoch: int = 500
    val_batches_per_epoch: int = 16
    batch_size: int = 4
    image_size: int = 256  # crop side for training (overrides train.size / val.size when > 0)
    # the recipe benchmark's winner (bench/results/recipes_2026-11-25.md): AdamW 1e-3, cosine, EMA 0.99
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="adamw", lr=1.0e-3))
    d_optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=lambda: SchedulerConfig(name="cosine", min_lr=1.0e-6, warmup_steps=20))
    warmup_num: int = 0  # epochs with the backbone frozen
    init_weights: str = ""  # start the generator from an exported file (fine-tuning); ignored by --resume
    device: str = "auto"  # auto (CUDA when available, else CPU) | cpu | cuda | cuda:N
    # a name in runtime.PRECISIONS (not int8); auto: bf16 where native (CPUs with AMX/AVX512-bf16, Ampere GPUs),
    # fp16 on older GPUs, else fp32
    amp: str = "auto"
    channels_last: bool = True
    threads: int = 0  # torch intra-op threads (0 = leave as is)
    num_workers: int = 0  # DataLoader workers
    seed: int = 0
    ema: float = 0.99  # EMA decay of generator weights used for val/export (0 = off)
    log_every: int = 20  # steps between TensorBoard scalars
    image_every: int = 500  # steps between image triplets in TensorBoard
    save_every: int = 100  # steps between last.pt checkpoints
    max_steps: int = 0  # stop after this many steps in total (0 = num_epochs * train_batches_per_epoch)
    max_minutes: float = 0.0  # stop after this wall time (0 = no limit); last.pt is saved
    max_cpu_minutes: float = 0.0  # stop after this much CPU time of this process, all threads (0 = no limit)

    def __post_init__(self):
        for name in ("num_epochs", "train_batches_per_epoch", "batch_size"):
            check_range(name, getattr(self, name), 1)
        for name in ("val_batches_per_epoch", "warmup_num", "threads", "num_workers", "max_steps"):
            check_range(name, getattr(self, name), 0)
        check_range("ema", self.ema, 0.0, 0.99999)
        check_range("max_minutes", self.max_minutes, 0.0)
        check_range("max_cpu_minutes", self.max_cpu_minutes, 0.0)
        check_range("image_size", self.image_size, 0)
        for name in ("log_every", "image_every", "save_every"):
            check_range(name, getattr(self, name), 1)
        object.__setattr__(self, "amp", check_precision(self.amp, key="amp", int8=False))  # 'none' -> 'fp32', warned
        m = self.model
        if (m.refiner_crop or m.estimator_refine) and not m.estimator:
            raise ValueError("'model.refiner_crop' and 'model.estimator_refine' are options of a refiner: set "
                             "model.estimator (configs/deblur_train_refiner.yaml) or leave them at 0 / false")
        smallest = min(self.image_size or self.train.size, self.image_size or self.val.size)
        if m.refiner_crop and m.refiner_crop >= smallest:
            raise ValueError(f"'model.refiner_crop' ({m.refiner_crop}) must be smaller than the training crops "
                             f"({smallest} px: image_size or train/val.size), or 0 for all of them")


# ----------------------------------------------------------------------------- kernel estimator
@dataclass(frozen=True)
class EstimatorConfig:
    """Kernel estimator architecture (deblur.archs.kernel_arch.KernelEstimator); keys are its constructor args."""

    name: Literal["kernel_mobilenet_v2"] = "kernel_mobilenet_v2"
    kernel_size: int = 41  # holds centred ImageNet-C severity 4 whole, most of severity 5, shake severity 5
    width_mult: float = 0.5
    depth: int = 14  # MobileNetV2 feature blocks kept (14 = stride 16)
    hidden: int = 256

    def __post_init__(self):
        check_range("kernel_size", self.kernel_size, 3, 101)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"'kernel_size' must be odd (the kernel has a centre pixel), got {self.kernel_size}")
        check_range("width_mult", self.width_mult, 0.1, 2.0)
        check_range("depth", self.depth, 2, 18)
        check_range("hidden", self.hidden, 8)


@dataclass(frozen=True)
class KernelBlurConfig:
    """The blur the estimator learns: kernel families, night highlights, sensor noise and JPEG (all angles U[0, 180))."""

    # relative weights of imagenet_c | linear | shake | gp | trajectory | none; 'none' is a sharp crop (a delta
    # kernel), so the estimator learns to say "no blur"
    kinds: dict[str, float] = field(default_factory=lambda: {"imagenet_c": 0.35, "linear": 0.25, "shake": 0.3, "none": 0.1})
    linear_length: tuple[float, float] = (2.0, 35.0)  # pixels
    imagenet_c_severities: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    shake_severities: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    # 'gp': Gaussian-process camera shake (blur_synth.gp_kernel) on a canvas of gp_size px (odd, at most
    # model.kernel_size), Matern length scale and amplitude drawn from these ranges (DeepInverse's units)
    gp_size: tuple[int, int] = (9, 41)
    gp_length_scale: tuple[float, float] = (0.15, 0.6)  # fraction of the exposure; small = wiggly paths
    gp_sigma: tuple[float, float] = (0.2, 0.5)  # amplitude; [-1, 1] spans the canvas (paths that overflow shrink to fit)
    # 'trajectory': Boracchi-Foi random walk (blur_synth.trajectory_kernel) on the model.kernel_size canvas
    trajectory_length: tuple[float, float] = (0.3, 1.5)  # walk length / model.kernel_size (overflows shrink to fit)
    trajectory_exposure: tuple[float, float] = (0.5, 1.0)  # fraction of the walk integrated
    # night streaks: with this probability a crop gets highlights above white (its brightest 1 % boosted and
    # saturate_lights point lights of saturate_intensity x white), is blurred in linear light and clipped.
    # 0 keeps every crop = sharp crop (x) kernel and the data stream of earlier runs; 0.1 is a mild mix
    saturate_prob: float = 0.0
    saturate_lights: tuple[int, int] = (1, 4)
    saturate_intensity: tuple[float, float] = (5.0, 50.0)
    noise_prob: float = 0.5
    noise_sigma: tuple[float, float] = (0.0, 0.02)  # [0,1] units
    jpeg_prob: float = 0.3
    jpeg_quality: tuple[int, int] = (50, 95)
    # a soft source: with this probability the sharp crop is first Gaussian-blurred (sigma in soften_sigma px),
    # as video frames often are; that softness belongs to the "sharp" image, the label stays the motion kernel
    soften_prob: float = 0.0
    soften_sigma: tuple[float, float] = (0.3, 1.2)

    def __post_init__(self):
        _check_kinds(self.kinds, {"imagenet_c", "linear", "shake", "gp", "trajectory", "none"}, "kernel blur kind")
        _check_pair("linear_length", self.linear_length, 1.0, 101.0)
        for s in [*self.imagenet_c_severities, *self.shake_severities]:
            check_range("severities", s, 1, 5)
        _check_pair("gp_size", self.gp_size, 3, 101)
        _check_pair("gp_length_scale", self.gp_length_scale, 0.01, 10.0)
        _check_pair("gp_sigma", self.gp_sigma, 0.01, 10.0)
        _check_pair("trajectory_length", self.trajectory_length, 0.0, 10.0)
        _check_pair("trajectory_exposure", self.trajectory_exposure, 0.01, 1.0)
        check_range("saturate_prob", self.saturate_prob, 0.0, 1.0)
        _check_pair("saturate_lights", self.saturate_lights, 0, 100)
        _check_pair("saturate_intensity", self.saturate_intensity, 1.0, 1000.0)
        check_range("noise_prob", self.noise_prob, 0.0, 1.0)
        _check_pair("noise_sigma", self.noise_sigma, 0.0, 1.0)
        check_range("jpeg_prob", self.jpeg_prob, 0.0, 1.0)
        _check_pair("jpeg_quality", self.jpeg_quality, 1, 100)
        check_range("soften_prob", self.soften_prob, 0.0, 1.0)
        _check_pair("soften_sigma", self.soften_sigma, 0.0, 10.0)


@dataclass(frozen=True)
class KernelLossConfig:
    """Weights of the estimator's loss terms (0 switches one off)."""

    kernel: float = 1.0  # cross-entropy of the predicted kernel against the true one (a distribution over taps)
    moments: float = 1.0  # L1 on the predicted kernel's orientation and extent (deblur.archs.kernel_arch.moment_features)
    motion: float = 1.0  # L1 of the motion head (orientation and extent as 3 numbers) against the true kernel's
    recon: float = 1.0  # L1 of the Wiener restoration with the predicted kernel against the sharp crop

    def __post_init__(self):
        for name in ("kernel", "moments", "motion", "recon"):
            check_range(name, getattr(self, name), 0.0)


@dataclass(frozen=True)
class KernelTrainConfig:
    """Training of the kernel estimator (``stage: kernel`` in the YAML): python train_deblur.py --config configs/kernel_train.yaml."""

    stage: Literal["kernel"] = "kernel"
    name: str = "kernel_estimator"  # run folder: <project>/<name>
    project: str = "runs/kernel"
    sources: list[str] = field(default_factory=lambda: ["data/train/**/*.jpg", "data/train/**/*.png"])
    train_bounds: tuple[float, float] = (0.0, 0.9)  # hash-of-name split, as the generator's training
    val_bounds: tuple[float, float] = (0.9, 1.0)
    preload_size: int = 720  # photos are shrunk so the short side is at most this
    scale: tuple[float, float] = (0.5, 1.0)  # random rescale of the sharp photo before blurring
    crop: int = 128  # side of the grey crops the estimator sees (full resolution)
    crop_candidates: int = 4  # of this many random crops, keep the one with the most gradient energy
    blur: KernelBlurConfig = field(default_factory=KernelBlurConfig)
    model: EstimatorConfig = field(default_factory=EstimatorConfig)
    init_weights: str = ""  # start from an exported estimator (fine-tuning); ignored by --resume
    loss: KernelLossConfig = field(default_factory=KernelLossConfig)
    wiener_balance: float = 2.0e-3  # the recon loss's deconvolution regulariser
    recon_start: int = 500  # step from which the reconstruction loss is on
    batch_size: int = 32
    steps: int = 6000
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="adamw", lr=2.0e-3))
    warmup_steps: int = 100
    min_lr: float = 1.0e-5  # cosine decay from optimizer.lr to this over `steps`
    ema: float = 0.99  # EMA decay of the weights used for validation and export (0 = off)
    val_every: int = 250
    val_crops: int = 256  # fixed held-out crops, clean and with noise + JPEG
    log_every: int = 20
    save_every: int = 100
    device: str = "auto"  # auto (CUDA when available, else CPU) | cpu | cuda | cuda:N
    threads: int = 0  # torch intra-op threads (0 = leave as is)
    seed: int = 0
    max_minutes: float = 0.0  # stop after this wall time (0 = no limit); last.pt is saved

    def __post_init__(self):
        for name in ("train_bounds", "val_bounds"):
            lo, hi = getattr(self, name)
            if not 0.0 <= lo < hi <= 1.0:
                raise ValueError(f"'{name}' must satisfy 0 <= lo < hi <= 1, got {(lo, hi)}")
        _check_pair("scale", self.scale, 0.05, 4.0)
        check_range("crop", self.crop, 32)
        if self.crop < self.model.kernel_size:
            raise ValueError(f"'crop' ({self.crop}) must be at least model.kernel_size ({self.model.kernel_size})")
        check_range("crop_candidates", self.crop_candidates, 1)
        check_range("wiener_balance", self.wiener_balance, 1.0e-8)
        for name in ("batch_size", "steps", "val_every", "val_crops", "log_every", "save_every"):
            check_range(name, getattr(self, name), 1)
        for name in ("warmup_steps", "threads", "preload_size", "recon_start"):
            check_range(name, getattr(self, name), 0)
        check_range("min_lr", self.min_lr, 0.0)
        check_range("ema", self.ema, 0.0, 0.99999)
        check_range("max_minutes", self.max_minutes, 0.0)
