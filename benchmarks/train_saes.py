"""Time training of the default SAE set on the embedded model (target, with the model: <= 8
minutes on 2 CPU cores), then evaluate it. Prints markdown tables; `--json PATH` also writes JSON.

Without `--seeds`: trains `SAETrainConfig()` on the cached embedded model into a temporary
folder (the cache is untouched). With `--seeds 0 1 2`: for each seed, trains the model
(`ToyModelConfig(seed=S)`) and its SAE set (`SAETrainConfig(seed=S)`) from scratch, as a
fresh machine would, and prints one row per hook and seed against the quality bar
(`sae.evaluate.QualityBar`). `--out DIR` keeps them in DIR/<seed>/{toy,saes-toy};
`--same-as DIR` compares the weights with an earlier `--out DIR` (max |difference|: 0 when
training is deterministic). Run: `make benchmark` or `.venv/bin/python benchmarks/train_saes.py`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from circuits.core.tables import markdown_table
from circuits.loaders import load_model
from circuits.toy.config import ToyModelConfig
from circuits.toy.model import train_model
from sae.config import SAETrainConfig
from sae.evaluate import QualityBar, SAEEvaluation, evaluate_saes, format_table
from sae.train import train_sae_set


@dataclass
class SeedRun:
    """One seed's model and SAE set, trained from scratch: times and SAE quality."""

    seed: int
    model_seconds: float
    sae_seconds: float
    quality: SAEEvaluation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, help="training tokens per SAE (default: the config's)")
    parser.add_argument("--seeds", type=int, nargs="+", help="train model + SAEs from scratch with each seed")
    parser.add_argument("--model-steps", type=int, help="with --seeds: model training steps (default: the config's)")
    parser.add_argument("--out", help="with --seeds: keep the trained models and SAE sets in OUT/<seed>/")
    parser.add_argument("--same-as", help="with --seeds: max |weight difference| against an earlier --out folder")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    overrides = {"n_tokens": args.tokens} if args.tokens else {}
    if args.seeds is None:
        cached_model(SAETrainConfig(**overrides), args)
    else:
        per_seed(args, overrides)


def cached_model(cfg: SAETrainConfig, args: argparse.Namespace) -> None:
    """Train ``cfg`` on the cached embedded model in a temporary folder; time and evaluate it."""
    model = load_model("toy", progress=not args.quiet)
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


def per_seed(args: argparse.Namespace, overrides: dict) -> None:
    """Train model + SAEs from scratch per seed; print the per-hook table, the bar's misses
    and, with ``--same-as``, the weight differences."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        model_cfgs = {
            s: ToyModelConfig(seed=s, **({"steps": args.model_steps} if args.model_steps else {})) for s in args.seeds
        }
        runs = [train_seed(model_cfgs[s], root / str(s), overrides, not args.quiet) for s in args.seeds]
        deltas = {s: weight_deltas(root / str(s), Path(args.same_as) / str(s)) for s in args.seeds if args.same_as}
    print(f"threads: {torch.get_num_threads()}\n\n{seed_table(runs)}")
    for run in runs:
        misses = QualityBar().failures(run.quality)
        print(f"\nseed {run.seed}: " + ("passes the bar" if not misses else "misses: " + "; ".join(misses)))
    if deltas:
        rows = [[s, f"{d['model']:.3g}", f"{d['saes']:.3g}"] for s, d in deltas.items()]
        print("\n" + markdown_table(["seed", "model max abs diff", "SAEs max abs diff"], rows))
    if args.json:
        Path(args.json).write_text(json.dumps([run_json(run, deltas.get(run.seed)) for run in runs], indent=2))


def train_seed(model_cfg: ToyModelConfig, folder: Path, overrides: dict, progress: bool) -> SeedRun:
    """Train the model and the default SAE set with ``model_cfg.seed`` into ``folder``; evaluate the set."""
    start = time.perf_counter()
    model = train_model(model_cfg, folder / "toy", progress=progress)
    model_seconds = time.perf_counter() - start
    start = time.perf_counter()
    saes = train_sae_set(
        model, SAETrainConfig(seed=model_cfg.seed, **overrides), folder / "saes-toy", progress=progress
    )
    sae_seconds = time.perf_counter() - start
    return SeedRun(model_cfg.seed, model_seconds, sae_seconds, evaluate_saes(model, saes, progress=progress))


def seed_table(runs: list[SeedRun]) -> str:
    """One row per seed and hook, then the seed's worst values, spliced CE and training times."""
    rows = []
    for run in runs:
        scores = run.quality.saes
        rows += [
            [run.seed, hook, *_cells(s.fvu, s.l0, s.dead_frac, s.ce_recovered), "", ""] for hook, s in scores.items()
        ]
        worst = [max(s.fvu for s in scores.values()), max(s.l0 for s in scores.values())]
        worst += [max(s.dead_frac for s in scores.values()), min(s.ce_recovered for s in scores.values())]
        times = f"model {run.model_seconds:.0f} + SAEs {run.sae_seconds:.0f}"
        rows.append([run.seed, "worst of all", *_cells(*worst), f"{run.quality.all_spliced_ce_recovered:.4f}", times])
    headers = ["seed", "hook", "FVU", "L0", "dead %", "CE rec", "spliced CE rec", "train s"]
    return markdown_table(headers, rows)


def _cells(fvu: float, l0: float, dead_frac: float, ce_recovered: float) -> list[str]:
    return [f"{fvu:.4f}", f"{l0:.1f}", f"{100 * dead_frac:.1f}", f"{ce_recovered:.4f}"]


def weight_deltas(a: Path, b: Path) -> dict[str, float]:
    """Max |difference| over every weight of the model (``toy/``) and of the SAE set
    (``saes-toy/``) trained in ``a`` and in ``b``."""
    return {"model": max_abs_diff(a, b, "toy/*.safetensors"), "saes": max_abs_diff(a, b, "saes-toy/*/*.safetensors")}


def max_abs_diff(a: Path, b: Path, pattern: str) -> float:
    """Max |x - y| over the tensors of the safetensors files matching ``pattern`` under ``a``
    and their namesakes under ``b``."""
    worst = 0.0
    for path in sorted(a.glob(pattern)):
        ours, theirs = load_file(str(path)), load_file(str(b / path.relative_to(a)))
        diffs = [(ours[k].float() - theirs[k].float()).abs() for k in ours if ours[k].numel()]
        worst = max([worst] + [d.max().item() for d in diffs])
    return worst


def run_json(run: SeedRun, deltas: dict[str, float] | None) -> dict:
    """A seed's run as JSON data."""
    data = {"seed": run.seed, "model_seconds": run.model_seconds, "sae_seconds": run.sae_seconds}
    return {**data, **run.quality.to_dict(), **({"max_abs_diff": deltas} if deltas else {})}


if __name__ == "__main__":
    main()
