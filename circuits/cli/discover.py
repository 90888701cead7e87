"""``discover``: find a task's circuit (thresholds, or a hierarchical circuit held to a target
faithfulness on held-out prompts), in one process, ``--nproc`` local ones, or under torchrun."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from circuits.circuit.config import DETECTS, HELD_OUT_PAIRS, HIERARCHY_PAIRS, THRESHOLD_PAIRS, DiscoverConfig
from circuits.cli.args import add_task_args, placed, task_spec, writable
from circuits.core.config import add_flag, field_default
from circuits.core.errors import CircuitsError
from circuits.core.tables import print_table

# the settings only a hierarchical circuit uses, by their flags
HIERARCHY_FLAGS = {
    "ablation": "--ablation",
    "start_layer": "--start-layer",
    "mask_steps": "--mask-steps",
    "mask_sparsity": "--mask-sparsity",
    "site_mask_steps": "--site-mask-steps",
    "mask_batch": "--mask-batch",
}


def register(sub) -> None:
    p = sub.add_parser(
        "discover",
        help="find the feature circuit of a task",
        description="Score every SAE latent and error node (AtP, IG or exact "
        "patching), keep those above the node threshold, compute the "
        "direct-effect edges between them, prune to what reaches the "
        "metric, write DIR/circuit.json and print a summary.",
    )
    add_task_args(
        p,
        default_n=None,
        n_help=f"prompt pairs (default {THRESHOLD_PAIRS}; with --target-faithfulness the discovery pairs, default "
        f"{HIERARCHY_PAIRS}: circuits of per-name and per-year latents need discovery prompts that cover the "
        "names and years held-out prompts use; spell it --pairs under torchrun)",
    )
    add_flag(p, "--method", DiscoverConfig, "one of {choices} (exact: one forward pass per node)")
    add_flag(p, "--steps", DiscoverConfig, "IG steps")
    add_flag(p, "--node-threshold", DiscoverConfig, "keep nodes with |effect| >= this fraction of |total effect|")
    add_flag(p, "--edge-threshold", DiscoverConfig, "keep edges with |weight| >= this fraction of |total effect|")
    p.add_argument("--top-n", type=int, help="keep at most this many nodes (largest |effect|)")
    add_flag(p, "--batch-size", DiscoverConfig, "prompt pairs per batch")
    p.add_argument("--no-edges", action="store_true", help="nodes only (no edges, no path pruning)")
    p.add_argument(
        "--no-families",
        action="store_true",
        help="with --target-faithfulness: do not group the features into validated families",
    )
    p.add_argument(
        "--target-faithfulness",
        type=float,
        help="find a hierarchical circuit (sites, then features inside them) reaching this "
        "faithfulness on held-out prompts (the next seed's, or the second half of a .jsonl file)",
    )
    hierarchy = {
        "--ablation": "ablation convention for --target-faithfulness: {choices}",
        "--start-layer": "layers below this are never ablated (given for free)",
        "--mask-steps": "Adam steps of the feature mask optimiser (0: attribution ranking only)",
        "--mask-sparsity": "sparsity weight of the mask optimiser",
        "--site-mask-steps": "Adam steps of the same optimiser over whole sites (0: sites by attribution only)",
        "--mask-batch": "prompt pairs per step of the feature mask (0: all discovery pairs, full batch)",
    }
    for flag, text in hierarchy.items():
        add_flag(p, flag, DiscoverConfig, text, given=True)
    p.add_argument(
        "--nproc", type=int, default=1, help="processes sharing the prompt batches (torch.distributed, gloo; default 1)"
    )
    p.add_argument(
        "--held-out",
        type=int,
        help=f"with --target-faithfulness: held-out prompt pairs of a built-in task, the next seed's "
        f"(default {HELD_OUT_PAIRS})",
    )
    p.add_argument("--out", help="output folder (default outputs/<task>)")
    p.set_defaults(func=run, n=None)


def run(args: argparse.Namespace) -> None:
    from circuits.circuit.graph import record_sources, save_graph, summary
    from circuits.circuit.record import record_of
    from circuits.core.parallel import check_nproc, rank_and_world, run_local
    from circuits.loaders import load_model, load_saes

    check_nproc(args.nproc)
    resolve_pairs(args)
    out = Path(args.out) if args.out else Path("outputs") / Path(args.task).stem
    path = writable(out) / "circuit.json"  # before the work, not after
    start = time.perf_counter()
    if args.nproc != 1:
        # train / fill the caches once here, not in every worker
        load_saes(args.saes, load_model(args.model, progress=not args.quiet), progress=not args.quiet)
        graph = run_local(args.nproc, discover_job, args)
    else:
        graph = _in_this_process(args)
        if graph is None:  # another process of a torchrun group
            return
    # what validate / edit need to rebuild the model, SAE set and prompts
    record_sources(graph, args.task, args.n, args.seed, args.model, args.saes, args.metric, args.hooks)
    save_graph(graph, path)
    print(summary(graph))
    if record_of(graph).hierarchy is not None:
        print_hierarchy(record_of(graph), path)
    procs = max(args.nproc, rank_and_world()[1])
    print(
        f"\n{record_of(graph).method} discovery in {time.perf_counter() - start:.1f} s "
        f"({procs} process{'es' if procs > 1 else ''}) -> {path}"
    )


def resolve_pairs(args: argparse.Namespace) -> None:
    """``--n`` and ``--held-out`` where not given: a threshold circuit's prompts, or a
    hierarchical circuit's discovery and held-out pairs; ``--held-out`` alone is an error."""
    hierarchical = args.target_faithfulness is not None
    if args.held_out is not None and not hierarchical:
        raise CircuitsError("--held-out only applies with --target-faithfulness (not given)")
    if args.held_out is not None and args.held_out < 1:
        raise CircuitsError(f"--held-out must be at least 1 prompt pair, got {args.held_out}")
    if args.n is None:
        args.n = HIERARCHY_PAIRS if hierarchical else THRESHOLD_PAIRS
    if hierarchical and args.held_out is None:
        args.held_out = HELD_OUT_PAIRS


