"""What the commands share: a parser whose own errors are one line, the flags that name a task
or a circuit, and the few helpers handlers call first. Nothing here imports torch: handlers
import the library when they run, so ``circuits CMD --help`` answers at once."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from circuits.core.config import param_default
from circuits.core.errors import CircuitsError


class Parser(argparse.ArgumentParser):
    """argparse with its own errors (unknown flag, missing argument, bad number) as one line
    ``circuits: error: ...`` and exit code 2, like every other error; also for sub-commands."""

    def error(self, message: str) -> None:  # type: ignore[override]
        command = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""  # "circuits edit" -> "edit: "
        self.exit(2, f"circuits: error: {command}{' '.join(message.split())}\n")


def add_task_args(p: argparse.ArgumentParser, default_n: int | None = None, n_help: str | None = None) -> None:
    """The prompts (``--task``, ``--n``, ``--seed``, ``--metric``), the model and SAE set and
    where they run (``--device``, ``--dtype``); ``n_help`` replaces ``--n``'s help text."""
    default_n = param_default("tasks.builtin:make_task", "n") if default_n is None else default_n
    p.add_argument("--task", required=True, help="ioi, sva, greater_than, induction, or a .jsonl file")
    p.add_argument(
        "--n",
        "--pairs",
        dest="n",
        type=int,
        default=default_n,
        help=n_help or f"prompt pairs (default {default_n}; spell it --pairs under torchrun)",
    )
    p.add_argument("--seed", type=int, default=0, help="prompt seed (default 0)")
    p.add_argument("--metric", help="replace the task's metric: logit_diff, prob_diff, logprob or kl")
    p.add_argument("--model", default="toy", help="'toy', a model folder, or a TransformerLens name")
    p.add_argument(
        "--saes",
        default="toy",
        help="'toy', an SAE set folder (FOLDER@WIDTH: its first WIDTH latents, a Matryoshka prefix), "
        "or a sae-lens release (RELEASE[:ID,ID])",
    )
    p.add_argument("--hooks", help="only these SAE kinds, comma-separated (resid_pre, z, attn, resid_mid, mlp, resid)")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda[:i]")
    p.add_argument("--dtype", default="fp32", help="fp32 (default), bf16 or fp16")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_circuit_args(p: argparse.ArgumentParser, circuit_required: bool = True) -> None:
    """A circuit file and overrides of the model, SAE set and prompts it records."""
    p.add_argument("--circuit", required=circuit_required, help="a circuit.json written by discover")
    p.add_argument("--task", help="task (default: the circuit's)")
    p.add_argument("--n", type=int, help="prompt pairs (default: as many as discovery used)")
    p.add_argument("--seed", type=int, help="prompt seed (default: discovery's + 1, held-out prompts)")
    p.add_argument("--model", help="model (default: the circuit's)")
    p.add_argument("--saes", help="SAE set (default: the circuit's)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def placed(args: argparse.Namespace):
    """The model and SAE set the task flags name, on ``--device`` in ``--dtype``, restricted
    to ``--hooks``."""
    from circuits.loaders import load

    return load(args.model, args.saes, args.hooks, args.device, args.dtype, progress=not args.quiet)


def task_spec(args: argparse.Namespace):
    """The `circuits.loaders.TaskSpec` the task flags name."""
    from circuits.loaders import TaskSpec

    return TaskSpec(args.task, args.n, args.seed, args.metric, getattr(args, "held_out", None))


def read_circuit(path: str):
    """The circuit file at ``path``; an older file's note (what it lacks) as one line."""
    import warnings

    from circuits.circuit.graph import OldCircuitFile, load_graph

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", OldCircuitFile)
        graph = load_graph(path)
    for w in caught:
        print(f"circuits: note: {w.message}", file=sys.stderr)
    return graph


def open_circuit(args: argparse.Namespace):
    """The circuit ``--circuit`` names with its model, SAE set and (held-out) prompts, each
    overridable by the circuit flags (`circuits.loaders.open_circuit`)."""
    from circuits.loaders import open_circuit

    graph = read_circuit(args.circuit)
    return open_circuit(graph, args.model, args.saes, args.task, args.n, args.seed, progress=not args.quiet)


def writable(folder: Path) -> Path:
    """``folder``, created; one line when it cannot be created or written (checked before the work)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CircuitsError(f"output folder {folder} cannot be created ({err.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise CircuitsError(f"output folder {folder} is not writable")
    return folder


def int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CircuitsError(f"{flag} takes comma-separated integers, got {text!r}") from None


def print_result(result, as_json: bool, table) -> None:
    """A result as JSON (``--json``) or as its table."""
    import json

    print(json.dumps(result.to_dict(), indent=2) if as_json else table(result))
