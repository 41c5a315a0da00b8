"""The strict YAML -> dataclass loader, and every configs/*.yaml."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from configs import CONFIG_DIR, ConfigError, did_you_mean, load_config, parse_overrides, save_config, to_dict
from deblur.config import BlurConfig, DataConfig, GeneratorConfig, TrainConfig


@dataclass(frozen=True)
class Inner:
    lr: float = 1.0e-4
    mode: Literal["a", "b"] = "a"

    def __post_init__(self):
        if not 0 < self.lr < 1:
            raise ValueError(f"'lr' must be in (0, 1), got {self.lr}")


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    steps: int = 3
    flag: bool = False
    tags: list[str] = field(default_factory=list)
    pair: tuple[float, float] = (0.0, 1.0)
    weights: dict[str, float] = field(default_factory=lambda: {"l1": 1.0})
    maybe: str | None = None
    inner: Inner = field(default_factory=Inner)


def test_defaults_file_and_overrides_merge(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: y\ninner:\n  lr: 2.0e-4\n")
    cfg = load_config(Outer, path, ["steps=5", "inner.mode=b", "tags=[p, q]", "maybe=null", "pair=[1, 2]"])
    assert (cfg.name, cfg.steps, cfg.inner.lr, cfg.inner.mode) == ("y", 5, 2.0e-4, "b")
    assert cfg.tags == ["p", "q"] and cfg.pair == (1.0, 2.0) and cfg.maybe is None


def test_whole_mapping_override_replaces_but_dotted_key_merges(tmp_path):
    # `weights={...}` must mean exactly those terms: merged into the YAML's mapping, a loss the user
    # meant to drop (an ablation's control run) would silently stay in. A dotted key edits one entry.
    path = tmp_path / "c.yaml"
    path.write_text("weights: {l1: 1.0, fft: 0.1, extra: 0.5}\ninner: {lr: 2.0e-4, mode: b}\n")
    assert load_config(Outer, path, ["weights={l1: 1.0, fft: 0.1}"]).weights == {"l1": 1.0, "fft": 0.1}
    assert load_config(Outer, path, ["weights.fft=0.2"]).weights == {"l1": 1.0, "fft": 0.2, "extra": 0.5}
    # a config section written whole still merges: the YAML's other keys in it survive
    assert load_config(Outer, path, ["inner={lr: 3.0e-4}"]).inner == Inner(lr=3.0e-4, mode="b")
    task = load_config(TrainConfig, CONFIG_DIR / "deblur_train_task.yaml", ["model.content_loss={l1: 1.0, fft: 0.1}"])
    assert task.model.content_loss == {"l1": 1.0, "fft": 0.1}


def test_unknown_key_has_did_you_mean():
    with pytest.raises(ConfigError, match="Unknown config key 'inner.lrr'.*Did you mean 'lr'"):
        load_config(Outer, overrides=["inner.lrr=0.1"])
    with pytest.raises(ConfigError, match="'steps'"):
        load_config(Outer, data={"stepz": 1})


def test_did_you_mean_names_the_close_choices_only():
    assert did_you_mean("patchgan", ["patch_gan", "double_gan", "no_gan"]) == " Did you mean 'patch_gan'?"
    assert did_you_mean("lrr", ["lr", "lrs", "steps"]) == " Did you mean 'lr' or 'lrs'?"
    assert did_you_mean("zzz", ["lr", "steps"]) == ""
    # a Literal's members need not be strings
    with pytest.raises(ConfigError, match=r"not one of \['a', 'b'\]\. Did you mean 'a'\?"):
        load_config(Outer, overrides=["inner.mode=aa"])


@pytest.mark.parametrize(
    "override,msg",
    [
        ("steps=1.5", "expected an integer"),
        ("steps=true", "expected an integer"),
        ("flag=1", "expected true or false"),
        ("inner.lr=1e-4", "1.0e-4"),  # PyYAML reads 1e-4 as a string: the error says how to write it
        ("inner.mode=c", r"not one of \['a', 'b'\]"),
        ("inner.lr=5.0", r"'lr' must be in \(0, 1\)"),
        ("pair=[1, 2, 3]", "expected 2 items"),
        ("weights=3", "expected a mapping"),
    ],
)
def test_bad_values_are_errors(override, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(Outer, overrides=[override])


def test_overrides_are_parsed_safely_not_evaluated():
    tree = parse_overrides(["a.b=__import__('os').system('false')", "c=[1, 2]"])
    assert tree == {"a": {"b": "__import__('os').system('false')"}, "c": [1, 2]}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["justakey"])


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Outer, bad)


def test_save_and_reload_roundtrip(tmp_path):
    cfg = load_config(TrainConfig, overrides=["model.g_name=fpn_mobilenet_v2_dsc", "batch_size=2"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(TrainConfig, tmp_path / "config.yaml")
    assert again == cfg and to_dict(again)["model"]["g_name"] == "fpn_mobilenet_v2_dsc"


def test_deblur_range_checks():
    with pytest.raises(ValueError, match="'bounds'"):
        DataConfig(sources=["x"], bounds=(0.9, 0.1))
    with pytest.raises(ValueError, match="blur kind 'shake' is unknown"):
        BlurConfig(kinds={"shake": 1.0})
    with pytest.raises(ValueError, match="'dropout'"):
        GeneratorConfig(dropout=2.0)
    with pytest.raises(ValueError, match="files_a"):
        DataConfig(files_a="a/*.png")


def _schema_for(path):
    """Each YAML file names its schema by file name."""
    from deblur.config import KernelTrainConfig
    from deblur.config import TrainConfig as Train
    from detect.config import DetectorConfig
    from evaluation.config import EvalConfig
    from pipeline.config import PipelineConfig

    # a broken import must fail this test, not skip a schema
    schemas = {"deblur_train": Train, "kernel_train": KernelTrainConfig, "detect": DetectorConfig,
               "pipeline": PipelineConfig, "eval_detection": EvalConfig}
    for prefix, schema in schemas.items():
        if path.stem.startswith(prefix):
            return schema
    raise AssertionError(f"{path.name}: no schema is known for this config file; add it to _schema_for")


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_file_loads(path):
    schema = _schema_for(path)
    cfg = load_config(schema, path)
    assert isinstance(cfg, schema)
    assert load_config(schema, data=to_dict(cfg)) == cfg  # what the file sets survives a save and a reload


@pytest.mark.parametrize("name", ["deblur_train", "kernel_train", "detect", "pipeline", "eval_detection"])
def test_default_yaml_files_equal_the_dataclass_defaults(name):
    """These YAML files document the defaults: every value in them must be the dataclass's own default."""
    path = CONFIG_DIR / f"{name}.yaml"
    schema = _schema_for(path)
    assert load_config(schema, path) == schema()


