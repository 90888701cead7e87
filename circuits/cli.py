"""The `circuits` command line: one sub-command per job, errors as one line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from circuits.errors import CircuitsError


def _train_model(args: argparse.Namespace) -> None:
    from circuits.model import TOY_NAME, ToyModelConfig, default_cache_dir, train_model

    cfg = ToyModelConfig(seed=args.seed, **({"steps": args.steps} if args.steps else {}))
    folder = Path(args.out) if args.out else default_cache_dir() / TOY_NAME
    start = time.perf_counter()
    train_model(cfg, folder, progress=not args.quiet)
    print(f"trained {cfg.n_layers}-layer model in {time.perf_counter() - start:.0f} s -> {folder}")


def _eval_model(args: argparse.Namespace) -> None:
    from circuits.behaviour import evaluate_model, format_table
    from circuits.model import load_model

    model = load_model(args.model, device=args.device, progress=not args.quiet)
    result = evaluate_model(model, tasks=args.tasks, n=args.n, seed=args.seed)
    print(json.dumps(result, indent=2) if args.json else format_table(result))


def _train_saes(args: argparse.Namespace) -> None:
    from circuits.model import TOY_NAME, default_cache_dir, load_model
    from sae.train import SAETrainConfig, train_sae_set

    overrides = {"arch": args.arch, "kinds": tuple(k.strip() for k in args.hooks.split(",") if k.strip())}
    for name in ("width", "k", "seed"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.tokens is not None:
        overrides["n_tokens"] = args.tokens
    if args.layers is not None:
        overrides["layers"] = tuple(_int_list(args.layers, "--layers"))
    model = load_model(args.model, progress=not args.quiet)
    overrides["seq_len"] = min(SAETrainConfig.seq_len, model.cfg.n_ctx)
    cfg = SAETrainConfig(**overrides).validated()
    default = default_cache_dir() / ("saes-toy" if args.model == TOY_NAME else f"saes-{Path(args.model).name}")
    folder = Path(args.out) if args.out else default
    start = time.perf_counter()
    saes = train_sae_set(model, cfg, folder, progress=not args.quiet)
    print(f"trained {len(saes)} {cfg.arch} SAEs (width {cfg.width}) in "
          f"{time.perf_counter() - start:.0f} s -> {folder}")


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CircuitsError(f"{flag} takes comma-separated integers, got {text!r}") from None


def _eval_saes(args: argparse.Namespace) -> None:
    from circuits.model import load_model
    from sae.evaluate import evaluate_saes, format_table
    from sae.train import load_saes

    model = load_model(args.model, progress=not args.quiet)
    saes = load_saes(args.saes, model, progress=not args.quiet)
    result = evaluate_saes(model, saes, n_seqs=args.n_seqs, progress=not args.quiet)
    print(json.dumps(result, indent=2) if args.json else format_table(result))


def _load_task(args: argparse.Namespace, model):
    from tasks.builtin import make_task

    return make_task(args.task, model.tokenizer, n=args.n, seed=args.seed, metric=args.metric)


def _restrict(saes, kinds: str | None):
    from sae.saeset import SAESet

    if not kinds:
        return saes
    wanted = {k.strip() for k in kinds.split(",") if k.strip()}
    bad = wanted - {"resid", "mlp", "attn"}
    if bad:
        raise CircuitsError(f"--hooks: unknown kind(s) {', '.join(sorted(bad))} (use resid, mlp, attn)")
    kept = {h: saes[h] for h in saes if h.split(".")[-1].split("_")[1] in wanted}
    if not kept:
        raise CircuitsError(f"--hooks {kinds}: the SAE set has no such hooks")
    return SAESet(kept)


def _discover(args: argparse.Namespace) -> None:
    import warnings

    from circuits.discover import DiscoverConfig, discover
    from circuits.graph import save_graph, summary
    from circuits.model import load_model
    from sae.train import load_saes

    model = load_model(args.model, progress=not args.quiet)
    saes = _restrict(load_saes(args.saes, model, progress=not args.quiet), args.hooks)
    task = _load_task(args, model)
    cfg = DiscoverConfig(method=args.method, steps=args.steps, node_threshold=args.node_threshold,
                         edge_threshold=args.edge_threshold, top_n=args.top_n,
                         batch_size=args.batch_size).validated()
    out = Path(args.out) if args.out else Path("outputs") / Path(args.task).stem
    path = _writable(out) / "circuit.json"  # before the work, not after
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        graph = discover(model, saes, task, cfg, progress=not args.quiet)
    for w in caught:
        if issubclass(w.category, UserWarning):
            print(f"circuits: warning: {w.message}", file=sys.stderr)
    save_graph(graph, path)
    print(summary(graph))
    print(f"\n{cfg.method} discovery in {time.perf_counter() - start:.1f} s -> {path}")


def _writable(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CircuitsError(f"output folder {folder} cannot be created ({err.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise CircuitsError(f"output folder {folder} is not writable")
    return folder


def _check_attribution(args: argparse.Namespace) -> None:
    from circuits.fidelity import check_attribution, format_table
    from circuits.model import load_model
    from sae.train import load_saes

    model = load_model(args.model, progress=not args.quiet)
    saes = _restrict(load_saes(args.saes, model, progress=not args.quiet), args.hooks)
    task = _load_task(args, model)
    result = check_attribution(model, saes, task, n_top=args.top, steps=args.steps,
                               n_edges=args.edges, progress=not args.quiet)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))


def _demo(args: argparse.Namespace) -> None:
    from circuits.behaviour import evaluate_model, format_table
    from circuits.model import load_model

    model = load_model("toy", progress=not args.quiet)
    print(f"embedded model: {model.cfg.n_layers} layers, d_model {model.cfg.d_model}, "
          f"vocabulary {model.cfg.d_vocab} words")
    print("behaviour on held-out prompts:")
    print(format_table(evaluate_model(model)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="circuits", description="Find feature circuits in transformer language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train-model", help="train the embedded toy-language model",
                       description="Train the embedded default model on the toy language and save "
                                   "it (resumes an interrupted run from its last checkpoint).")
    p.add_argument("--out", help="model folder (default: the cache's toy/ folder)")
    p.add_argument("--steps", type=int, help="training steps (default: the config's)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train_model)

    p = sub.add_parser("eval-model", help="accuracy and metrics of a model on the built-in tasks",
                       description="Evaluate a model on held-out prompts of the built-in tasks: "
                                   "accuracy and mean clean / corrupt metric per task.")
    p.add_argument("--model", default="toy", help="'toy', a model folder, or a TransformerLens name")
    p.add_argument("--tasks", nargs="+", help="tasks to run (default: all built-in)")
    p.add_argument("--n", type=int, default=256, help="prompt pairs per task (default 256)")
    p.add_argument("--seed", type=int, default=0, help="prompt seed (default 0)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_eval_model)

    p = sub.add_parser("train-saes", help="train an SAE per hook point of a model",
                       description="Train one sae-lens SAE per hook (resid_post, mlp_out, attn_out "
                                   "of every layer by default) on the model's activations over the "
                                   "toy language, one model pass feeding every SAE; resumable.")
    p.add_argument("--model", default="toy", help="'toy' or a model folder (default toy)")
    p.add_argument("--arch", default="topk", help="topk (default), batchtopk, jumprelu, standard or gated")
    p.add_argument("--hooks", default="resid,mlp,attn", help="hook kinds, comma-separated (default resid,mlp,attn)")
    p.add_argument("--layers", help="layers, comma-separated (default: all)")
    p.add_argument("--width", type=int, help="latents per SAE (default 1024 = 8 x d_model)")
    p.add_argument("--k", type=int, help="active latents per token for topk/batchtopk (default 32)")
    p.add_argument("--tokens", type=int, help="training tokens per SAE (default 1,150,000)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--out", help="output folder (default: the cache's saes-toy/)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_train_saes)

    p = sub.add_parser("eval-saes", help="quality of an SAE set: L0, FVU, CE recovered, dead/dense",
                       description="Evaluate an SAE set on held-out toy-language text: per hook L0, "
                                   "FVU, CE loss recovered, dead and dense fractions; and CE loss "
                                   "recovered with every SAE spliced at once.")
    p.add_argument("--model", default="toy", help="'toy' or a model folder (default toy)")
    p.add_argument("--saes", default="toy", help="'toy' (the default set, trained on first use) or a set folder")
    p.add_argument("--n-seqs", type=int, default=512, help="evaluation sequences of 64 tokens (default 512)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_eval_saes)

    p = sub.add_parser("discover", help="find the feature circuit of a task",
                       description="Score every SAE latent and error node (AtP, IG or exact "
                                   "patching), keep those above the node threshold, compute the "
                                   "direct-effect edges between them, prune to what reaches the "
                                   "metric, write DIR/circuit.json and print a summary.")
    _task_args(p)
    p.add_argument("--method", default="ig", help="ig (default), atp, or exact (one forward pass per node)")
    p.add_argument("--steps", type=int, default=10, help="IG steps (default 10)")
    p.add_argument("--node-threshold", type=float, default=0.01,
                   help="keep nodes with |effect| >= this fraction of |total effect| (default 0.01)")
    p.add_argument("--edge-threshold", type=float, default=0.002,
                   help="keep edges with |weight| >= this fraction of |total effect| (default 0.002)")
    p.add_argument("--top-n", type=int, help="keep at most this many nodes (largest |effect|)")
    p.add_argument("--batch-size", type=int, default=32, help="prompt pairs per batch (default 32)")
    p.add_argument("--out", help="output folder (default outputs/<task>)")
    p.set_defaults(func=_discover)

    p = sub.add_parser("check-attribution", help="AtP and IG against exact patching, per submodule",
                       description="Compare AtP and IG node effects with exact single-latent "
                                   "patching (Pearson r on the top latents by |exact effect|) and "
                                   "the sum of IG effects with patching each whole submodule.")
    _task_args(p, default_n=32)
    p.add_argument("--top", type=int, default=50, help="latents per submodule in the correlation (default 50)")
    p.add_argument("--steps", type=int, default=10, help="IG steps (default 10)")
    p.add_argument("--edges", type=int, default=0, help="also check the N strongest edges (default 0)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_check_attribution)

    p = sub.add_parser("demo", help="run the main job on the embedded default model",
                       description="Load (or train on first use) the embedded model and print its "
                                   "behaviour table.")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_demo)
    return parser


def _task_args(p: argparse.ArgumentParser, default_n: int = 128) -> None:
    p.add_argument("--task", required=True, help="ioi, sva, greater_than, induction, or a .jsonl file")
    p.add_argument("--n", type=int, default=default_n, help=f"prompt pairs (default {default_n})")
    p.add_argument("--seed", type=int, default=0, help="prompt seed (default 0)")
    p.add_argument("--metric", help="replace the task's metric: logit_diff, prob_diff, logprob or kl")
    p.add_argument("--model", default="toy", help="'toy', a model folder, or a TransformerLens name")
    p.add_argument("--saes", default="toy", help="'toy' or an SAE set folder")
    p.add_argument("--hooks", help="only these SAE kinds, comma-separated (resid, mlp, attn)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
