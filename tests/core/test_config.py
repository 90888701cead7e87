"""The shared config / result helpers: Literal checks, validate(), to_dict / from_dict, CLI defaults."""

import json
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import pytest

from circuits.core.config import (
    Config,
    Result,
    field_choices,
    field_default,
    param_default,
    to_plain,
)
from circuits.core.errors import CircuitsError
from circuits.core.tables import markdown_table


@dataclass(frozen=True)
class Inner:
    a: int = 1
    b: float = 0.5


@dataclass
class Item(Config):
    label: ClassVar[str] = "item"

    name: str
    mode: Literal["x", "y"] = "x"


@dataclass
class Demo(Config):
    label: ClassVar[str] = "demo config"
    field_labels: ClassVar[dict[str, str]] = {"arch": "demo architecture"}

    arch: Literal["topk", "relu"] = "topk"
    kinds: tuple[Literal["resid", "mlp"], ...] = ("resid", "mlp")
    norm: Literal["LN", "RMS"] | None = "LN"
    layers: tuple[int, ...] | None = None
    width: int = 16
    inner: Inner = field(default_factory=Inner)
    items: list[Item] = field(default_factory=list)

    def validate(self) -> None:
        if self.width <= 0:
            raise CircuitsError(f"demo config: width must be positive, got {self.width}")


def test_literal_fields_are_checked_on_construction():
    with pytest.raises(CircuitsError) as err:
        Demo(arch="gelu")
    assert str(err.value) == "unknown demo architecture 'gelu': use topk, relu"
    with pytest.raises(CircuitsError, match="unknown demo config kinds 'attn': use resid, mlp"):
        Demo(kinds=("resid", "attn"))
    with pytest.raises(CircuitsError, match="unknown demo config norm 'BN': use LN, RMS"):
        Demo(norm="BN")
    assert Demo(norm=None).norm is None  # Optional Literal accepts None
    with pytest.raises(CircuitsError, match="unknown item mode 'z'"):
        Item("a", "z")


def test_validate_runs_after_the_literal_checks():
    with pytest.raises(CircuitsError, match="width must be positive, got 0"):
        Demo(width=0)


def test_lists_become_tuples_for_tuple_fields():
    cfg = Demo(kinds=["mlp"], layers=[0, 2])
    assert cfg.kinds == ("mlp",) and cfg.layers == (0, 2)


def test_round_trip_through_json():
    cfg = Demo(arch="relu", layers=(1,), inner=Inner(3, 0.25), items=[Item("a"), Item("b", "y")])
    data = json.loads(json.dumps(cfg.to_dict()))
    assert (
        data["layers"] == [1]
        and data["inner"] == {"a": 3, "b": 0.25}
        and data["items"][1] == {"name": "b", "mode": "y"}
    )
    assert Demo.from_dict(data) == cfg


def test_from_dict_errors_are_one_line_and_name_where():
    with pytest.raises(CircuitsError) as err:
        Demo.from_dict({"widht": 3}, where="cfg.json")
    assert str(err.value) == "cfg.json: unknown demo config field 'widht'"
    with pytest.raises(CircuitsError) as err:
        Demo.from_dict({"widht": 3})
    assert str(err.value) == "unknown demo config field 'widht'"
    with pytest.raises(CircuitsError, match=r"^cfg.json: items\[1\]: missing field 'name'$"):
        Demo.from_dict({"items": [{"name": "a"}, {"mode": "x"}]}, where="cfg.json")
    with pytest.raises(CircuitsError, match=r"^cfg.json: items\[0\]: unknown item mode 'q': use x, y$"):
        Demo.from_dict({"items": [{"name": "a", "mode": "q"}]}, where="cfg.json")
    with pytest.raises(CircuitsError, match="^cfg.json: unknown demo architecture 'gelu'"):
        Demo.from_dict({"arch": "gelu"}, where="cfg.json")
    with pytest.raises(CircuitsError, match="^cfg.json: width must be positive|^cfg.json: demo config: width"):
        Demo.from_dict({"width": -1}, where="cfg.json")
    with pytest.raises(CircuitsError, match="^cfg.json: expected an object"):
        Demo.from_dict([1, 2], where="cfg.json")
    for err_text in (str(e) for e in _errors()):
        assert "\n" not in err_text


