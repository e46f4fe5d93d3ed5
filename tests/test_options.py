"""MeasureOptions is the one declaration of the measure options: every surface exposes exactly its fields."""

import dataclasses

import pytest

from hf_collapse import CollapseArguments, MeasureOptions
from hf_collapse.cli import build_parser
from hf_collapse.integrations.settings import PREFIX

NAMES = MeasureOptions.names()
DEFAULTS = {f.name: f.default for f in dataclasses.fields(MeasureOptions)}


def test_collapse_arguments_embed_exactly_the_options():
    fields = {f.name: f for f in dataclasses.fields(CollapseArguments)}
    embedded = {n[len(PREFIX) :] for n in fields if n[len(PREFIX) :] in DEFAULTS}
    assert embedded == set(NAMES)
    for name in NAMES:
        assert fields[PREFIX + name].default == DEFAULTS[name]
        assert (
            fields[PREFIX + name].metadata["help"]
            == dataclasses.fields(MeasureOptions)[NAMES.index(name)].metadata["help"]
        )
    assert CollapseArguments().options == MeasureOptions()


@pytest.mark.parametrize("command", ["measure", "sweep"])
def test_cli_flags_are_exactly_the_options(command):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    group = next(g for g in sub._action_groups if g.title == "measures")
    dests = [a.dest for a in group._group_actions]
    assert dests[: len(NAMES)] == list(NAMES)  # generated from the fields, in their order
    assert set(dests) - set(NAMES) == {"covariance", "statistics_device", "torch_dtype"} | (
        {"layers"} if command == "measure" else set()
    )
    args = sub.parse_args(["MODEL" if command == "measure" else "RUN", "--output-dir", "x"])
    assert {n: getattr(args, n) for n in NAMES} == DEFAULTS
    args = sub.parse_args(["M", "--classes", "7", "3", "--riesz-s", "2", "--dtype", "float64", "--output-dir", "x"])
    from hf_collapse.cli.arguments import dataclass_from_args

    assert dataclass_from_args(args, MeasureOptions) == MeasureOptions(classes=[3, 7], riesz_s=2.0, dtype="float64")


def test_options_are_validated_once_with_clear_errors():
    with pytest.raises(ValueError, match="k must be"):
        MeasureOptions(k=float("nan"))
    with pytest.raises(ValueError, match="tile_size"):
        MeasureOptions(tile_size=0)
    with pytest.raises(TypeError, match="riesz_s must be a number"):
        MeasureOptions(riesz_s="2")
    with pytest.raises(TypeError, match="unknown keyword"):
        from hf_collapse import CollapseStatistics, measure_collapse

        measure_collapse(CollapseStatistics(3, 2), tile=4)


def test_collapse_arguments_parse_from_the_command_line():
    import torch
    from transformers import HfArgumentParser

    (c,) = HfArgumentParser(CollapseArguments).parse_args_into_dataclasses(
        ["--collapse_k", "1.5", "--collapse_modules", "transformer.h.1", "lm_head", "--collapse_dtype", "float64"]
    )
    assert c.collapse_k == 1.5 and c.modules == ["transformer.h.1", "lm_head"]
    assert c.options.torch_dtype == torch.float64
    with pytest.raises(ValueError, match="dtype must be one of"):
        CollapseArguments(collapse_dtype="half")
    with pytest.raises(ValueError, match="unknown collapse_measures"):
        CollapseArguments(collapse_measures=["nc9"])
