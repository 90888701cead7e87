"""Time training of the embedded default model (target: <= 5 minutes on 2 CPU cores).

Trains the default `ToyModelConfig` into a temporary folder (the cache is untouched),
evaluates it on held-out prompts and prints a markdown table; `--json PATH` also writes JSON.
Run: `make benchmark` or `.venv/bin/python benchmarks/train_model.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from circuits.behaviour import evaluate_model, format_table
from circuits.model import ToyModelConfig, train_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="training steps (default: the config's)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args()
    cfg = ToyModelConfig(**({"steps": args.steps} if args.steps else {}))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        model = train_model(cfg, Path(tmp) / "toy", progress=not args.quiet)
        seconds = time.perf_counter() - start
    behaviour = evaluate_model(model)
    result = {
        "steps": cfg.steps,
        "tokens": cfg.steps * cfg.batch_size * cfg.seq_len,
        "train_seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "behaviour": behaviour.to_dict()["tasks"],
    }
    print("| steps | tokens | threads | train time (s) | tokens/s |")
    print("|---|---|---|---|---|")
    print(
        f"| {cfg.steps} | {result['tokens']} | {result['threads']} | {seconds:.1f} | {result['tokens'] / seconds:.0f} |"
    )
    print()
    print(format_table(behaviour))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
