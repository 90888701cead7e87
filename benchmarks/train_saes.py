"""Time training of the default SAE set on the embedded model (target: <= 5 minutes on 2 CPU
cores), then evaluate it. Prints markdown tables; `--json PATH` also writes JSON.

Trains into a temporary folder (the cache is untouched) with `SAETrainConfig()` defaults.
Run: `make benchmark` or `.venv/bin/python benchmarks/train_saes.py`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from circuits.model import load_model
from sae.evaluate import evaluate_saes, format_table
from sae.train import SAETrainConfig, train_sae_set


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, help="training tokens per SAE (default: the config's)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    model = load_model("toy", progress=not args.quiet)
    cfg = SAETrainConfig(**({"n_tokens": args.tokens} if args.tokens else {}))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        saes = train_sae_set(model, cfg, Path(tmp) / "saes", progress=not args.quiet)
        seconds = time.perf_counter() - start
    quality = evaluate_saes(model, saes, progress=not args.quiet)
    print("| SAEs | arch | width | k | tokens per SAE | threads | train time (s) |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {len(saes)} | {cfg.arch} | {cfg.width} | {cfg.k} | {cfg.n_tokens} | "
        f"{torch.get_num_threads()} | {seconds:.1f} |"
    )
    print()
    print(format_table(quality))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"train_seconds": seconds, "config": cfg.to_dict(), **quality.to_dict()}, indent=2)
        )


if __name__ == "__main__":
    main()