def test_device_auto_is_the_default_everywhere():
    """'auto' (CUDA when available, else the CPU; runtime.resolve_device decides) is every entry point's default:
    the config dataclasses (and so the YAML files, which must equal them), the classes and the CLIs."""
    import inspect

    from deblur.config import KernelTrainConfig
    from deblur.kernel_deblur import KernelDeblurrer
    from deblur.predict import Deblurrer, _parse_args, load_deblurrer
    from detect.config import DetectorConfig
    from evaluation.config import EvalConfig
    from pipeline.__main__ import build_parser
    from pipeline.config import PipelineConfig
    from runtime import compile_module

    defaults = {
        "detect.device": DetectorConfig().device,
        "pipeline detector.device": PipelineConfig().detector.device,
        "training device": TrainConfig().device,
        "kernel training device": KernelTrainConfig().device,
        "eval deblur.device": EvalConfig().deblur.device,
        "eval detector.device": EvalConfig().detector.device,
        "deblur.predict --device": _parse_args(["x.jpg"]).device,
        "python -m pipeline --device": build_parser().parse_args([]).device or PipelineConfig().detector.device,
    }
    for fn in (Deblurrer.__init__, Deblurrer.from_model, load_deblurrer, KernelDeblurrer.__init__, compile_module):
        defaults[fn.__qualname__] = inspect.signature(fn).parameters["device"].default
    assert {k: v for k, v in defaults.items() if v != "auto"} == {}


def test_a_partial_section_keeps_the_rest_of_its_fields_default():
    """One key of a config section overridden: the section's other fields keep the field's own default (which
    may differ from its class's), not the class's."""
    from evaluation import EvalConfig
    from pipeline.__main__ import build_parser, config_from_args
    from pipeline.config import PIPELINE_REFINE, PipelineConfig

    assert load_config(EvalConfig, overrides=["detector.imgsz=320"]).detector.conf == EvalConfig().detector.conf == 0.001
    tuned = load_config(PipelineConfig, overrides=["kernel.gate_px=2.0"])
    assert tuned.kernel.gate_px == 2.0 and tuned.kernel.refine == PipelineConfig().kernel.refine
    assert tuned.kernel.refine.background and tuned.kernel.refine.every == PIPELINE_REFINE.every > 1  # its video mode
    assert tuned.kernel.refine.starts == (1.0,) and len(load_config(EvalConfig).deblur.kernel.refine.starts) > 1
    video = config_from_args(build_parser().parse_args(["--refine-every", "8"]))  # the flag alone turns it on
    assert video.kernel.refine.every == 8 and video.kernel.refine.iters > 0
