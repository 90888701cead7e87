"""The embedded default model: a small HookedTransformer trained here on the toy language.

Built from a `ToyModelConfig` (``circuits/toy/config.py``); `load_default_model` keeps the
default one cached (trained on first use; `circuits.loaders.load_model("toy")` resolves the name
to it, and other names to saved folders or pretrained models).

A saved model folder holds ``config.json`` (a `ToyModelConfig`), ``model.safetensors`` and the
tokenizer files. Training writes an atomic checkpoint every ``checkpoint_every`` steps into
``<folder>.training/`` and resumes from it; batches are a pure function of (seed, step), so a
resumed run gives the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformers import PreTrainedTokenizerBase

from circuits.core.determinism import deterministic
from circuits.core.errors import CircuitsError
from circuits.core.files import previous_dir, replace_dir
from circuits.core.fused import fused_supported, training_loss
from circuits.core.precision import use_bf16
from circuits.toy.config import ToyModelConfig
from tasks.corpus import corpus_tokens
from tasks.tokenizer import build_tokenizer, load_tokenizer

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
# {"default": trained with the default recipe of its day, "bf16": its products were bf16}
RECORD_FILE = "training.json"
TOY_NAME = "toy"


def build_model(cfg: ToyModelConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> HookedTransformer:
    """A freshly initialised (seeded) model for ``cfg`` with the toy tokenizer."""
    tokenizer = tokenizer or build_tokenizer()
    return HookedTransformer(cfg.hooked_config(len(tokenizer)), tokenizer=tokenizer)


# ------------------------------------------------------------------------------ training
def training_batch(tokenizer: PreTrainedTokenizerBase, cfg: ToyModelConfig, step: int) -> torch.Tensor:
    """The token batch of training step ``step``: a pure function of (cfg.seed, step)."""
    return corpus_tokens(tokenizer, f"train/{cfg.seed}/{step}", cfg.batch_size, cfg.seq_len, cfg.mixture)


def learning_rate(cfg: ToyModelConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 10% of ``cfg.lr``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_model(
    cfg: ToyModelConfig,
    folder: str | Path,
    progress: bool = True,
    stop_after: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> HookedTransformer | None:
    """Train ``cfg`` and save the model to ``folder``, resuming from ``<folder>.training/``.

    ``stop_after`` stops (checkpointed) after that many steps of this call without saving the
    final model — used to test resumption; the function then returns None.
    """
    folder = Path(folder)
    ckpt_dir = folder.with_name(folder.name + ".training")
    tokenizer = build_tokenizer()
    model = build_model(cfg, tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = _resume(ckpt_dir, cfg, model, optimizer)
    fused, bf16 = fused_supported(model), use_bf16(cfg.autocast)
    model.train()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train model", disable=not progress)
    for i, step in enumerate(bar):
        if stop_after is not None and i >= stop_after:
            _checkpoint(ckpt_dir, cfg, model, optimizer, step)
            return None
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        with deterministic():  # same seed, same weights
            tokens = training_batch(tokenizer, cfg, step)
            if fused:
                loss = training_loss(model, tokens, bf16=bf16)
            else:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = model(tokens, return_type="loss")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if on_step:
            on_step(step, loss.item())
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            _checkpoint(ckpt_dir, cfg, model, optimizer, step + 1)
    model.eval()
    save_model(model, cfg, folder)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return model


def _checkpoint(
    ckpt_dir: Path, cfg: ToyModelConfig, model: HookedTransformer, optimizer: torch.optim.Optimizer, step: int
) -> None:
    """Write a checkpoint atomically (`replace_dir`: a new folder renamed over the old one)."""
    with replace_dir(ckpt_dir) as tmp:
        save_file(_contiguous(model.state_dict()), str(tmp / WEIGHTS_FILE))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, "config": cfg.to_dict()}))


def _resume(ckpt_dir: Path, cfg: ToyModelConfig, model: HookedTransformer, optimizer: torch.optim.Optimizer) -> int:
    """Load the last good checkpoint into model and optimizer; return its step (0 if none)."""
    old = previous_dir(ckpt_dir)  # a crash between replace_dir's two renames leaves only this one
    source = ckpt_dir if (ckpt_dir / "state.json").is_file() else old
    if not (source / "state.json").is_file():
        return 0
    state = json.loads((source / "state.json").read_text())
    if state["config"] != cfg.to_dict():
        raise CircuitsError(f"{source}: checkpoint was made with a different model config; delete it to start over")
    _load_weights(model, source / WEIGHTS_FILE)
    optimizer.load_state_dict(torch.load(source / "optimizer.pt", weights_only=True))
    return int(state["step"])


# ------------------------------------------------------------------------------ save / load
def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in state.items()}


def save_model(model: HookedTransformer, cfg: ToyModelConfig, folder: str | Path) -> None:
    """Save weights, config and tokenizer into ``folder``, atomically (`replace_dir`)."""
    with replace_dir(folder) as tmp:
        save_file(_contiguous(model.state_dict()), str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2))
        record = {"default": cfg == ToyModelConfig(), "bf16": use_bf16(cfg.autocast)}
        (tmp / RECORD_FILE).write_text(json.dumps(record))
        model.tokenizer.save_pretrained(str(tmp))


def _load_weights(model: HookedTransformer, path: Path) -> None:
    if not path.is_file():
        raise CircuitsError(f"{path}: weights file is missing")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CircuitsError(f"{path}: corrupt weights file ({err})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CircuitsError(f"{path}: weights are missing {missing[0]} (and {len(missing) - 1} more)")
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape:
            raise CircuitsError(
                f"{path}: {name} has shape {tuple(state[name].shape)}, config needs {tuple(tensor.shape)}"
            )
    model.load_state_dict(state, strict=False)


def load_saved_model(folder: str | Path, device: str = "cpu") -> HookedTransformer:
    """Load a model folder written by `save_model`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CircuitsError(f"{folder}: no such model folder")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise CircuitsError(f"{folder}: no {CONFIG_FILE} (not a saved model folder, or a partial one)")
    try:
        cfg = ToyModelConfig.from_dict(json.loads(config_path.read_text()), where=str(config_path))
    except (json.JSONDecodeError, TypeError) as err:
        raise CircuitsError(f"{config_path}: not a valid model config ({err})") from None
    model = build_model(cfg, load_tokenizer(folder))
    _load_weights(model, folder / WEIGHTS_FILE)
    model.eval()
    return model.to(device, print_details=False)


