"""``train-model`` and ``train-saes``: the embedded model, and an SAE set for a model."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from circuits.cli.args import int_list
from circuits.core.config import add_flag, field_default
from circuits.toy.config import ToyModelConfig
from sae.config import SAETrainConfig


def register_train_model(sub) -> None:
    p = sub.add_parser(
        "train-model",
        help="train the embedded toy-language model",
        description="Train the embedded default model on the toy language and save "
        "it (resumes an interrupted run from its last checkpoint).",
    )
    p.add_argument("--out", help="model folder (default: the cache's toy/ folder)")
    add_flag(p, "--steps", ToyModelConfig, "training steps")
    add_flag(p, "--seed", ToyModelConfig, "random seed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train_model)


def run_train_model(args: argparse.Namespace) -> None:
    from circuits.loaders import default_cache_dir
    from circuits.toy.model import TOY_NAME, train_model

    cfg = ToyModelConfig(seed=args.seed, steps=args.steps)
    folder = Path(args.out) if args.out else default_cache_dir() / TOY_NAME
    start = time.perf_counter()
    train_model(cfg, folder, progress=not args.quiet)
    print(f"trained {cfg.n_layers}-layer model in {time.perf_counter() - start:.0f} s -> {folder}")


def register_train_saes(sub) -> None:
    p = sub.add_parser(
        "train-saes",
        help="train an SAE per hook point of a model",
        description="Train one sae-lens SAE per hook (resid_post, mlp_out, attn_out "
        "of every layer by default) on the model's activations over the "
        "toy language, one model pass feeding every SAE; resumable.",
    )
    p.add_argument("--model", default="toy", help="'toy' or a model folder (default toy)")
    add_flag(p, "--arch", SAETrainConfig, "one of {choices}")
    add_flag(p, "--hooks", SAETrainConfig, "hook kinds, comma-separated, of {choices}", name="kinds")
    p.add_argument("--layers", help="layers, comma-separated (default: all)")
    add_flag(p, "--width", SAETrainConfig, "latents per SAE")
    add_flag(p, "--k", SAETrainConfig, "active latents per token for topk/batchtopk/matryoshka")
    p.add_argument(
        "--prefixes", help="matryoshka: inner prefix widths, comma-separated, increasing (default: width/16,width/4)"
    )
    add_flag(p, "--tokens", SAETrainConfig, "training tokens per SAE", name="n_tokens")
    add_flag(p, "--seed", SAETrainConfig, "random seed")
    p.add_argument("--out", help="output folder (default: the cache's saes-toy/)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_train_saes)


def run_train_saes(args: argparse.Namespace) -> None:
    from circuits.loaders import TOY_SAES, default_cache_dir, hook_kinds, load_model
    from circuits.toy.model import TOY_NAME
    from sae.train import train_sae_set

    layers = None if args.layers is None else tuple(int_list(args.layers, "--layers"))
    model = load_model(args.model, progress=not args.quiet)
    cfg = SAETrainConfig(  # checks --arch and --hooks (one line each)
        arch=args.arch,
        kinds=hook_kinds(args.hooks),
        layers=layers,
        width=args.width,
        k=args.k,
        prefixes=() if args.prefixes is None else tuple(int_list(args.prefixes, "--prefixes")),
        n_tokens=args.tokens,
        seed=args.seed,
        seq_len=min(field_default(SAETrainConfig, "seq_len"), model.cfg.n_ctx),
    )
    default = default_cache_dir() / (TOY_SAES if args.model == TOY_NAME else f"saes-{Path(args.model).name}")
    folder = Path(args.out) if args.out else default
    start = time.perf_counter()
    saes = train_sae_set(model, cfg, folder, progress=not args.quiet)
    print(f"trained {len(saes)} {cfg.arch} SAEs (width {cfg.width}) in {time.perf_counter() - start:.0f} s -> {folder}")
