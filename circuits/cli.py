"""The `circuits` command line: one sub-command per job, errors as one line."""

from __future__ import annotations

import argparse
import json
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

    p = sub.add_parser("demo", help="run the main job on the embedded default model",
                       description="Load (or train on first use) the embedded model and print its "
                                   "behaviour table.")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_demo)
    return parser


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
