"""Time training of the embedded default model (target, with the SAEs: <= 8 minutes on 2 CPU cores).

Trains the default `ToyModelConfig` into a temporary folder (the cache is untouched),
evaluates it on held-out prompts and prints a markdown table; `--json PATH` also writes JSON.
`--compare N` instead times N training steps of each way to compute a step (TransformerLens's
forward; the fused forward of circuits/core/fused.py in float32; fused with bf16 products),
alternating, twice, and prints ms per step and the ratio to TransformerLens in one run.
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

import circuits.toy.model as model_module
from circuits.circuit.evaluate import evaluate_model, format_table
from circuits.core.fused import fused_supported
from circuits.toy.config import ToyModelConfig
from circuits.toy.model import train_model

# name -> (use the fused forward, bf16 products)
STEP_KINDS = {"TransformerLens fp32": (False, False), "fused fp32": (True, False), "fused bf16": (True, True)}


def compare(steps: int) -> None:
    """ms per training step of each of STEP_KINDS, alternating, two rounds."""
    times: dict[str, list[float]] = {name: [] for name in STEP_KINDS}
    for _ in range(2):
        for name, (fused, bf16) in STEP_KINDS.items():
            model_module.fused_supported = fused_supported if fused else (lambda model: False)
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                cfg = ToyModelConfig(steps=steps, autocast="on" if bf16 else "off")
                train_model(cfg, Path(tmp) / "toy", progress=False)
                times[name].append((time.perf_counter() - start) / steps * 1000)
    model_module.fused_supported = fused_supported
    base = sum(times["TransformerLens fp32"])
    print(f"| step ({steps} steps x 2, alternating, {torch.get_num_threads()} threads) | ms per step | ratio |")
    print("|---|---|---|")
    for name, ms in times.items():
        print(f"| {name} | {' / '.join(f'{t:.0f}' for t in ms)} | {base / sum(ms):.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="training steps (default: the config's)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--compare", type=int, metavar="N", help="time N steps of each way to compute a step")
    args = parser.parse_args()
    if args.compare:
        compare(args.compare)
        return
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
