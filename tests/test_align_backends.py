"""The alignment package's seams: the registry, the reduce KL backend choice, --kl-kernel, the piece map."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import typing

import numpy as np
import pytest
import torch

from distilrubert.align import (
    ALIGNMENT_CLASSES,
    DEFAULT_POOLING,
    KL_KERNELS,
    MatchAlignment,
    PieceMap,
    ReduceAlignment,
    make_alignment,
)
from distilrubert.tokenmap import TokenMap
from tests.test_align import STUDENT, TEACHER


@pytest.fixture
def token_map() -> TokenMap:
    return TokenMap.from_vocabs(TEACHER, STUDENT)


def test_make_alignment_builds_from_the_registry(token_map):
    assert set(ALIGNMENT_CLASSES) == {"match", "reduce"}
    assert isinstance(make_alignment("match", token_map, 0, pooling="sum"), MatchAlignment)
    reduce = make_alignment("reduce", token_map, 0, "sum", "eager")
    assert isinstance(reduce, ReduceAlignment) and reduce.pooling == "sum" and reduce.kl_kernel == "eager"
    with pytest.raises(ValueError, match="--alignment: unknown alignment 'span' \\(match, reduce\\)"):
        make_alignment("span", token_map, 0)


def test_library_and_cli_defaults_agree():
    from distilrubert.distill import DistillConfig

    fields = {f.name: f.default for f in dataclasses.fields(DistillConfig)}
    assert fields["pooling"] == DEFAULT_POOLING == "mean"
    assert inspect.signature(ReduceAlignment).parameters["pooling"].default == DEFAULT_POOLING
    assert inspect.signature(make_alignment).parameters["pooling"].default == DEFAULT_POOLING
    assert fields["kl_kernel"] == inspect.signature(ReduceAlignment).parameters["kl_kernel"].default == "auto"
    assert typing.get_args(typing.get_type_hints(DistillConfig)["kl_kernel"]) == KL_KERNELS


@pytest.mark.parametrize(("kernel", "expected"), [("eager", "eager"), ("auto", "eager")])  # auto: small vocabulary
def test_kl_backend_is_chosen_once_at_construction_and_logged(token_map, caplog, kernel, expected):
    with caplog.at_level(logging.INFO, logger="distilrubert.align.reduce"):
        align = ReduceAlignment(token_map, 0, pooling="sum", kl_kernel=kernel)
    assert align.kl_backend is align.linear_map and align.linear_map.kernel_name == expected
    assert f"reduce KL kernel: {expected} (--kl-kernel {kernel}" in caplog.text
    caplog.clear()
    align.to(torch.device("cpu"))  # same kind of device: the same backend, nothing chosen again
    assert align.linear_map.kernel_name == expected and "reduce KL kernel" not in caplog.text


def test_logsumexp_pooling_uses_the_dense_backend(token_map):
    align = ReduceAlignment(token_map, 0, pooling="logsumexp", kl_kernel="native")
    assert align.kl_backend.kernel_name == "dense" and align.linear_map is None


def test_moving_to_another_device_kind_chooses_again(token_map):
    align = ReduceAlignment(token_map, 0, pooling="mean", kl_kernel="native")
    assert align.linear_map.kernel_name == "native"
    align.to(torch.device("meta"))  # not a CPU: no native kernel there
    assert align.linear_map.kernel_name in ("compile", "eager")
    assert align.linear_map.token_pieces.device.type == "meta" and align.dense.cov_ids.device.type == "meta"


def test_kl_kernel_is_validated_and_fused_is_a_deprecated_alias(token_map):
    with pytest.raises(ValueError, match="--kl-kernel: unknown kernel 'off' \\(auto, native, compile, eager\\)"):
        ReduceAlignment(token_map, 0, kl_kernel="off")
    with pytest.warns(DeprecationWarning, match="--fused-kl off is deprecated.*--kl-kernel eager"):
        align = ReduceAlignment(token_map, 0, fused="off")
    assert align.kl_kernel == "eager" and align.linear_map.kernel_name == "eager"
    with pytest.warns(DeprecationWarning, match="--fused-kl on is deprecated.*--kl-kernel compile"):
        assert make_alignment("reduce", token_map, 0, fused="on").kl_kernel == "compile"


def test_distill_config_maps_the_deprecated_flag(tmp_path, caplog):
    from distilrubert.config import ConfigError, load_recipe, resolve
    from distilrubert.distill import DistillConfig

    required = {"teacher": "t", "student": "s", "corpus": ["c"], "output": str(tmp_path / "o")}
    assert resolve(DistillConfig, {**required, "kl_kernel": "compile"}).kl_kernel == "compile"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("fused-kl: 'off'\n", encoding="utf-8")
    with pytest.warns(DeprecationWarning, match="--fused-kl off"), caplog.at_level(logging.WARNING):
        config = resolve(DistillConfig, required, load_recipe(recipe))
    assert config.kl_kernel == "eager" and config.fused_kl is None  # cleared: run.json records the new name
    assert "use --kl-kernel eager" in caplog.text
    with pytest.raises(ConfigError, match="--kl-kernel: 'off' is not one of auto, native, compile, eager"):
        resolve(DistillConfig, {**required, "kl_kernel": "off"})


def test_piece_map_views_agree_with_the_token_map(token_map):
    pm = PieceMap.from_token_map(token_map)
    assert pm.n_teacher == len(TEACHER) and pm.n_student == len(STUDENT)
    assert pm.covered.tolist() == token_map.covered.tolist()
    for t in range(pm.n_teacher):
        expected = token_map.teacher_to_student[t, : token_map.lengths[t]] if token_map.covered[t] else []
        assert pm.pieces[pm.offsets[t]:pm.offsets[t + 1]].tolist() == list(expected)
        assert pm.padded[t][pm.padded[t] >= 0].tolist() == list(expected)
    starts, tokens, _ = pm.by_piece
    ends = np.append(starts[1:], len(tokens))
    for s in range(pm.n_student):  # the transpose: the teacher tokens containing each student piece
        holders = sorted({t for t in range(pm.n_teacher) if s in pm.pieces[pm.offsets[t]:pm.offsets[t + 1]]})
        assert sorted(set(tokens[starts[s]:ends[s]].tolist())) == holders
    with pytest.raises(dataclasses.FrozenInstanceError):
        pm.pieces = pm.pieces[:1]
