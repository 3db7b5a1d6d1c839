"""Typed options: defaults < recipe < flags, conversions, clear errors."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

import pytest

from distilrubert.config import ConfigError, add_arguments, load_recipe, option, resolve, to_dict


@dataclass
class Demo:
    paths: list[str] = option(help="Inputs.")
    size: int = option(5, "Size.")
    sizes: list[int] = option([], "Sizes.")
    mode: Literal["a", "b"] = option("a", "Mode.")
    flag: bool = option(False, "Flag.")
    ratio: float | None = option(None, "Ratio.")

    def __post_init__(self):
        if self.size < 0:
            raise ValueError("--size must be >= 0")


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser, Demo)
    return vars(parser.parse_args(argv))


def test_flags_types_and_priority(tmp_path):
    values = _parse(["--paths", "a", "b", "--sizes", "1,2", "3", "--flag", "--mode", "b"])
    cfg = resolve(Demo, values, {"size": 7, "ratio": "0.5", "mode": "a"})
    assert cfg.paths == ["a", "b"] and cfg.sizes == [1, 2, 3] and cfg.flag is True
    assert cfg.mode == "b" and cfg.size == 7 and cfg.ratio == 0.5
    assert to_dict(cfg)["sizes"] == [1, 2, 3]


def test_defaults_are_not_shared():
    a, b = resolve(Demo, {"paths": ["x"]}), resolve(Demo, {"paths": ["y"]})
    a.sizes.append(1)
    assert b.sizes == []


def test_errors_name_the_option(tmp_path):
    with pytest.raises(ConfigError, match="--paths"):
        resolve(Demo, {})
    with pytest.raises(ConfigError, match="--size: 'x' is not a valid int"):
        resolve(Demo, {"paths": ["a"], "size": "x"})
    with pytest.raises(ConfigError, match="--mode"):
        resolve(Demo, {"paths": ["a"], "mode": "c"})
    with pytest.raises(ConfigError, match="unknown option 'sise'"):
        resolve(Demo, {"paths": ["a"]}, {"sise": 1}, recipe_name="r.yaml")
    with pytest.raises(ValueError, match="--size must be"):
        resolve(Demo, {"paths": ["a"], "size": -1})


def test_recipe_loading(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("max-length: 128\nsizes: [1, 2]\n")
    assert load_recipe(path) == {"max_length": 128, "sizes": [1, 2]}
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_recipe(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_recipe(tmp_path / "missing.yaml")
