"""The `circuits` command line: one sub-command per job, errors as one line (exit code 2).

One module per command group (``train``, ``evaluate``, ``discover``, ``validate``, ``edit``,
``export``, ``demo``), each registering its sub-commands; flags whose default and choices a
config field or a library function already has are made from it (`circuits.core.config.add_flag`).
Handlers import the library when they run: building the parser imports no torch, so
``circuits --help`` and ``circuits CMD --help`` answer at once.
"""

from __future__ import annotations

import argparse
import sys

from circuits.cli import demo, discover, edit, evaluate, export, train, validate
from circuits.cli.args import Parser
from circuits.core.errors import CircuitsError

# in the order ``circuits --help`` lists them
COMMANDS = (
    train.register_train_model,
    evaluate.register_eval_model,
    train.register_train_saes,
    evaluate.register_eval_saes,
    discover.register,
    validate.register,
    edit.register,
    evaluate.register_check_attribution,
    export.register,
    demo.register,
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="circuits", description="Find feature circuits in transformer language models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for register in COMMANDS:
        register(sub)
    return parser


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
