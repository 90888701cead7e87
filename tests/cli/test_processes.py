"""The command line across processes: ``--nproc`` workers, a failing worker, torchrun, and a
bf16 run (apart from tests/cli/test_cli.py so that `make test`'s workers run them beside the
rest: each starts processes of its own)."""

import math

import pytest

from circuits.cli import main
from tests.helpers import discover_argv


def test_two_processes_find_the_same_circuit_as_one(tiny_model_dir, tiny_sae_dir, tmp_path, capsys):
    from circuits.circuit.graph import load_graph

    common = discover_argv(
        tiny_model_dir, tiny_sae_dir, "--n", "12", "--batch-size", "4", "--method", "atp", "--top-n", "30", "--quiet"
    )
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    assert main([*common, "--out", str(tmp_path / "two"), "--nproc", "2"]) == 0
    assert "(2 processes)" in capsys.readouterr().out
    one, two = load_graph(tmp_path / "one" / "circuit.json"), load_graph(tmp_path / "two" / "circuit.json")
    assert set(one.nodes) == set(two.nodes) and set(one.edges) == set(two.edges)
    for n in one:
        assert two.nodes[n]["effect"] == pytest.approx(one.nodes[n]["effect"], abs=1e-5)
        assert two.nodes[n]["activation"] == pytest.approx(one.nodes[n]["activation"], abs=1e-5)
    for u, v, w in one.edges(data="weight"):
        assert two.edges[u, v]["weight"] == pytest.approx(w, abs=1e-5)


def test_failed_worker_stops_all_and_writes_nothing(tiny_model_dir, tiny_sae_dir, tmp_path, capsys):
    out = tmp_path / "bad"
    assert (
        main(
            discover_argv(
                tiny_model_dir,
                tiny_sae_dir,
                "--nproc",
                "2",
                "--out",
                str(out),
                "--quiet",
                task=str(tmp_path / "missing.jsonl"),
            )
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "worker" in err[0] and "nothing was written" in err[0]
    assert not (out / "circuit.json").exists()
    assert main(["discover", "--task", "ioi", "--nproc", "999", "--out", str(out), "--quiet"]) == 2
    assert "more than this machine's" in capsys.readouterr().err


def test_bf16_discovery_runs(tiny_model_dir, tiny_sae_dir, tmp_path, capsys):
    import torch

    from circuits.circuit.graph import load_graph

    common = discover_argv(tiny_model_dir, tiny_sae_dir, "--n", "8", "--method", "atp", "--top-n", "10", "--quiet")
    assert main([*common, "--out", str(tmp_path / "fp32")]) == 0
    assert main([*common, "--out", str(tmp_path / "bf16"), "--dtype", "bf16"]) == 0
    # how far bf16 may move effects: tests/attribution/test_nodes.py::test_bf16_effects_agree_with_fp32_per_submodule
    b = load_graph(tmp_path / "bf16" / "circuit.json")
    effects = [b.nodes[n]["effect"] for n in b if n != "metric"]
    assert effects and all(math.isfinite(e) for e in effects) and any(e != 0 for e in effects)
    if not torch.cuda.is_available():
        assert main([*common, "--out", str(tmp_path / "gpu"), "--device", "cuda"]) == 2
        assert "no GPU is visible here" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "x"), "--dtype", "fp8"]) == 2


def test_torchrun_launch_equals_one_process(tiny_model_dir, tiny_sae_dir, tmp_path):
    import subprocess
    import sys

    from circuits.circuit.graph import load_graph
    from circuits.core.parallel import _free_port

    args = discover_argv(
        tiny_model_dir,
        tiny_sae_dir,
        "--pairs",
        "12",
        "--batch-size",
        "4",
        "--method",
        "atp",
        "--top-n",
        "20",
        "--quiet",
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            str(_free_port()),
            "-m",
            "circuits.cli",
            *args,
            "--out",
            str(tmp_path / "torchrun"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "(2 processes)" in run.stdout
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    one, two = load_graph(tmp_path / "one" / "circuit.json"), load_graph(tmp_path / "torchrun" / "circuit.json")
    assert set(one.edges) == set(two.edges)
    for n in one:
        assert two.nodes[n]["effect"] == pytest.approx(one.nodes[n]["effect"], abs=1e-5)