def _in_this_process(args: argparse.Namespace):
    """`discover_job` here, its warnings as one line each; None in a torchrun group's other
    processes (the main one writes)."""
    import warnings

    from circuits.core.parallel import is_main, join_from_environment

    joined = join_from_environment()  # under torchrun: one process of the group
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        graph = discover_job(args)
    if joined and not is_main():
        return None
    for w in caught:
        if issubclass(w.category, UserWarning):
            print(f"circuits: warning: {w.message}", file=sys.stderr)
    return graph


def discover_job(args: argparse.Namespace):
    """Load what the arguments name and find the circuit (also run in each --nproc worker); a
    hierarchical circuit records which prompts it was validated on."""
    from circuits.circuit.discover import discover_fitting
    from circuits.circuit.graph import record_held_out
    from circuits.circuit.record import record_of

    model, saes = placed(args)
    spec = task_spec(args)
    task = spec.build(model.tokenizer)
    cfg = DiscoverConfig(
        method=args.method,
        steps=args.steps,
        node_threshold=args.node_threshold,
        edge_threshold=args.edge_threshold,
        top_n=args.top_n,
        batch_size=args.batch_size,
        edges=not args.no_edges,
        families=not args.no_families,
        target_faithfulness=args.target_faithfulness,
        **hierarchy_settings(args),
    )
    if cfg.target_faithfulness is None:
        return discover_fitting(model, saes, task, cfg, progress=not args.quiet)
    task, held_out, record = spec.split(model.tokenizer, task)
    graph = discover_fitting(model, saes, task, cfg, progress=not args.quiet, held_out=held_out)
    if record_of(graph).hierarchy is not None:
        record_held_out(graph, record)
    return graph


def hierarchy_settings(args: argparse.Namespace) -> dict:
    """The settings that only a hierarchical circuit uses: given without
    --target-faithfulness they would do nothing, which is an error."""
    given = {k: getattr(args, k) for k in HIERARCHY_FLAGS if getattr(args, k) is not None}
    if given and args.target_faithfulness is None:
        flags = ", ".join(HIERARCHY_FLAGS[k] for k in given)
        raise CircuitsError(f"{flags} only apply with --target-faithfulness (not given)")
    return {k: given.get(k, field_default(DiscoverConfig, k)) for k in HIERARCHY_FLAGS}


def _held(h) -> str:
    """Whose latents the families hold (``HierarchyRecord.family_scope``)."""
    if h.family_scope == "features":
        return "feature level's latents (those of the sites did worse)"
    return "sites' latents"


