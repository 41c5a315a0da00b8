"""The one precision policy (runtime.resolve_precision) as a table: device x runtime x native bf16 x the
precision asked, for inference and for training; and every entry point that resolves 'auto' (pipeline,
Deblurrer, training) gives the policy's answer. CPU features and the GPU are monkeypatched, so the whole
table runs on any machine, CUDA or not."""

import logging

import pytest
import torch
from torch import nn

import runtime as rt
from runtime import available_runtimes, engines, resolve_precision

ERR = ValueError
# asked:                        auto (native bf16)  auto (no native bf16)  fp32     bf16     fp16     int8
INFERENCE = {
    ("cpu", "torch"):          ("bf16",             "fp32",                "fp32",  "bf16",  ERR,     ERR),
    ("cpu", "torch_compile"):  ("bf16",             "fp32",                "fp32",  "bf16",  ERR,     ERR),
    ("cpu", "onnxruntime"):    ("fp32",             "fp32",                "fp32",  ERR,     ERR,     ERR),
    ("cpu", "openvino"):       ("bf16",             "fp32",                "fp32",  "bf16",  ERR,     "int8"),
    ("cuda", "torch"):         ("fp16",             "fp16",                "fp32",  "bf16",  "fp16",  ERR),
    ("cuda", "torch_compile"): ("fp16",             "fp16",                "fp32",  "bf16",  "fp16",  ERR),
    ("cuda", "onnxruntime"):   (ERR,                ERR,                   ERR,     ERR,     ERR,     ERR),
    ("cuda", "openvino"):      (ERR,                ERR,                   ERR,     ERR,     ERR,     ERR),
}
# training differs in one cell: 'auto' on a GPU with native bf16 trains in bf16 (no loss scaling)
TRAINING_AUTO = {"cpu": ("bf16", "fp32"), "cuda": ("bf16", "fp16")}
ASKED = ("auto", "auto", "fp32", "bf16", "fp16", "int8")
CASES = [(dev, runtime, col, native) for (dev, runtime) in INFERENCE for col in range(6)
         for native in ((True,) if col == 0 else (False,) if col == 1 else (True, False))]


@pytest.fixture
def native_bf16(monkeypatch):
    """set(flag): CPU (torch and OpenVINO) and GPU all report native bf16 or all do not."""

    def set_flag(flag: bool) -> None:
        monkeypatch.setattr(rt, "cpu_native_bf16", lambda: flag)
        monkeypatch.setattr(rt, "cuda_native_bf16", lambda device="cuda": flag)
        monkeypatch.setattr(engines, "openvino_native_bf16", lambda: flag)

    return set_flag


@pytest.mark.parametrize("device,runtime,col,native", CASES)
def test_the_policy_table(device, runtime, col, native, native_bf16, caplog):
    native_bf16(native)
    asked, want = ASKED[col], INFERENCE[(device, runtime)][col]
    if want is ERR:
        with pytest.raises(ValueError, match=rf"{runtime}|{asked}") as e:
            resolve_precision(asked, runtime, device)
        assert "Fix:" in str(e.value)  # names what to change
        return
    with caplog.at_level(logging.WARNING, logger="runtime"):
        assert resolve_precision(asked, runtime, device) == want
    emulated = asked == "bf16" and not native
    assert ("emulated" in caplog.text) == emulated  # explicit bf16 without native support is allowed, with a warning
    if asked == "auto" and runtime in ("torch", "torch_compile"):
        assert resolve_precision(asked, runtime, device, training=True) == TRAINING_AUTO[device][col]


def test_unknown_precision_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown precision 'half'.*'auto', 'fp32', 'bf16', 'fp16'"):
        resolve_precision("half", "torch", "cpu")


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("amp", ["auto", "none", "bf16", "fp16"])
def test_training_and_pipeline_ask_the_policy(device, native, amp, native_bf16):
    """deblur.train.gan_trainer.resolve_amp and pipeline.stages.resolve_amp ('none' = fp32) give resolve_precision's answer."""
    from deblur.train.gan_trainer import resolve_amp as train_amp
    from pipeline.stages import resolve_amp as pipeline_amp

    native_bf16(native)
    asked = {"none": "fp32"}.get(amp, amp)
    dev = torch.device(device)
    if amp == "fp16" and device == "cpu":
        with pytest.raises(ValueError, match="amp='fp16' on cpu.*needs CUDA.*amp=none"):
            train_amp(amp, dev)
        with pytest.raises(ValueError, match="needs CUDA"):
            pipeline_amp(amp, dev, "torch")
        return
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    assert train_amp(amp, dev) is dtypes[resolve_precision(asked, "torch", dev, training=True)]
    for runtime in ("torch", "torch_compile", *(("onnxruntime", "openvino") if device == "cpu" else ())):
        if runtime == "onnxruntime" and amp == "bf16":
            continue  # an error, covered by the table
        want = resolve_precision(asked, runtime, dev)
        assert pipeline_amp(amp, dev, runtime) == {"fp32": "none"}.get(want, want)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("runtime", ["torch", "onnxruntime", "openvino"])
def test_deblurrer_auto_asks_the_policy(runtime, native, native_bf16, tmp_path):
    reason = available_runtimes("cpu")[runtime]
    if reason is not None:
        pytest.skip(f"{runtime}: {reason}")
    from deblur.predict import Deblurrer

    native_bf16(native)
    d = Deblurrer.from_model(nn.Conv2d(3, 3, 1), device="cpu", amp="auto", runtime=runtime, cache_dir=tmp_path)
    want = resolve_precision("auto", runtime, "cpu")
    assert d.amp == {"fp32": "none"}.get(want, want)
    if d.engine is not None:
        assert d.engine.precision == want
