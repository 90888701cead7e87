"""The `circuits` command line: one sub-command per job, errors as one line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from circuits.core.config import field_choices, field_default, param_default
from circuits.core.errors import CircuitsError
from circuits.core.tables import print_table


def _train_model(args: argparse.Namespace) -> None:
    from circuits.toy.model import TOY_NAME, ToyModelConfig, default_cache_dir, train_model

    cfg = ToyModelConfig(seed=args.seed, steps=args.steps)
    folder = Path(args.out) if args.out else default_cache_dir() / TOY_NAME
    start = time.perf_counter()
    train_model(cfg, folder, progress=not args.quiet)
    print(f"trained {cfg.n_layers}-layer model in {time.perf_counter() - start:.0f} s -> {folder}")


def _eval_model(args: argparse.Namespace) -> None:
    from circuits.circuit.evaluate import evaluate_model, format_table
    from circuits.toy.model import load_model

    model = load_model(args.model, device=args.device, progress=not args.quiet)
    result = evaluate_model(model, tasks=args.tasks, n=args.n, seed=args.seed)
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_table(result))


def _train_saes(args: argparse.Namespace) -> None:
    from circuits.toy.model import TOY_NAME, default_cache_dir, load_model
    from sae.train import SAETrainConfig, train_sae_set

    layers = None if args.layers is None else tuple(_int_list(args.layers, "--layers"))
    model = load_model(args.model, progress=not args.quiet)
    cfg = SAETrainConfig(
        arch=args.arch,
        kinds=_kinds(args.hooks),
        layers=layers,
        width=args.width,
        k=args.k,
        n_tokens=args.tokens,
        seed=args.seed,
        seq_len=min(field_default(SAETrainConfig, "seq_len"), model.cfg.n_ctx),
    )
    default = default_cache_dir() / ("saes-toy" if args.model == TOY_NAME else f"saes-{Path(args.model).name}")
    folder = Path(args.out) if args.out else default
    start = time.perf_counter()
    saes = train_sae_set(model, cfg, folder, progress=not args.quiet)
    print(f"trained {len(saes)} {cfg.arch} SAEs (width {cfg.width}) in {time.perf_counter() - start:.0f} s -> {folder}")


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CircuitsError(f"{flag} takes comma-separated integers, got {text!r}") from None


def _kinds(text: str) -> tuple[str, ...]:
    """``--hooks resid,mlp`` -> ("resid", "mlp")."""
    return tuple(k.strip() for k in text.split(",") if k.strip())


def _eval_saes(args: argparse.Namespace) -> None:
    from circuits.toy.model import load_model
    from sae.evaluate import evaluate_saes, format_table
    from sae.train import load_saes

    model = load_model(args.model, progress=not args.quiet)
    saes = load_saes(args.saes, model, progress=not args.quiet)
    result = evaluate_saes(model, saes, n_seqs=args.n_seqs, progress=not args.quiet)
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_table(result))


def _load_task(args: argparse.Namespace, model):
    from tasks.builtin import make_task

    return make_task(args.task, model.tokenizer, n=args.n, seed=args.seed, metric=args.metric)


def _load_placed(args: argparse.Namespace):
    """Model and SAE set on ``--device`` in ``--dtype``, restricted to ``--hooks``."""
    from circuits.toy.model import check_placement, load_model, place
    from sae.train import load_saes

    device, dtype = getattr(args, "device", "cpu"), getattr(args, "dtype", "fp32")
    check_placement(device, dtype)  # before loading anything
    model = load_model(args.model, device=device, progress=not args.quiet)
    saes = _restrict(load_saes(args.saes, model, progress=not args.quiet), args.hooks)
    return place(model, saes, device, dtype)


def _restrict(saes, kinds: str | None):
    """``saes`` restricted to the comma-separated ``--hooks`` kinds (all when empty)."""
    if not kinds:
        return saes
    try:
        return saes.restrict(_kinds(kinds))
    except CircuitsError as err:
        raise CircuitsError(f"--hooks: {err}") from None


MIN_HELD_OUT = 4  # prompt pairs on each side of a held-out split


def _discover_job(args: argparse.Namespace):
    """Load what the arguments name and find the circuit (also run in each --nproc worker)."""
    from circuits.circuit.discover import DiscoverConfig, discover_fitting

    model, saes = _load_placed(args)
    task = _load_task(args, model)
    cfg = DiscoverConfig(
        method=args.method,
        steps=args.steps,
        node_threshold=args.node_threshold,
        edge_threshold=args.edge_threshold,
        top_n=args.top_n,
        batch_size=args.batch_size,
        edges=not args.no_edges,
        target_faithfulness=args.target_faithfulness,
        **_hierarchy_settings(args),
    )
    held_out = None
    if cfg.target_faithfulness is not None:
        task, held_out = _held_out(args, model, task)
    return discover_fitting(model, saes, task, cfg, progress=not args.quiet, held_out=held_out)


HIERARCHY_FLAGS = {
    "ablation": "--ablation",
    "start_layer": "--start-layer",
    "mask_steps": "--mask-steps",
    "mask_sparsity": "--mask-sparsity",
}


def _hierarchy_settings(args: argparse.Namespace) -> dict:
    """The settings that only a hierarchical circuit uses: given without
    --target-faithfulness they would do nothing, which is an error."""
    from circuits.circuit.discover import DiscoverConfig

    given = {k: getattr(args, k) for k in HIERARCHY_FLAGS if getattr(args, k) is not None}
    if given and args.target_faithfulness is None:
        flags = ", ".join(HIERARCHY_FLAGS[k] for k in given)
        raise CircuitsError(f"{flags} only apply with --target-faithfulness (not given)")
    return {k: given.get(k, field_default(DiscoverConfig, k)) for k in HIERARCHY_FLAGS}


def _held_out_record(args: argparse.Namespace, graph):
    """Which prompts the hierarchical circuit was validated on."""
    from circuits.circuit.record import HeldOut, record_of

    record = record_of(graph)
    if args.task.endswith(".jsonl"):
        n = record.n_examples  # the discovery half
        return HeldOut(args.task, rows=(n, n + record.hierarchy.n_held_out))
    return HeldOut(args.task, n=args.n, seed=args.seed + 1)


def _held_out(args: argparse.Namespace, model, task):
    """(discovery prompts, held-out prompts): a built-in task's next seed, or the second
    half of a prompt file."""
    from circuits.core.errors import CircuitsError
    from tasks.builtin import make_task

    if not args.task.endswith(".jsonl"):
        return task, make_task(args.task, model.tokenizer, n=args.n, seed=args.seed + 1, metric=args.metric)
    if task.n_examples < MIN_HELD_OUT * 2:
        raise CircuitsError(
            f"{args.task}: {task.n_examples} prompt pairs are too few to hold out half for validation "
            f"(--target-faithfulness needs at least {2 * MIN_HELD_OUT})"
        )
    half = task.n_examples // 2
    return task.subset(slice(0, half)), task.subset(slice(half, task.n_examples))


def _discover(args: argparse.Namespace) -> None:
    import warnings

    from circuits.circuit.graph import record_held_out, record_sources, save_graph, summary
    from circuits.circuit.record import record_of
    from circuits.core.parallel import check_nproc, is_main, join_from_environment, rank_and_world, run_local
    from circuits.toy.model import load_model
    from sae.train import load_saes

    check_nproc(args.nproc)
    out = Path(args.out) if args.out else Path("outputs") / Path(args.task).stem
    path = _writable(out) / "circuit.json"  # before the work, not after
    start = time.perf_counter()
    if args.nproc != 1:
        # train / fill the caches once here, not in every worker
        load_saes(args.saes, load_model(args.model, progress=not args.quiet), progress=not args.quiet)
        graph = run_local(args.nproc, _discover_job, args)
    else:
        joined = join_from_environment()  # under torchrun: one process of the group
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            graph = _discover_job(args)
        if joined and not is_main():
            return
        for w in caught:
            if issubclass(w.category, UserWarning):
                print(f"circuits: warning: {w.message}", file=sys.stderr)
    # what validate / edit need to rebuild the model, SAE set and prompts
    record_sources(graph, args.task, args.n, args.seed, args.model, args.saes, args.metric, args.hooks)
    if record_of(graph).hierarchy is not None:
        record_held_out(graph, _held_out_record(args, graph))
    save_graph(graph, path)
    print(summary(graph))
    if record_of(graph).hierarchy is not None:
        _print_hierarchy(record_of(graph), path)
    procs = max(args.nproc, rank_and_world()[1])
    print(
        f"\n{record_of(graph).method} discovery in {time.perf_counter() - start:.1f} s "
        f"({procs} process{'es' if procs > 1 else ''}) -> {path}"
    )


LEVEL_NAMES = {"sites": "sites", "attribution": "features (attribution prefix)", "optimised": "features (optimised)"}


def _print_hierarchy(record, path: Path) -> None:
    """Both levels of a hierarchical circuit (a CircuitRecord's ``hierarchy``) as a table,
    its step times, and one line when the target was missed (the circuit is kept)."""
    h = record.hierarchy
    start = f", layers < {h.start_layer} kept" if h.start_layer else ""
    print(f"\nhierarchical circuit, {h.ablation} ablation{start}, held-out prompts, target F >= {h.target}:")
    rows = [
        [
            LEVEL_NAMES[key],
            str(level.n_nodes) if key == "sites" else f"{level.n_nodes} + {level.n_error_nodes} err",
            f"{level.faithfulness:.3f}",
            f"{level.completeness:.3f}",
            f"{level.random_faithfulness:.3f}",
        ]
        for key, level in h.levels()
    ]
    print_table(["level", "size", "faithfulness", "completeness", "random same size"], rows)
    print(f"circuit: {len(h.sites)} sites, features from the {h.feature_level.ranking} ranking")
    print_table(["step", "seconds"], [[k, f"{v:.1f}"] for k, v in record.times.items()])
    if not h.reached_target:
        sl, fl = h.site_level, h.feature_level
        print(
            f"circuits: warning: target faithfulness {h.target} not reached: best found "
            f"F {sl.faithfulness:.3f} at {sl.n_nodes} sites, F {fl.faithfulness:.3f} at "
            f"{fl.n_nodes} features + {fl.n_error_nodes} error nodes (circuit kept: {path})",
            file=sys.stderr,
        )


def _writable(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CircuitsError(f"output folder {folder} cannot be created ({err.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise CircuitsError(f"output folder {folder} is not writable")
    return folder


def _check_attribution(args: argparse.Namespace) -> None:
    from circuits.circuit.check import check_attribution, format_table

    model, saes = _load_placed(args)
    task = _load_task(args, model)
    result = check_attribution(
        model, saes, task, n_top=args.top, steps=args.steps, n_edges=args.edges, progress=not args.quiet
    )
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_table(result))


def _circuit_setup(args: argparse.Namespace):
    """The circuit file, and the model, SAE set and task it was found with (overridable)."""
    from circuits.circuit.ablation import check_graph
    from circuits.circuit.record import Sources, record_of
    from circuits.toy.model import load_model
    from sae.train import load_saes
    from tasks.builtin import make_task

    graph = _load_circuit(args.circuit)
    record = record_of(graph)
    src = record.sources or Sources(task=record.task, n=128)
    model = load_model(args.model or src.model, progress=not args.quiet)
    saes = _restrict(load_saes(args.saes or src.saes, model, progress=not args.quiet), src.hooks)
    check_graph(graph, model, saes)
    name = args.task or src.task
    seed = args.seed if args.seed is not None else src.seed + 1  # held-out prompts by default
    task = make_task(name, model.tokenizer, n=args.n or src.n, seed=seed, metric=src.metric)
    held_out = record.hierarchy.held_out if record.hierarchy is not None else None
    rows = held_out.rows if held_out is not None else None
    if rows and name.endswith(".jsonl") and args.n is None:  # the file's held-out half
        task = task.subset(slice(*rows))
    return graph, model, saes, task


def _load_circuit(path: str):
    """The circuit file at ``path``; an older file's note (what it lacks) as one line."""
    import warnings

    from circuits.circuit.graph import OldCircuitFile, load_graph

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", OldCircuitFile)
        graph = load_graph(path)
    for w in caught:
        print(f"circuits: note: {w.message}", file=sys.stderr)
    return graph


def _validate(args: argparse.Namespace) -> None:
    from circuits.circuit.ablation import faithfulness_curve, prune_by_ablation, ranked_nodes
    from circuits.circuit.graph import save_graph
    from circuits.circuit.record import record_of
    from circuits.export.plots import plot_faithfulness

    graph, model, saes, task = _circuit_setup(args)
    folder = _writable(Path(args.circuit).parent)
    record = record_of(graph).hierarchy
    how = args.ablation or (record.ablation if record else "mean")
    start_layer = args.start_layer if args.start_layer is not None else (record.start_layer if record else 0)
    levels = _validate_levels(graph, model, saes, task, how, start_layer, args) if record else None
    if record is None and not args.json:
        print(
            f"circuits: note: {args.circuit} has no site and feature levels (found without "
            "--target-faithfulness): validating its nodes only",
            file=sys.stderr,
        )
    result = faithfulness_curve(
        model,
        saes,
        task,
        ranked_nodes(graph),
        how,
        seed=args.seed or 0,
        start_layer=start_layer,
        progress=not args.quiet,
    )
    png = plot_faithfulness(
        result,
        folder / "faithfulness.png",
        title=f"{record_of(graph).task}: {result.ablation} ablation, {task.n_examples} held-out pairs",
    )
    if args.prune:
        small, result.pruned = prune_by_ablation(graph, model, saes, task, args.target, how, start_layer=start_layer)
        result.pruned.path = str(save_graph(small, folder / "circuit.pruned.json"))
    if args.json:
        out = result.to_dict()
        if levels is not None:
            out["site_level"], out["feature_level"] = (asdict(level) for level in levels)
        print(json.dumps(out, indent=2))
        return
    if levels is not None:
        rows = [
            [name, size, f"{lv.faithfulness:.3f}", f"{lv.completeness:.3f}", f"{lv.random_faithfulness:.3f}"]
            for name, size, lv in (
                ("sites", str(levels[0].n_nodes), levels[0]),
                ("features", f"{levels[1].n_nodes} + {levels[1].n_error_nodes} err", levels[1]),
            )
        ]
        print(f"hierarchical circuit, {how} ablation, {task.n_examples} pairs:")
        print_table(["level", "size", "faithfulness", "completeness", "random same size"], rows)
        print()
    print(
        f"{result.ablation} ablation, {task.n_examples} pairs: faithfulness {result.faithfulness:.3f}, "
        f"completeness {result.completeness:.3f}, CPR {result.cpr:.3f}, CMD {result.cmd:.3f} "
        f"({result.n_nodes} feature nodes, {result.n_error_nodes} error nodes)"
    )
    print("\n| feature nodes | error nodes | faithfulness | random circuit |\n|---|---|---|---|")
    for c in result.curve:
        print(f"| {c.n_nodes} | {c.n_error_nodes} | {c.faithfulness:.3f} | {c.random_faithfulness:.3f} |")
    if result.pruned is not None:
        p = result.pruned
        print(
            f"\nsmallest prefix with faithfulness >= {args.target}: {p.n_nodes} feature + {p.n_error_nodes} "
            f"error nodes, F {p.faithfulness:.3f}"
            + ("" if p.reached_target else " (target not reached)")
            + f" -> {p.path}"
        )
    print(f"\n-> {png}")


def _validate_levels(graph, model, saes, task, how: str, start_layer: int, args: argparse.Namespace):
    """A hierarchical circuit's (site level, feature level) measured on ``task``."""
    from circuits.circuit.ablation import ranked_nodes
    from circuits.circuit.hierarchy import validate_hierarchy
    from circuits.circuit.record import record_of

    h = record_of(graph).hierarchy
    return validate_hierarchy(
        model, saes, task, h.skeleton, ranked_nodes(graph), how, start_layer, h.target, seed=args.seed or 0
    )


def _edit(args: argparse.Namespace) -> None:
    from circuits.circuit.edit import Edit, edit_from_circuit, edit_report, mean_activations
    from circuits.circuit.record import record_of
    from circuits.toy.model import load_model
    from sae.train import load_saes
    from tasks.corpus import corpus_tokens

    if args.edit:
        edit = Edit.load(args.edit)
        model = load_model(args.model or "toy", progress=not args.quiet)
        saes = load_saes(args.saes or "toy", model, progress=not args.quiet)
        task_name = args.task or "ioi"
    else:
        if not args.circuit:
            raise CircuitsError("circuits edit needs --circuit (with --top N) or --edit FILE")
        graph, model, saes, _ = _circuit_setup(args)
        means = None
        if args.action == "mean":
            tokens = corpus_tokens(model.tokenizer, "edit-means", 256, min(64, model.cfg.n_ctx))
            means = mean_activations(model, saes, tokens, list(saes))
        edit = edit_from_circuit(graph, args.top, args.action, means, everywhere=args.everywhere)
        record = record_of(graph)
        task_name = args.task or (record.sources.task if record.sources else record.task)
    if args.save_edit:
        edit.save(args.save_edit)
    report = edit_report(model, saes, edit.check(saes), task_name, n=args.n or param_default(edit_report, "n"))
    if args.json:
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
    print("\ngreedy completions:\n")
    print_table(["prompt", "before", "after"], [[c.prompt, c.before, c.after] for c in report.completions])


def _demo(args: argparse.Namespace) -> None:
    from circuits.circuit.graph import error_nodes, feature_nodes
    from circuits.circuit.record import record_of
    from circuits.demo import run_demo

    start = time.perf_counter()
    folder = _writable(Path(args.out))
    result = run_demo(folder, n=args.n, progress=not args.quiet)
    graph = result.graph
    g = record_of(graph)
    print(f"IOI on the embedded model: clean logit diff {g.clean_metric:.2f}, corrupt {g.corrupt_metric:.2f}")
    print(
        f"circuit: {len(feature_nodes(graph))} feature + {len(error_nodes(graph))} error nodes, "
        f"{graph.number_of_edges()} edges ({g.method}, {g.n_examples} pairs)"
    )
    h = g.hierarchy
    sl, fl = h.site_level, h.feature_level
    print(
        f"held-out prompts, {h.ablation} ablation, target F >= {h.target}:\n"
        f"  sites:    {sl.n_nodes} sites, faithfulness {sl.faithfulness:.3f}, completeness "
        f"{sl.completeness:.3f}, random same-size {sl.random_faithfulness:.3f}\n"
        f"  features: {fl.n_nodes} latents + {fl.n_error_nodes} error terms ({fl.ranking} ranking), "
        f"faithfulness {fl.faithfulness:.3f}, completeness {fl.completeness:.3f}, random same-size "
        f"{fl.random_faithfulness:.3f}" + ("" if h.reached_target else "  (target not reached)") + "\n"
    )
    print_table(
        ["task", "moved by the edit (top 100 features off)"],
        [[name, f"{r.relative_change:+.0%}"] for name, r in result.edit.tasks.items()],
    )
    if result.missing_dot:
        print(f"circuits: warning: {result.missing_dot}", file=sys.stderr)
    print()
    print_table(["step", "seconds"], [[k, f"{v:.1f}"] for k, v in result.times.items()])
    print("\nfiles:\n  " + "\n  ".join(result.files))
    print(f"open {result.report} in a browser ({time.perf_counter() - start:.0f} s in all)")


def _export(args: argparse.Namespace) -> None:
    from circuits.circuit.graph import save_graph
    from circuits.export.annotations import load_annotations
    from circuits.export.circuit_tracer import write_circuit_tracer
    from circuits.export.graphml import write_graphml
    from circuits.export.options import PictureOptions
    from circuits.export.pictures import FORMATS, draw_graph

    graph = _load_circuit(args.circuit)
    stem = Path(args.out) if args.out else Path(args.circuit).with_suffix("")
    _writable(stem.parent)
    opts = PictureOptions(max_nodes=args.max_nodes)
    annotations = load_annotations(args.annotations, graph, args.circuit) if args.annotations else None
    cards = {}
    if args.format in (*FORMATS, "circuit-tracer") and not args.no_descriptions:
        cards = _cards_for(graph, args, opts)
    if args.format in FORMATS:
        files, missing = draw_graph(graph, stem, (args.format,), opts, cards=cards, annotations=annotations)
        if missing:
            print(f"circuits: warning: {missing}", file=sys.stderr)
    elif args.format == "graphml":
        files = [write_graphml(graph, stem.with_suffix(".graphml"))]
    elif args.format == "json":
        files = [save_graph(graph, stem.with_suffix(".json"))]
    elif args.format == "circuit-tracer":  # --out is a folder: {slug}.json + graph-metadata.json
        folder = Path(args.out) if args.out else Path(args.circuit).parent / "circuit-tracer"
        files = write_circuit_tracer(graph, _writable(folder), cards, args.slug)
    else:
        raise CircuitsError(f"unknown format {args.format!r}: use png, svg, pdf, graphml, json, circuit-tracer")
    if len(graph) <= 1:
        print("the circuit is empty (drawn as such)")
    print("\n".join(str(f) for f in files))


def _cards_for(graph, args: argparse.Namespace, opts) -> dict:
    """Feature cards for the drawn latents, from the circuit's model and SAE set."""
    from circuits.circuit.record import record_of
    from circuits.export.cards import feature_cards
    from circuits.export.pictures import card_keys
    from circuits.toy.model import load_model
    from sae.train import load_saes

    src = record_of(graph).sources
    model = load_model(src.model if src else "toy", progress=not args.quiet)
    saes = load_saes(src.saes if src else "toy", model, progress=not args.quiet)
    return feature_cards(model, saes, card_keys(graph, opts))


class _Parser(argparse.ArgumentParser):
    """argparse with its own errors (unknown flag, missing argument, bad number) as one line
    ``circuits: error: ...`` and exit code 2, like every other error; also for sub-commands."""

    def error(self, message: str) -> None:  # type: ignore[override]
        command = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""  # "circuits edit" -> "edit: "
        self.exit(2, f"circuits: error: {command}{' '.join(message.split())}\n")


def _default(text: str, value) -> str:
    """Help text ending in the default the library uses."""
    if isinstance(value, (tuple, list)):
        value = ",".join(str(v) for v in value)
    return f"{text} (default {value})"


def build_parser() -> argparse.ArgumentParser:
    from circuits.circuit.ablation import ABLATIONS, prune_by_ablation
    from circuits.circuit.check import check_attribution
    from circuits.circuit.discover import DiscoverConfig
    from circuits.circuit.edit import CIRCUIT_ACTIONS, FeatureEdit
    from circuits.circuit.evaluate import evaluate_model
    from circuits.demo import run_demo
    from circuits.export.options import PictureOptions
    from circuits.toy.model import ToyModelConfig
    from sae.evaluate import evaluate_saes
    from sae.train import SAETrainConfig

    parser = _Parser(prog="circuits", description="Find feature circuits in transformer language models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser(
        "train-model",
        help="train the embedded toy-language model",
        description="Train the embedded default model on the toy language and save "
        "it (resumes an interrupted run from its last checkpoint).",
    )
    p.add_argument("--out", help="model folder (default: the cache's toy/ folder)")
    steps, seed = field_default(ToyModelConfig, "steps"), field_default(ToyModelConfig, "seed")
    p.add_argument("--steps", type=int, default=steps, help=_default("training steps", steps))
    p.add_argument("--seed", type=int, default=seed, help=_default("random seed", seed))
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train_model)

    p = sub.add_parser(
        "eval-model",
        help="accuracy and metrics of a model on the built-in tasks",
        description="Evaluate a model on held-out prompts of the built-in tasks: "
        "accuracy and mean clean / corrupt metric per task.",
    )
    p.add_argument("--model", default="toy", help="'toy', a model folder, or a TransformerLens name")
    p.add_argument("--tasks", nargs="+", help="tasks to run (default: all built-in)")
    n, seed = param_default(evaluate_model, "n"), param_default(evaluate_model, "seed")
    p.add_argument("--n", type=int, default=n, help=_default("prompt pairs per task", n))
    p.add_argument("--seed", type=int, default=seed, help=_default("prompt seed", seed))
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_eval_model)

    p = sub.add_parser(
        "train-saes",
        help="train an SAE per hook point of a model",
        description="Train one sae-lens SAE per hook (resid_post, mlp_out, attn_out "
        "of every layer by default) on the model's activations over the "
        "toy language, one model pass feeding every SAE; resumable.",
    )
    p.add_argument("--model", default="toy", help="'toy' or a model folder (default toy)")

    def sae_default(name: str):
        return field_default(SAETrainConfig, name)

    # choices are checked by SAETrainConfig (one source of truth, its one-line errors)
    p.add_argument(
        "--arch",
        default=sae_default("arch"),
        help=_default(f"one of {', '.join(field_choices(SAETrainConfig, 'arch'))}", sae_default("arch")),
    )
    p.add_argument(
        "--hooks",
        default=",".join(sae_default("kinds")),
        help=_default(
            f"hook kinds, comma-separated, of {', '.join(field_choices(SAETrainConfig, 'kinds'))}", sae_default("kinds")
        ),
    )
    p.add_argument("--layers", help="layers, comma-separated (default: all)")
    p.add_argument(
        "--width", type=int, default=sae_default("width"), help=_default("latents per SAE", sae_default("width"))
    )
    p.add_argument(
        "--k",
        type=int,
        default=sae_default("k"),
        help=_default("active latents per token for topk/batchtopk", sae_default("k")),
    )
    p.add_argument(
        "--tokens",
        type=int,
        default=sae_default("n_tokens"),
        help=_default("training tokens per SAE", sae_default("n_tokens")),
    )
    p.add_argument("--seed", type=int, default=sae_default("seed"), help=_default("random seed", sae_default("seed")))
    p.add_argument("--out", help="output folder (default: the cache's saes-toy/)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_train_saes)

    p = sub.add_parser(
        "eval-saes",
        help="quality of an SAE set: L0, FVU, CE recovered, dead/dense",
        description="Evaluate an SAE set on held-out toy-language text: per hook L0, "
        "FVU, CE loss recovered, dead and dense fractions; and CE loss "
        "recovered with every SAE spliced at once.",
    )
    p.add_argument("--model", default="toy", help="'toy' or a model folder (default toy)")
    p.add_argument(
        "--saes",
        default="toy",
        help="'toy' (the default set, trained on first use), a set folder, or a sae-lens release "
        "(RELEASE for all its SAEs, RELEASE:ID,ID for some; the hub or its local cache)",
    )
    n_seqs = param_default(evaluate_saes, "n_seqs")
    p.add_argument("--n-seqs", type=int, default=n_seqs, help=_default("evaluation sequences of 64 tokens", n_seqs))
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_eval_saes)

    p = sub.add_parser(
        "discover",
        help="find the feature circuit of a task",
        description="Score every SAE latent and error node (AtP, IG or exact "
        "patching), keep those above the node threshold, compute the "
        "direct-effect edges between them, prune to what reaches the "
        "metric, write DIR/circuit.json and print a summary.",
    )
    _task_args(p)

    def disc(name: str):
        return field_default(DiscoverConfig, name)

    p.add_argument(
        "--method",
        default=disc("method"),
        help=_default(
            f"one of {', '.join(field_choices(DiscoverConfig, 'method'))} (exact: one forward pass per node)",
            disc("method"),
        ),
    )
    p.add_argument("--steps", type=int, default=disc("steps"), help=_default("IG steps", disc("steps")))
    p.add_argument(
        "--node-threshold",
        type=float,
        default=disc("node_threshold"),
        help=_default("keep nodes with |effect| >= this fraction of |total effect|", disc("node_threshold")),
    )
    p.add_argument(
        "--edge-threshold",
        type=float,
        default=disc("edge_threshold"),
        help=_default("keep edges with |weight| >= this fraction of |total effect|", disc("edge_threshold")),
    )
    p.add_argument("--top-n", type=int, help="keep at most this many nodes (largest |effect|)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=disc("batch_size"),
        help=_default("prompt pairs per batch", disc("batch_size")),
    )
    p.add_argument("--no-edges", action="store_true", help="nodes only (no edges, no path pruning)")
    p.add_argument(
        "--target-faithfulness",
        type=float,
        help="find a hierarchical circuit (sites, then features inside them) reaching this "
        "faithfulness on held-out prompts (the next seed's, or the second half of a .jsonl file)",
    )
    p.add_argument(
        "--ablation",
        help=_default(f"ablation convention for --target-faithfulness: {', '.join(ABLATIONS)}", disc("ablation")),
    )
    p.add_argument(
        "--start-layer",
        type=int,
        help=_default("layers below this are never ablated (given for free)", disc("start_layer")),
    )
    p.add_argument(
        "--mask-steps",
        type=int,
        help=_default("Adam steps of the feature mask optimiser (0: attribution ranking only)", disc("mask_steps")),
    )
    p.add_argument(
        "--mask-sparsity",
        type=float,
        help=_default("sparsity weight of the mask optimiser", disc("mask_sparsity")),
    )
    p.add_argument(
        "--nproc", type=int, default=1, help="processes sharing the prompt batches (torch.distributed, gloo; default 1)"
    )
    p.add_argument("--out", help="output folder (default outputs/<task>)")
    p.set_defaults(func=_discover)

    p = sub.add_parser(
        "validate",
        help="faithfulness and completeness of a circuit by ablation",
        description="Ablate everything outside the circuit (and, for completeness, "
        "the circuit itself) on held-out prompts; print faithfulness, "
        "completeness, the curve over circuit sizes with a random "
        "baseline, CPR and CMD; write faithfulness.png beside the circuit.",
    )
    _circuit_args(p)
    p.add_argument(
        "--ablation",
        help=f"one of {', '.join(ABLATIONS)} (default: the circuit's, else mean)",
    )
    p.add_argument(
        "--start-layer", type=int, help="layers below this are never ablated (default: the circuit's, else 0)"
    )
    p.add_argument(
        "--prune",
        action="store_true",
        help="also write circuit.pruned.json: the smallest top-|effect| prefix reaching --target",
    )
    target = param_default(prune_by_ablation, "target")
    p.add_argument("--target", type=float, default=target, help=_default("faithfulness target for --prune", target))
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_validate)

    p = sub.add_parser(
        "edit",
        help="switch circuit features off and measure the effect on every task",
        description="Ablate (or clamp / scale) SAE features: the top features of a "
        "circuit (--top N) or an edit file; report each built-in task's "
        "metric and accuracy before and after, and a few greedy completions.",
    )
    _circuit_args(p, circuit_required=False)
    p.add_argument("--top", type=int, default=10, help="features from the circuit (default 10)")
    action = field_default(FeatureEdit, "action")
    p.add_argument(
        "--action",
        default=action,
        choices=CIRCUIT_ACTIONS,
        help=_default(f"for --top: {' or '.join(CIRCUIT_ACTIONS)}", action),
    )
    p.add_argument(
        "--everywhere",
        action="store_true",
        help="switch the features off at every position, not only where the circuit uses them",
    )
    p.add_argument("--edit", help="an edit JSON file instead of --circuit/--top")
    p.add_argument("--save-edit", help="write the edit as JSON here")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_edit)

    p = sub.add_parser(
        "check-attribution",
        help="AtP and IG against exact patching, per submodule",
        description="Compare AtP and IG node effects with exact single-latent "
        "patching (Pearson r on the top latents by |exact effect|) and "
        "the sum of IG effects with patching each whole submodule.",
    )
    _task_args(p, default_n=32)
    top, steps = param_default(check_attribution, "n_top"), param_default(check_attribution, "steps")
    p.add_argument("--top", type=int, default=top, help=_default("latents per submodule in the correlation", top))
    p.add_argument("--steps", type=int, default=steps, help=_default("IG steps", steps))
    p.add_argument("--edges", type=int, default=0, help="also check the N strongest edges (default 0)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_check_attribution)

    p = sub.add_parser(
        "export",
        help="write a circuit as an image or data file",
        description="Draw a circuit (png, svg, pdf via graphviz; the strongest "
        "--max-nodes nodes) or write it as GraphML, node-link JSON or "
        "circuit-tracer's frontend JSON.",
    )
    p.add_argument("--circuit", required=True, help="a circuit.json written by discover")
    p.add_argument("--format", default="png", help="png (default), svg, pdf, graphml, json or circuit-tracer")
    p.add_argument("--out", help="output path without extension (default: beside the circuit)")
    max_nodes = field_default(PictureOptions, "max_nodes")
    p.add_argument(
        "--max-nodes",
        type=int,
        default=max_nodes,
        help=_default("latents drawn at most, spread over the sites, strongest first", max_nodes),
    )
    p.add_argument("--annotations", help='JSON file {"node id": "label"} replacing automatic descriptions')
    p.add_argument("--no-descriptions", action="store_true", help="no feature descriptions (no model needed)")
    p.add_argument(
        "--slug",
        help="circuit-tracer: the graph's name (default: the task's); --out is then a folder "
        "(default circuit-tracer/ beside the circuit) that gets SLUG.json and graph-metadata.json",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_export)

    p = sub.add_parser(
        "demo",
        help="run the main job on the embedded default model",
        description="Load (or train on first use) the embedded model and SAEs, "
        "discover the IOI circuit, validate it, edit the model with it, "
        "and write every output (circuit.json, graph.png/svg, "
        "faithfulness.png, report.html, ...) to --out.",
    )
    p.add_argument("--out", default="outputs/ioi", help="output folder (default outputs/ioi)")
    n = param_default(run_demo, "n")
    p.add_argument("--n", type=int, default=n, help=_default("prompt pairs", n))
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_demo)
    return parser


