"""The one precision policy (runtime.resolve_precision) as a table: device x runtime x native bf16 x the
precision asked, for inference and for training; and every entry point that resolves 'auto' (pipeline,
Deblurrer, training) gives the policy's answer. CPU features and the GPU are monkeypatched, so the whole
table runs on any machine, CUDA or not.

One vocabulary: PRECISIONS is the one list of names (configs and CLI choices), resolve_amp the one resolver
of a model's autocast precision, TORCH_DTYPES the one name -> dtype mapping, native_bf16 the one bf16 probe;
'none' is a deprecated alias of 'fp32', warned about once."""

import logging

import pytest
import torch
from torch import nn

import runtime as rt
from runtime import PRECISIONS, TORCH_DTYPES, available_runtimes, engines, resolve_amp, resolve_precision

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
    """set(flag): the one bf16 probe (runtime.native_bf16) says yes or no for every device and runtime."""

    def set_flag(flag: bool) -> None:
        monkeypatch.setattr(rt, "native_bf16", lambda device="cpu", runtime="torch": flag)

    return set_flag


@pytest.fixture
def fresh_warnings(monkeypatch):
    """The once-per-process deprecation warnings start afresh."""
    monkeypatch.setattr(rt, "_WARNED_ALIASES", set(), raising=False)


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
    with pytest.raises(ValueError, match=r"'half' is not a precision.*'auto', 'fp32', 'bf16', 'fp16'"):
        resolve_precision("half", "torch", "cpu")


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("amp", ["auto", "fp32", "bf16", "fp16"])
def test_training_and_pipeline_ask_the_policy(device, native, amp, native_bf16):
    """runtime.resolve_amp gives resolve_precision's answer as a name; TORCH_DTYPES maps it to the dtype."""
    native_bf16(native)
    dev = torch.device(device)
    if amp == "fp16" and device == "cpu":
        with pytest.raises(ValueError, match="amp='fp16'.*needs CUDA.*Fix:"):
            resolve_amp(amp, dev, training=True)
        return
    trained = resolve_amp(amp, dev, training=True)
    assert trained == resolve_precision(amp, "torch", dev, training=True)
    assert TORCH_DTYPES[trained] == {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[trained]
    for runtime in ("torch", "torch_compile", *(("onnxruntime", "openvino") if device == "cpu" else ())):
        if runtime == "onnxruntime" and amp == "bf16":
            continue  # an error, covered by the table
        assert resolve_amp(amp, dev, runtime) == resolve_precision(amp, runtime, dev)


def test_one_resolve_amp():
    """One resolve_amp, in runtime/, returning a name: the trainer and the pipeline keep no copy of their own."""
    from deblur.train import gan_trainer
    from pipeline import stages

    for module in (gan_trainer, stages):
        own = getattr(module, "resolve_amp", rt.resolve_amp)
        assert own is rt.resolve_amp, f"{module.__name__}.resolve_amp is a second resolver; use runtime.resolve_amp"
    with pytest.raises(ValueError, match=r"amp='int8'.*detector.*Fix: amp="):
        resolve_amp("int8", torch.device("cpu"), "openvino")  # int8 is the detector's precision, not an autocast one


def test_the_bf16_probe_lives_in_one_place():
    import deblur.predict as predict

    for module, name in [(rt, "cpu_native_bf16"), (rt, "cuda_native_bf16"), (engines, "openvino_native_bf16"),
                         (predict, "fast_bf16")]:
        assert not hasattr(module, name), f"{module.__name__}.{name} is a second bf16 probe; use runtime.native_bf16"


@pytest.mark.parametrize("major,want", [(7, False), (8, True), (9, True)])
def test_native_bf16_on_cuda_is_compute_capability_8_on(major, want, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))
    assert rt.native_bf16("cuda") is want


@pytest.mark.parametrize("flag", [True, False])
def test_native_bf16_on_openvino_asks_its_cpu_plugin(flag, monkeypatch):
    pytest.importorskip("openvino")
    import runtime.openvino_core

    class Core:
        def get_property(self, device, key):
            assert (device, key) == ("CPU", "OPTIMIZATION_CAPABILITIES")
            return ["FP32", "INT8", *(["BF16"] if flag else [])]

    monkeypatch.setattr(runtime.openvino_core, "core", Core)  # the process's one Core (runtime/openvino_core.py)
    assert rt.native_bf16("cpu", "openvino") is flag


def test_one_list_of_precision_names():
    """Every config check and every --amp choice lists PRECISIONS, with a did-you-mean."""
    from deblur.config import TrainConfig
    from deblur.predict import Deblurrer, _parse_args
    from detect.config import DetectorConfig
    from pipeline.__main__ import build_parser
    from pipeline.config import PipelineConfig

    pipeline_amp = next(a for a in build_parser()._actions if a.dest == "amp")
    assert tuple(pipeline_amp.choices) == PRECISIONS
    assert _parse_args(["x.jpg", "--amp", "fp32"]).amp == "fp32"
    with pytest.raises(SystemExit):
        _parse_args(["x.jpg", "--amp", "fp23"])
    builders = {
        "pipeline amp": lambda v: PipelineConfig(amp=v),
        "training amp": lambda v: TrainConfig(amp=v),
        "detect.precision": lambda v: DetectorConfig(precision=v),
        "Deblurrer amp": lambda v: Deblurrer.from_model(nn.Conv2d(3, 3, 1), device="cpu", amp=v),
    }
    for what, build in builders.items():
        with pytest.raises(ValueError) as e:
            build("fp23")
        msg = str(e.value)
        assert "'fp23'" in msg and str(list(PRECISIONS)) in msg and "Did you mean 'fp32'" in msg, (what, msg)


def test_none_is_a_deprecated_alias_of_fp32_warned_once(caplog, fresh_warnings):
    from configs import load_config
    from deblur.config import TrainConfig
    from deblur.predict import Deblurrer
    from pipeline.config import PipelineConfig

    with caplog.at_level(logging.WARNING):
        assert PipelineConfig(amp="none").amp == "fp32"
        assert TrainConfig(amp="none").amp == "fp32"
        assert load_config(TrainConfig, overrides=["amp=none"]).amp == "fp32"  # an old run's saved config loads
        assert Deblurrer.from_model(nn.Conv2d(3, 3, 1), device="cpu", amp="none").amp == "fp32"
        assert resolve_amp("none", torch.device("cpu")) == "fp32"
    said = [r.getMessage() for r in caplog.records if "'none'" in r.getMessage()]
    assert len(said) == 1 and "deprecated" in said[0] and "fp32" in said[0], said


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
    assert d.amp == want
    if d.engine is not None:
        assert d.engine.precision == want


def test_the_kernel_estimator_runs_fp32_under_auto_on_cuda(monkeypatch):
    """Its estimate is a softmax over k x k taps, most of them tiny: it runs fp32 on every device, while the
    detector's 'auto' on CUDA is fp16. CUDA is faked: the estimator has no weights, so nothing moves to a GPU,
    and compile_module builds its engine on the first call only."""
    from deblur.kernel_deblur import KernelDeblurrer

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")

    class Estimator(nn.Module):
        kernel_size = 5

        def forward(self, x):
            return x

    deblurrer = KernelDeblurrer(Estimator(), device="cuda", runtime="auto")
    assert deblurrer.engine is not None and deblurrer.engine.device.type == "cuda"
    assert deblurrer.engine.precision == "fp32"
    assert resolve_precision("auto", "torch", "cuda") == "fp16"  # the detector's (and a generator's) auto on CUDA
