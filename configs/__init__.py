"""YAML configs, the one strict loader every entry point uses, and the few helpers every package shares
(configs/common.py). Imports nothing of ours."""

from pathlib import Path

from configs.common import IMAGE_EXTENSIONS, did_you_mean
from configs.loader import ConfigError, from_dict, load_config, parse_overrides, save_config, to_dict

CONFIG_DIR = Path(__file__).resolve().parent

__all__ = ["CONFIG_DIR", "ConfigError", "IMAGE_EXTENSIONS", "did_you_mean", "from_dict", "load_config",
           "parse_overrides", "save_config", "to_dict"]
