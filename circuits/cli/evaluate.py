"""``eval-model``, ``eval-saes`` and ``check-attribution``: how good the model, the SAE set and
the attribution are (a table, or JSON)."""

from __future__ import annotations

import argparse

from circuits.cli.args import add_task_args, placed, print_result, task_spec
from circuits.core.config import add_flag

EVALUATE_MODEL = "circuits.circuit.evaluate:evaluate_model"
EVALUATE_SAES = "sae.evaluate:evaluate_saes"
CHECK_ATTRIBUTION = "circuits.circuit.check:check_attribution"


def register_eval_model(sub) -> None:
    p = sub.add_parser(
        "eval-model",
        help="accuracy and metrics of a model on the built-in tasks",
        description="Evaluate a model on held-out prompts of the built-in tasks: "
        "accuracy and mean clean / corrupt metric per task.",
    )
    p.add_argument("--model", default="toy", help="'toy', a model folder, or a TransformerLens name")
    p.add_argument("--tasks", nargs="+", help="tasks to run (default: all built-in)")
    add_flag(p, "--n", EVALUATE_MODEL, "prompt pairs per task")
    add_flag(p, "--seed", EVALUATE_MODEL, "prompt seed")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_eval_model)


def run_eval_model(args: argparse.Namespace) -> None:
    from circuits.circuit.evaluate import evaluate_model, format_table
    from circuits.loaders import load_model

    model = load_model(args.model, device=args.device, progress=not args.quiet)
    print_result(evaluate_model(model, tasks=args.tasks, n=args.n, seed=args.seed), args.json, format_table)


def register_eval_saes(sub) -> None:
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
    add_flag(p, "--n-seqs", EVALUATE_SAES, "evaluation sequences of 64 tokens")
    p.add_argument(
        "--concepts",
        action="store_true",
        help="also match every latent to the toy language's ground-truth concepts (share matched at F1 >= 0.8)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_eval_saes)


def run_eval_saes(args: argparse.Namespace) -> None:
    from circuits.loaders import load_model, load_saes
    from sae.evaluate import evaluate_saes, format_table

    model = load_model(args.model, progress=not args.quiet)
    saes = load_saes(args.saes, model, progress=not args.quiet)
    result = evaluate_saes(model, saes, n_seqs=args.n_seqs, progress=not args.quiet)
    if not args.concepts:
        print_result(result, args.json, format_table)
        return
    import json

    from sae.interpret import format_matches, interpretability

    interp = interpretability(model, saes, progress=not args.quiet)
    if args.json:
        print(json.dumps(result.to_dict() | {"interpretability": interp.to_dict()}, indent=2))
    else:
        print(f"{format_table(result)}\n\n{format_matches(interp)}")


def register_check_attribution(sub) -> None:
    p = sub.add_parser(
        "check-attribution",
        help="AtP and IG against exact patching, per submodule",
        description="Compare AtP and IG node effects with exact single-latent "
        "patching (Pearson r on the top latents by |exact effect|) and "
        "the sum of IG effects with patching each whole submodule.",
    )
    add_task_args(p, default_n=32)
    add_flag(p, "--top", CHECK_ATTRIBUTION, "latents per submodule in the correlation", name="n_top")
    add_flag(p, "--steps", CHECK_ATTRIBUTION, "IG steps")
    p.add_argument("--edges", type=int, default=0, help="also check the N strongest edges (default 0)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_check_attribution)


def run_check_attribution(args: argparse.Namespace) -> None:
    from circuits.circuit.check import check_attribution, format_table

    model, saes = placed(args)
    task = task_spec(args).build(model.tokenizer)
    result = check_attribution(
        model, saes, task, n_top=args.top, steps=args.steps, n_edges=args.edges, progress=not args.quiet
    )
    print_result(result, args.json, format_table)
