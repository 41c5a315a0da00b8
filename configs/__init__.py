"""YAML configs and the one strict loader every entry point uses (imports nothing of ours)."""

from pathlib import Path

from configs.loader import ConfigError, from_dict, load_config, parse_overrides, save_config, to_dict

CONFIG_DIR = Path(__file__).resolve().parent

__all__ = ["CONFIG_DIR", "ConfigError", "from_dict", "load_config", "parse_overrides", "save_config", "to_dict"]
