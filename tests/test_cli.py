import json

import pytest

from circuits.cli import build_parser, main


@pytest.mark.parametrize("command", ["train-model", "eval-model", "demo"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"circuits {command}" in out and len(out.splitlines()) > 3


def test_errors_are_one_line(capsys):
    assert main(["eval-model", "--model", "no-such-model", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("circuits: error: unknown model 'no-such-model'")
    assert len(err.splitlines()) == 1


def test_eval_model_json(tiny_model_dir, capsys):
    assert main(["eval-model", "--model", str(tiny_model_dir), "--n", "8", "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["tasks"]) == {"ioi", "sva", "greater_than", "induction"}
    for row in result["tasks"].values():
        assert set(row) == {"accuracy", "clean_metric", "corrupt_metric"}
        assert 0.0 <= row["accuracy"] <= 1.0
