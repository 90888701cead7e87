"""``edit``: switch a circuit's top features off (or apply an edit file) and measure what moves
on every built-in task."""

from __future__ import annotations

import argparse

from circuits.circuit.config import CIRCUIT_ACTIONS
from circuits.cli.args import add_circuit_args, open_circuit
from circuits.core.config import add_flag
from circuits.core.errors import CircuitsError
from circuits.core.tables import print_table


def register(sub) -> None:
    p = sub.add_parser(
        "edit",
        help="switch circuit features off and measure the effect on every task",
        description="Ablate (or clamp / scale) SAE features: the top features of a "
        "circuit (--top N) or an edit file; report each built-in task's "
        "metric and accuracy before and after, and a few greedy completions.",
    )
    add_circuit_args(p, circuit_required=False)
    p.add_argument("--top", type=int, default=10, help="features from the circuit (default 10)")
    add_flag(
        p,
        "--action",
        "circuits.circuit.edit:edit_from_circuit",
        f"for --top: {' or '.join(CIRCUIT_ACTIONS)}",
        choices=CIRCUIT_ACTIONS,
    )
    p.add_argument(
        "--everywhere",
        action="store_true",
        help="switch the features off at every position, not only where the circuit uses them",
    )
    p.add_argument(
        "--optimise",
        action="store_true",
        help="instead of --top: search the circuit for the edit that removes the task with the least "
        "collateral (retain tasks, retain text), on the discovery prompts; reported on held-out ones",
    )
    p.add_argument(
        "--units",
        choices=("latents", "families"),
        default="latents",
        help="with --optimise: edit single latents (gradient search, at every position; default) or whole "
        "families (greedy search, where the circuit uses them)",
    )
    p.add_argument("--budget", type=int, help="with --optimise: latents (default 50) or families (default 5) at most")
    p.add_argument(
        "--steps", type=int, default=200, help="with --optimise over latents: the gates' gradient steps (default 200)"
    )
    p.add_argument(
        "--retain",
        help="with --optimise: what the edit must keep, comma-separated built-in tasks and/or 'text' "
        "(default: every other built-in task and text)",
    )
    p.add_argument(
        "--steer",
        metavar="VAR=VALUE",
        help="instead of --top: clamp the circuit's families that track VAR to their mean values where VAR is "
        "VALUE (e.g. IO=Alice), and report how often VALUE becomes the answer on held-out prompts",
    )
    p.add_argument("--edit", help="an edit JSON file instead of --circuit/--top")
    p.add_argument("--save-edit", help="write the edit as JSON here")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from circuits.circuit.edit import Edit, circuit_edit, edit_report
    from circuits.circuit.record import record_of
    from circuits.core.config import param_default
    from circuits.loaders import load_model, load_saes

    if args.edit:
        edit = Edit.load(args.edit)
        model = load_model(args.model or "toy", progress=not args.quiet)
        saes = load_saes(args.saes or "toy", model, progress=not args.quiet)
        task_name = args.task or "ioi"
    else:
        if not args.circuit:
            raise CircuitsError("circuits edit needs --circuit (with --top N) or --edit FILE")
        graph, model, saes, _ = open_circuit(args)
        record = record_of(graph)
        task_name = args.task or (record.sources.task if record.sources else record.task)
        if args.steer:
            edit, steering = steered_edit(graph, model, saes, task_name, args.steer)
        elif args.optimise:
            edit = optimised_edit(graph, model, saes, task_name, args)
        else:
            edit = circuit_edit(graph, model, saes, args.top, args.action, everywhere=args.everywhere)
    if args.save_edit:
        edit.save(args.save_edit)
    seed = 1 if args.optimise or args.steer else 0  # reported on prompts the edit was not made from
    report = edit_report(
        model, saes, edit.check(saes), task_name, n=args.n or param_default(edit_report, "n"), seed=seed
    )
    if args.steer:
        report.steering = steering
    print_report(edit, report, args.json)


def steered_edit(graph, model, saes, task_name: str, spec: str):
    """The steering edit ``VAR=VALUE`` asks for (values from the discovery prompts) and its
    success on the held-out prompts."""
    from circuits.circuit.edit_search import steer_edit, steering_success
    from tasks.builtin import make_task

    variable, sep, value = spec.partition("=")
    if not sep or not variable or not value:
        raise CircuitsError(f"--steer {spec!r}: use VARIABLE=VALUE, e.g. IO=Alice")
    discovery = make_task(task_name, model.tokenizer, n=256, seed=0)
    edit = steer_edit(graph, model, saes, discovery, variable, value)
    held_out = make_task(task_name, model.tokenizer, n=128, seed=1)
    return edit, steering_success(model, saes, edit, held_out, variable, value)