def _errors():
    for data in ({"inner": 3}, {"inner": {"c": 1}}, {"items": 5}, {"items": [7]}):
        try:
            Demo.from_dict(data, where="f")
        except CircuitsError as err:
            yield err
        else:  # pragma: no cover
            raise AssertionError(f"{data} was accepted")


def test_cli_helpers_read_the_dataclass():
    assert field_default(Demo, "arch") == "topk"
    assert field_default(Demo, "inner") == Inner()  # default factories are called
    assert field_choices(Demo, "arch") == ("topk", "relu")
    assert field_choices(Demo, "kinds") == ("resid", "mlp")
    assert field_choices(Demo, "norm") == ("LN", "RMS")
    with pytest.raises(KeyError):
        field_choices(Demo, "width")

    def fn(a, n: int = 7):
        return a, n

    assert param_default(fn, "n") == 7


def test_the_project_configs_take_their_choices_from_literals():
    from circuits.circuit.config import ACTIONS
    from circuits.circuit.edit import FeatureEdit
    from circuits.toy.config import ToyModelConfig
    from sae.config import ARCHITECTURES, SAETrainConfig

    assert field_choices(SAETrainConfig, "arch") == ARCHITECTURES
    assert field_choices(SAETrainConfig, "kinds") == ("resid", "mlp", "attn")
    assert field_choices(FeatureEdit, "action") == ACTIONS
    assert "gelu" in field_choices(ToyModelConfig, "act_fn")
    with pytest.raises(CircuitsError, match="unknown hook kind 'mlps': use resid, mlp, attn"):
        SAETrainConfig(kinds=("mlps",))


@dataclass
class Score(Result):
    accuracy: float
    pair: tuple[int, int]


@dataclass
class Report(Result):
    scores: dict[str, Score]
    cfg: Demo
    notes: list[str]


def test_results_convert_nested_dataclasses_and_tuples():
    report = Report({"ioi": Score(0.5, (1, 2))}, Demo(), ["a"])
    data = report.to_dict()
    assert data["scores"] == {"ioi": {"accuracy": 0.5, "pair": [1, 2]}}
    assert data["cfg"]["kinds"] == ["resid", "mlp"] and data["notes"] == ["a"]
    assert json.loads(json.dumps(data)) == data
    assert to_plain(report) == data


def test_markdown_table():
    assert markdown_table(["a", "b"], [["x", 0.12345], [1, "y"]]) == "| a | b |\n|---|---|\n| x | 0.123 |\n| 1 | y |"


SEED = 3


def module_level_function(n: int = 7, *, name: str = "x", seed: int = SEED) -> None:
    """A function whose defaults `param_default` reads from this file's source."""


def test_param_default_reads_a_named_function_from_its_source():
    here = "tests.core.test_config:module_level_function"
    assert (param_default(here, "n"), param_default(here, "name")) == (7, "x")
    with pytest.raises(KeyError, match="not a literal"):
        param_default(here, "seed")
    with pytest.raises(KeyError, match="has no function"):
        param_default("tests.core.test_config:nowhere", "n")


def test_add_flag_takes_default_type_and_choices_from_the_field():
    import argparse

    from circuits.core.config import add_flag

    p = argparse.ArgumentParser()
    add_flag(p, "--arch", Demo, "one of {choices}")
    add_flag(p, "--kinds", Demo, "kinds of {choices}")
    add_flag(p, "--width", Demo, "latents", given=True)
    add_flag(p, "--n", "tests.core.test_config:module_level_function", "pairs")
    helps = {a.dest: a.help for a in p._actions}
    assert helps["arch"] == "one of topk, relu (default topk)"
    assert helps["kinds"] == "kinds of resid, mlp (default resid,mlp)"
    assert helps["width"] == "latents (default 16)" and helps["n"] == "pairs (default 7)"
    args = p.parse_args([])
    assert (args.arch, args.kinds, args.width, args.n) == ("topk", "resid,mlp", None, 7)
    assert p.parse_args(["--width", "3", "--arch", "gelu"]).width == 3  # the config checks the choice
