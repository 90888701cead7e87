import json

import pytest

from circuits.cli import build_parser, main


@pytest.mark.parametrize("command", ["train-model", "eval-model", "train-saes", "eval-saes", "demo"])
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


def test_train_and_eval_saes(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "set"
    assert main(["train-saes", "--model", str(tiny_model_dir), "--hooks", "attn", "--width", "16",
                 "--k", "2", "--tokens", "1488", "--out", str(out), "--quiet"]) == 0
    assert "trained 1 topk SAEs (width 16)" in capsys.readouterr().out
    assert main(["eval-saes", "--model", str(tiny_model_dir), "--saes", str(out),
                 "--n-seqs", "4", "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["saes"]) == ["blocks.0.hook_attn_out"]
    row = result["saes"]["blocks.0.hook_attn_out"]
    assert {"l0", "fvu", "ce_recovered", "dead_frac", "dense_frac"} <= set(row)
    assert row["l0"] == 2.0
    assert "all_spliced_ce_recovered" in result


def test_train_saes_bad_input_is_one_line(tiny_model_dir, capsys):
    assert main(["train-saes", "--model", str(tiny_model_dir), "--arch", "relu", "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (
        "circuits: error: unknown SAE architecture 'relu': use topk, batchtopk, jumprelu, standard, gated")
    assert main(["train-saes", "--model", str(tiny_model_dir), "--layers", "0,x", "--quiet"]) == 2
    assert "--layers takes comma-separated integers" in capsys.readouterr().err
