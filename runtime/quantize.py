"""INT8 post-training quantization (NNCF, OpenVINO backend) of an ONNX export, cached on disk.

    path = quantize_onnx(onnx_path, calibration, chw, cache_dir)   # calibration: what the ranges are measured on
    model = read_packed(core(), path)                     # an openvino.Model (core: runtime.openvino_core), int8 where NNCF put quantizers

NNCF inserts FakeQuantize nodes with ranges measured on ``samples`` (the calibration set); OpenVINO compiles
them into int8 kernels (VNNI where the CPU has it, AVX2 otherwise). The MIXED preset (asymmetric activations:
LeakyReLU outputs are not symmetric around 0) and the detection heads left in float (``ignored``) keep
boxes and scores closest to fp32. NNCF's ONNX backend is not used: OpenVINO reads its QDQ graphs into
wrong scores. The IR (xml + weights) is packed into one file so the cache can check it like the ONNX
exports; it is keyed by the source export's sha256, the calibration's key, the recipe and the library
versions. The samples themselves are built only when the cache misses: a hit costs no decoding. What int8 costs in accuracy is measured by ``python eval_detection.py detector_variants``;
callers choose int8 only where that was measured.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from runtime.cache import cached_file
from runtime.files import file_sha256

logger = logging.getLogger(__name__)

MIN_SAMPLES = 8  # fewer gives activation ranges from too little data to trust


def quantization_available() -> str | None:
    """None when int8 quantization can run here, else the reason (a missing package and how to install it)."""
    missing = [m for m in ("nncf", "openvino") if importlib.util.find_spec(m) is None]
    if missing:
        return f"Python package(s) {missing} not installed (pip install -r requirements.txt)"
    return None


@dataclass(frozen=True)
class Calibration:
    """What int8 ranges are measured on, for inputs of (C,H,W) ``chw``.

    samples(chw) -> (1,C,H,W) float32 arrays: the real inputs, from the training corpus, never evaluation data;
    called only when the cache misses. key(chw) -> a string that changes whenever the samples would (part of
    the cache key), cheap to compute.
    """

    samples: Callable[[tuple[int, int, int]], Sequence[np.ndarray]]
    key: Callable[[tuple[int, int, int]], str]


PACK_MAGIC = b"OVIR1\n"


def write_packed(model, path: Path) -> None:
    """An openvino.Model -> one file: magic, the xml's byte length (8 bytes), the xml, the weights."""
    import tempfile

    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "model.xml"
        ov.save_model(model, str(xml), compress_to_fp16=False)
        xml_bytes, bin_bytes = xml.read_bytes(), xml.with_suffix(".bin").read_bytes()
    with open(path, "wb") as f:
        f.write(PACK_MAGIC + len(xml_bytes).to_bytes(8, "little") + xml_bytes + bin_bytes)


def read_packed(core, path: Path):
    """The openvino.Model in a file written by :func:`write_packed`; ValueError for any other file."""
    import openvino as ov

    data = Path(path).read_bytes()
    if not data.startswith(PACK_MAGIC):
        raise ValueError(f"{path} is not a packed OpenVINO model")
    n = int.from_bytes(data[len(PACK_MAGIC):len(PACK_MAGIC) + 8], "little")
    start = len(PACK_MAGIC) + 8
    xml, weights = data[start:start + n], data[start + n:]
    if len(xml) != n:
        raise ValueError(f"{path} is truncated")
    return core.read_model(xml.decode(), ov.Tensor(np.frombuffer(weights, np.uint8).copy()))


def quantize_onnx(onnx_path: Path, calibration: Calibration, chw: tuple[int, int, int], cache_dir: Path,
                  ignored: Sequence[str] = ()) -> Path:
    """Cached int8 OpenVINO model (a packed file, see read_packed) of ``onnx_path`` for inputs (B,)+``chw``,
    calibrated on ``calibration.samples(chw)``. ``ignored``: substrings of node names to keep in float."""
    reason = quantization_available()
    if reason:
        raise RuntimeError(f"precision 'int8' needs NNCF: {reason}. Or use precision 'fp32'/'auto'.")
    import importlib.metadata as md

    fields = {
        "source_sha256": file_sha256(Path(onnx_path)),
        "calibration": calibration.key(chw),
        "recipe": {"preset": "mixed", "ignored": sorted(ignored)},
        "versions": {name: md.version(name) for name in ("nncf", "openvino")},
    }

    def build(tmp: Path) -> None:
        import nncf

        from runtime.openvino_core import core, kept_signal_stack

        samples = list(calibration.samples(chw))
        if len(samples) < MIN_SAMPLES:
            raise ValueError(f"int8 calibration needs at least {MIN_SAMPLES} samples, got {len(samples)}")
        nncf.set_log_level(logging.WARNING)  # its INFO lines list every node it skips
        model = core().read_model(str(onnx_path))
        model.reshape({model.inputs[0].get_any_name(): list(samples[0].shape)})
        skip = [op.get_friendly_name() for op in model.get_ops() if any(k in op.get_friendly_name() for k in ignored)]
        logger.info("Quantizing %s to int8 on %d calibration samples (%d nodes kept in float)",
                    Path(onnx_path).name, len(samples), len(skip))
        with kept_signal_stack():  # NNCF compiles the model to collect statistics
            quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples),
                                      preset=nncf.QuantizationPreset.MIXED,
                                      ignored_scope=nncf.IgnoredScope(names=skip, validate=False))
        write_packed(quantized, tmp)

    def verify(path: Path) -> None:
        from runtime.openvino_core import core

        read_packed(core(), path)

    return cached_file(Path(cache_dir), "int8", ".ovir", fields, build, verify)