def load_default_model(folder: str | Path, device: str = "cpu", progress: bool = True) -> HookedTransformer:
    """The default model cached in ``folder``, trained there first (again) when it is missing,
    predates training records, or was trained with an earlier default recipe
    (`circuits.loaders.load_model("toy")` calls this on the cache's ``toy/`` folder)."""
    folder = Path(folder)
    reason = _stale_reason(folder)
    if reason:
        if (folder / CONFIG_FILE).is_file():
            print(f"{folder}: {reason}; training the default model again", file=sys.stderr)
        train_model(ToyModelConfig(), folder, progress=progress)
    return load_saved_model(folder, device)


def _stale_reason(folder: Path) -> str | None:
    """Why the cached toy model in ``folder`` must be trained (again), or None to use it: it is
    missing, predates training records, or was trained with an earlier default recipe. A
    model trained there with other settings (`circuits train-model --seed 3`) is kept."""
    if not (folder / CONFIG_FILE).is_file():
        return "no model"
    try:
        default = json.loads((folder / RECORD_FILE).read_text())["default"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return f"no readable {RECORD_FILE} (trained before training records)"
    try:
        saved = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None  # load_saved_model says what is wrong with it
    if default and saved != json.loads(json.dumps(ToyModelConfig().to_dict())):
        return "trained with an earlier default recipe"
    return None