def print_families(h, top: int = 12) -> None:
    """The largest families with their validation, and the interchange of each variable's
    families together."""
    share = "" if h.feature_named_share is None else f" ({h.feature_named_share:.0%} of the feature level's)"
    fl = h.family_level
    cut = (
        f"the first {fl.n_nodes} reach the target"
        if fl.reached_target
        else f"the best cut, {fl.n_nodes} families, reaches F {fl.faithfulness:.3f}, below the target"
    )
    print(
        f"\n{len(h.families)} families of the {_held(h)}, {h.named_share():.0%} of their |effect| in families "
        f"named by a task variable{share}; {cut}:"
    )
    if h.feature_detector_share is not None:
        print(
            f"one by one, {h.feature_detector_share:.0%} of the feature level's |effect| (error terms included) is in "
            f"latents that each detect one value of a task variable (F1 >= {DETECTS:g} on the held-out prompts)"
        )
    rows = [
        [
            f.id,
            f.name,
            str(len(f.members)),
            f"{f.effect:+.3f}",
            "-" if f.ablation_ratio is None else f"{f.ablation_ratio:.2f}",
            "-" if f.interchange is None else f"{f.interchange:.2f} ({f.interchange_random:.2f})",
        ]
        for f in h.families[:top]
    ]
    print_table(["family", "name", "latents", "effect", "ablation ratio", "interchange (control)"], rows)
    if h.interchange:
        rows = [
            [
                r.variable,
                str(r.n_families),
                f"{r.rate:.2f} ({r.random_rate:.2f})",
                str(r.n_prompts),
                "-" if r.steer_rate is None else f"{r.steer_rate:.2f} ({r.steer_random_rate:.2f})",
            ]
            for r in h.interchange
        ]
        print_table(["variable", "families", "interchange (control)", "prompts", "steering (control)"], rows)


LEVEL_NAMES = {
    "sites": "sites (attribution prefix)",
    "sites_optimised": "sites (optimised)",
    "attribution": "features (attribution prefix)",
    "optimised": "features (optimised)",
}


def print_hierarchy(record, path: Path) -> None:
    """Both levels of a hierarchical circuit (a CircuitRecord's ``hierarchy``) as a table,
    its step times, and one line when the target was missed (the circuit is kept)."""
    from circuits.circuit.record import SITE_LEVELS

    h = record.hierarchy
    start = f", layers < {h.start_layer} kept" if h.start_layer else ""
    print(f"\nhierarchical circuit, {h.ablation} ablation{start}, held-out prompts, target F >= {h.target}:")
    rows = [
        [
            LEVEL_NAMES[key],
            str(level.n_nodes) if key in SITE_LEVELS else f"{level.n_nodes} + {level.n_error_nodes} err",
            f"{level.faithfulness:.3f}",
            f"{level.completeness:.3f}",
            f"{level.random_faithfulness:.3f}",
        ]
        for key, level in h.levels()
    ]
    if h.family_level is not None:
        fl = h.family_level
        rows.append(
            [
                "families",
                f"{fl.n_nodes} + {fl.n_error_nodes} err",
                f"{fl.faithfulness:.3f}",
                f"{fl.completeness:.3f}",
                f"{fl.random_faithfulness:.3f}",
            ]
        )
    print_table(["level", "size", "faithfulness", "completeness", "random same size"], rows)
    print(
        f"circuit: {len(h.sites)} sites from the {h.site_level.ranking} ranking, "
        f"features from the {h.feature_level.ranking} ranking"
    )
    if h.other_feature_level is not None:
        other = h.site_optimised if h.site_level.ranking == "attribution" else h.site_attribution
        o = h.other_feature_level
        print(
            f"(the other site ranking's {other.n_nodes} sites needed {o.n_nodes} + {o.n_error_nodes} err "
            f"for F {o.faithfulness:.3f}; kept: the fewer sites unless their feature level is over 10 % larger)"
        )
    if h.families:
        print_families(h)
    print_table(["step", "seconds"], [[k, f"{v:.1f}"] for k, v in record.times.items()])
    if not h.reached_target:
        sl, fl = h.site_level, h.feature_level
        print(
            f"circuits: warning: target faithfulness {h.target} not reached: best found "
            f"F {sl.faithfulness:.3f} at {sl.n_nodes} sites, F {fl.faithfulness:.3f} at "
            f"{fl.n_nodes} features + {fl.n_error_nodes} error nodes (circuit kept: {path})",
            file=sys.stderr,
        )
