"""Typed config of the detection evaluation (configs/eval_detection.yaml). Every default lives here.

Sections: ``data`` (what is evaluated and its ground truth), ``blur`` (synthetic blur), ``deblur``
(our model), ``detector`` (detect.DetectorConfig, run at a low threshold for mAP), ``methods``
(conditions besides ``sharp`` and ``blurred``) and the metric options.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from configs.loader import ConfigError, check_range, load_config, to_dict
from deblur.kernel_deblur import KernelDeblurConfig
from detect import DetectorConfig

DataFormat = Literal["images", "yolo", "coco", "paired"]
BlurKind = Literal["imagenet_c", "trajectory", "shake"]
GroundTruth = Literal["auto", "labels", "pseudo"]

# Conditions that need something besides the blurred image: 'wiener' needs the true kernel.
METHOD_NAMES = ("deblurred", "unsharp", "wiener")


@dataclass(frozen=True)
class EvalDataConfig:
    """What is evaluated.

    format:
      images  unlabelled images and/or videos (``sources``: globs) -> pseudo ground truth.
      yolo    ``sources``: dataset roots holding ``images/`` and ``labels/*.txt`` (YOLO: cls cx cy w h,
              normalised); ``names``: class names (data.yaml or a .txt, one a line; "" = COCO's 80).
      coco    ``sources``: one images folder; ``annotations``: an instances .json (bbox xywh pixels).
      paired  real blur: ``sources`` = glob of sharp images, ``blurred`` = glob of blurred images, matched
              by relative path (folders named blur/blurred/sharp are ignored when matching, GoPro-style);
              optional ``labels``: folder of YOLO .txt files named like the sharp images (else pseudo GT).
    """

    format: DataFormat = "images"
    sources: list[str] = field(default_factory=lambda: ["data/eval/vtest/*.jpg", "data/eval/photos/*.jpg"])
    annotations: str = ""  # coco: instances json
    blurred: str = ""  # paired: glob of the blurred images
    labels: str = ""  # paired: optional folder of YOLO label files
    names: str = ""  # yolo / paired labels: class-name file (data.yaml or .txt); "" = the 80 COCO names
    ground_truth: GroundTruth = "auto"  # auto: the labels when the format has them, else pseudo
    video_frame_step: int = 5  # videos in 'images' sources: take every Nth frame
    max_video_frames: int = 0  # per video, 0 = all
    block_size: int = 10  # bootstrap block: this many consecutive frames of one video; each photo is its own block

    def __post_init__(self):
        if not self.sources:
            raise ValueError("'sources' is empty: give at least one glob of images (or videos, or a dataset root)")
        if self.format == "coco" and not self.annotations:
            raise ValueError("format 'coco' needs 'annotations': the path of an instances .json")
        if self.format == "paired" and not self.blurred:
            raise ValueError("format 'paired' needs 'blurred': a glob of the blurred images matching 'sources'")
        if self.format == "images" and self.ground_truth == "labels":
            raise ValueError("format 'images' has no labels: set ground_truth to 'pseudo' or 'auto'")
        check_range("video_frame_step", self.video_frame_step, 1)
        check_range("max_video_frames", self.max_video_frames, 0)
        check_range("block_size", self.block_size, 1)


@dataclass(frozen=True)
class EvalBlurConfig:
    """Synthetic blur (ignored for 'paired' data, whose blur is real).

    kind: imagenet_c (deblur.data.blur_synth.imagenet_c_kernel at each severity), shake (shake_kernel) or
    trajectory (trajectory_kernel, random camera paths). Every image gets its own kernel from a seed
    derived from a stable hash of (seed, image name, severity): every method sees the same blurred image.
    """

    kind: BlurKind = "imagenet_c"
    severities: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4, 5])  # 0 = no blur (harm to sharp frames)
    # imagenet_c: True = the kernel centred on its mass (a frame's exposure is centred on its timestamp, and a pure
    # shift cannot be seen in one frame); False = ImageNet-C's own one-sided kernel, which also shifts the image
    centered: bool = True
    # True = blurred in linear light (gamma 2.2 decoded, convolved, re-encoded), as a camera integrates light during
    # its exposure; False = the stored sRGB values convolved, as ImageNet-C and the training blur
    linear: bool = False
    seed: int = 0

    def __post_init__(self):
        if not self.severities:
            raise ValueError("'severities' is empty: give at least one of 0..5 (0 = no blur)")
        if len(set(self.severities)) != len(self.severities):
            raise ValueError(f"'severities' has duplicates: {self.severities}")
        for s in self.severities:
            check_range("severities", s, 0, 5)  # 0 = no blur: what each method does to a sharp frame


@dataclass(frozen=True)
class EvalDeblurConfig:
    weights: str = ""  # a kernel estimator or a generator file; "" = deblur.models.DEFAULT_DEBLURRER (kernel_estimator.pt)
    device: str = "auto"  # auto (CUDA when available, else CPU) | cpu | cuda | cuda:N
    max_side: int = 0  # 0 = deblur at full resolution; N = shrink so the long side is <= N, then resize back
    channels_last: bool = True
    # deblur.predict.Deblurrer runtime: torch (eager, the reference) | torch_compile | onnxruntime | openvino | auto
    runtime: Literal["torch", "torch_compile", "onnxruntime", "openvino", "auto"] = "auto"
    # more models scored in the same run, {label: "WEIGHTS [kernel option=value ...]"}: each is a condition of its
    # own, on the very same images, blur and bootstrap resamples as 'deblurred', so the report gives each one's
    # difference to 'deblurred' with a paired interval (e.g. a fine-tune against the shipped model, or the same
    # estimator with other kernel options: "deblur/weights/kernel_estimator.pt refine.iters=10").
    compare: dict[str, str] = field(default_factory=dict)
    # options of the kernel-aware deblurrer, used for every weights file that holds a kernel estimator
    kernel: KernelDeblurConfig = field(default_factory=KernelDeblurConfig)

    def __post_init__(self):
        check_range("max_side", self.max_side, 0)
        reserved = ("sharp", "blurred", *METHOD_NAMES)
        for label, path in self.compare.items():
            if label in reserved or not re.fullmatch(r"[A-Za-z0-9_.-]+", label):
                raise ValueError(
                    f"deblur.compare: label {label!r} must be letters, digits, '_', '.' or '-' and not one of "
                    f"{list(reserved)} (e.g. deblur.compare={{finetuned: runs/deblur/NAME/export.pt}})")
            if not path.split():
                raise ValueError(f"deblur.compare.{label}: give the path of an exported generator or estimator")
            self.compare_entry(label)  # its kernel options parse and validate
        if 0 < self.max_side < 32:
            raise ValueError(f"'max_side' must be 0 (full resolution) or >= 32, got {self.max_side}")

    def compare_entry(self, label: str) -> tuple[str, KernelDeblurConfig]:
        """deblur.compare.<label> -> (weights path, the kernel options: deblur.kernel with its overrides)."""
        path, *options = self.compare[label].split()
        try:
            kernel = load_config(KernelDeblurConfig, data=to_dict(self.kernel), overrides=options) if options else self.kernel
        except (ConfigError, ValueError, TypeError) as e:
            raise ValueError(f"deblur.compare.{label}: {e} (options are deblur.kernel keys, e.g. "
                             f"'{path} refine.iters=10')") from e
        return path, kernel


@dataclass(frozen=True)
class EvalConfig:
    name: str = "blurred_vs_deblurred"
    out: str = ""  # "" = runs/eval/<name>
    limit: int = 0  # evaluate at most this many images, spread evenly over the set (0 = all)
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    blur: EvalBlurConfig = field(default_factory=EvalBlurConfig)
    deblur: EvalDeblurConfig = field(default_factory=EvalDeblurConfig)
    # mAP needs the low-confidence tail: the detector runs at conf 0.001 (COCO practice)
    detector: DetectorConfig = field(default_factory=lambda: DetectorConfig(conf=0.001, max_det=300))
    methods: list[str] = field(default_factory=lambda: ["deblurred", "unsharp", "wiener"])
    unsharp_amount: float = 1.5
    unsharp_sigma: float = 2.0  # Gaussian sigma of the unsharp mask, pixels
    wiener_balance: float = 0.002  # Wiener regularisation (noise-to-signal, Laplacian prior)
    pseudo_gt_conf: float = 0.5  # pseudo ground truth: the detector's own detections >= this on sharp
    operating_conf: float = 0.25  # precision, recall, mean TP confidence and counts at this threshold
    classes: list[str] | None = None  # evaluate only these classes (None = every class with ground truth)
    max_dets: int = 100  # per image and class, as COCO
    per_class_top: int = 5  # per-class AP for this many most frequent classes (person always)
    bootstrap: int = 500  # block-bootstrap resamples (0 = no intervals)
    ci: float = 0.95
    seed: int = 0
    batch_size: int = 4  # frames per detector call
    threads: int = 0  # torch intra-op threads for deblur + detection (0 = leave as is; 1 when the cores are shared)
    n_examples: int = 3  # rows in the examples grid
    min_recovery_gap: float = 0.01  # recovery is NaN when mAP_sharp - mAP_blurred is below this
    # detector_variants experiment: detectors scored against `detector` (the reference) on the same images,
    # {label: [key=value overrides of `detector`]}; and the pseudo ground truth's detector (overrides of
    # `detector`; [] = the reference itself, which favours it over any variant that differs)
    detector_variants: dict[str, list[str]] = field(default_factory=lambda: {
        "int8": ["runtime=openvino", "precision=int8", "device=cpu"],
        "imgsz320": ["imgsz=320"],
        "imgsz320_int8": ["imgsz=320", "runtime=openvino", "precision=int8", "device=cpu"],
    })
    variants_gt: list[str] = field(default_factory=lambda: ["imgsz=608"])

    def __post_init__(self):
        for m in self.methods:
            if m not in METHOD_NAMES:
                raise ValueError(
                    f"method '{m}' is unknown. Available: {list(METHOD_NAMES)} ('sharp' and 'blurred' are always run)"
                )
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"'methods' has duplicates: {self.methods}")
        check_range("limit", self.limit, 0)
        check_range("unsharp_amount", self.unsharp_amount, 0.0)
        check_range("unsharp_sigma", self.unsharp_sigma, 0.1)
        check_range("wiener_balance", self.wiener_balance, 1.0e-8)
        check_range("pseudo_gt_conf", self.pseudo_gt_conf, 0.0, 1.0)
        check_range("operating_conf", self.operating_conf, 0.0, 1.0)
        if self.operating_conf < self.detector.conf:
            raise ValueError(
                f"'operating_conf' ({self.operating_conf}) is below detector.conf ({self.detector.conf}): "
                "lower detector.conf (e.g. 0.001) so the detector keeps the boxes it is scored on"
            )
        if self.pseudo_gt_conf < self.detector.conf:
            raise ValueError(f"'pseudo_gt_conf' ({self.pseudo_gt_conf}) is below detector.conf ({self.detector.conf})")
        if self.classes is not None and not self.classes:
            raise ValueError("'classes' is an empty list: use null for every class, or name some")
        check_range("max_dets", self.max_dets, 1)
        check_range("per_class_top", self.per_class_top, 0)
        check_range("bootstrap", self.bootstrap, 0)
        check_range("ci", self.ci, 0.5, 0.999)
        check_range("batch_size", self.batch_size, 1)
        check_range("threads", self.threads, 0)
        check_range("n_examples", self.n_examples, 0)
        check_range("min_recovery_gap", self.min_recovery_gap, 0.0)