def optimised_edit(graph, model, saes, task_name: str, args: argparse.Namespace):
    """The edit `optimise_edit` picks on the discovery prompts (seed 0) and retain text."""
    from circuits.circuit.edit_search import GateSchedule, optimise_edit

    edit, history = optimise_edit(
        graph,
        model,
        saes,
        task_name,
        units=args.units,
        action=args.action,
        budget=args.budget,
        retain=retain_set(args.retain, task_name),
        schedule=GateSchedule(steps=args.steps),
        progress=not args.quiet,
    )
    if not args.json:
        print_search(history, args.units)
    return edit


def retain_set(spec: str | None, target: str) -> list[str] | None:
    """The retain set ``--retain`` names (built-in tasks and/or ``text``; None: the default)."""
    from tasks.builtin import BUILTIN_TASKS

    if spec is None:
        return None
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise CircuitsError("--retain is empty: name the built-in tasks (and/or 'text') the edit must keep")
    for n in names:
        if n == target:
            raise CircuitsError(f"--retain names {target}, the task the edit removes")
        if n != "text" and n not in BUILTIN_TASKS:
            raise CircuitsError(f"--retain: unknown task {n!r} (use {', '.join(BUILTIN_TASKS)} or text)")
    return names


def print_search(history, units: str) -> None:
    """The search's steps on the optimisation data."""
    rows = [
        [
            len(s.units) if units == "latents" else ", ".join(s.units) or "(none)",
            f"{s.target_change:+.1%}",
            f"{s.left:.1%}",
            f"{s.unintended:.1%}",
            f"{s.worst:.1%}",
            f"{s.kl:.4f}",
            f"{s.objective:.3f}",
        ]
        for s in history
    ]
    what = "latents tried (then pruned; the last is chosen)" if units == "latents" else "families"
    header = [what, "target moved", "left (per prompt)", "retain tasks (mean)", "(worst)", "text KL", "objective"]
    print_table(header, rows)
    print("(the discovery prompts and retain text; held-out figures below)\n")


def print_collateral(report) -> None:
    """The edit beside its aim and beside a random edit of the same size: TPP, corpus text."""
    c, r = report.collateral, report.random
    if c is None:
        return
    rc = r.collateral if r is not None else None
    print(
        f"\n{report.task}: intended {c.intended:+.1%}, unintended (other tasks' mean |change|) {c.unintended:.1%}, "
        f"TPP {c.tpp:+.3f}" + (f"; random edit of the same size: TPP {rc.tpp:+.3f}" if rc else "")
    )
    rows = []
    for t in c.text:
        other = rc.text_of(t.family) if rc else None
        rows.append(
            [
                t.family,
                t.n_tokens,
                f"{t.loss_before:.3f}",
                f"{t.loss_after:.3f}",
                f"{t.kl:.4f}",
                "-" if other is None else f"{other.kl:.4f}",
            ]
        )
    print_table(["held-out corpus text", "tokens", "loss before", "after", "KL (nats/token)", "random edit KL"], rows)


def print_report(edit, report, as_json: bool) -> None:
    """Each task before and after the edit, and the greedy completions (or JSON)."""
    import json

    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    print(f"edit: {edit.description or f'{len(edit.features)} features'}\n")
    print_table(
        ["task", "accuracy before", "after", "metric before", "after", "moved (share of clean-corrupt range)"],
        [
            [
                name,
                r.before.accuracy,
                r.after.accuracy,
                r.before.clean_metric,
                r.after.clean_metric,
                f"{r.relative_change:+.1%}",
            ]
            for name, r in report.tasks.items()
        ],
    )
    print_collateral(report)
    if report.steering is not None:
        st = report.steering
        print(
            f"\nsteering {st.variable} to {st.value!r}: the answer on {st.success:.0%} of {st.n_prompts} held-out "
            f"prompts (before: {st.base:.0%})"
        )
    print("\ngreedy completions:\n")
    print_table(["prompt", "before", "after"], [[c.prompt, c.before, c.after] for c in report.completions])