def _task_args(p: argparse.ArgumentParser, default_n: int = 128) -> None:
    p.add_argument("--task", required=True, help="ioi, sva, greater_than, induction, or a .jsonl file")
    p.add_argument(
        "--n",
        "--pairs",
        dest="n",
        type=int,
        default=default_n,
        help=f"prompt pairs (default {default_n}; spell it --pairs under torchrun)",
    )
    p.add_argument("--seed", type=int, default=0, help="prompt seed (default 0)")
    p.add_argument("--metric", help="replace the task's metric: logit_diff, prob_diff, logprob or kl")
    p.add_argument("--model", default="toy", help="'toy', a model folder, or a TransformerLens name")
    p.add_argument("--saes", default="toy", help="'toy', an SAE set folder, or a sae-lens release (RELEASE[:ID,ID])")
    p.add_argument("--hooks", help="only these SAE kinds, comma-separated (resid_pre, z, attn, resid_mid, mlp, resid)")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda[:i]")
    p.add_argument("--dtype", default="fp32", help="fp32 (default), bf16 or fp16")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _circuit_args(p: argparse.ArgumentParser, circuit_required: bool = True) -> None:
    p.add_argument("--circuit", required=circuit_required, help="a circuit.json written by discover")
    p.add_argument("--task", help="task (default: the circuit's)")
    p.add_argument("--n", type=int, help="prompt pairs (default: as many as discovery used)")
    p.add_argument("--seed", type=int, help="prompt seed (default: discovery's + 1, held-out prompts)")
    p.add_argument("--model", help="model (default: the circuit's)")
    p.add_argument("--saes", help="SAE set (default: the circuit's)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help (0) or an argparse error, already printed as one line (2)
        return int(done.code or 0)
    try:
        args.func(args)
    except CircuitsError as err:
        print(f"circuits: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("circuits: interrupted (training resumes from its last checkpoint)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
