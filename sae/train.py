"""Train an SAE set on a model's activations with sae-lens's `MultiSAETrainer`.

One model forward pass per batch feeds every SAE: the batch of step i is the activations of
toy-language documents seeded by (seed, i) at every hook (BOS excluded), so the data stream
is a pure function of the seed and a resumed run sees the same batches as an uninterrupted
one. Checkpoints (sae-lens's per-SAE trainer state) go to ``<folder>.training/`` and training
resumes from the newest complete one.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from pathlib import Path

import torch
from sae_lens import TrainingSAE
from sae_lens.config import SAETrainerConfig
from sae_lens.registry import get_sae_training_class
from sae_lens.saes.sae import SAEMetadata
from sae_lens.training import multi_sae_trainer
from sae_lens.training.multi_sae_trainer import MultiSAETrainer
from transformer_lens import HookedTransformer

from circuits.errors import CircuitsError
from sae.saeset import SAESet, check_hooks, hook_names, hook_width, write_manifest
from tasks.corpus import corpus_tokens

ARCHITECTURES = ("topk", "batchtopk", "jumprelu", "standard", "gated")
COMPLETE = "complete.json"


@dataclass
class SAETrainConfig:
    """What to train (hooks, architecture, width) and how (tokens, lr, seed)."""

    arch: str = "topk"
    kinds: tuple[str, ...] = ("resid", "mlp", "attn")
    layers: tuple[int, ...] | None = None  # None: every layer
    width: int = 1024
    k: int = 32  # topk / batchtopk: active latents per token
    l1_coefficient: float = 2.0  # standard / gated
    l0_coefficient: float = 0.5  # jumprelu
    lr: float = 1e-3
    n_tokens: int = 1_000_000
    seqs_per_batch: int = 64  # one forward pass: seqs_per_batch * (seq_len - 1) tokens
    seq_len: int = 64
    seed: int = 0
    n_checkpoints: int = 4

    def __post_init__(self) -> None:
        self.kinds = tuple(self.kinds)
        self.layers = None if self.layers is None else tuple(self.layers)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SAETrainConfig":
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise CircuitsError(f"unknown SAE training config field(s): {', '.join(unknown)}")
        return cls(**data).validated()

    def validated(self) -> "SAETrainConfig":
        if self.arch not in ARCHITECTURES:
            raise CircuitsError(f"unknown SAE architecture {self.arch!r}: use {', '.join(ARCHITECTURES)}")
        for name in ("width", "k", "n_tokens", "seqs_per_batch", "seq_len"):
            if getattr(self, name) <= 0:
                raise CircuitsError(f"SAE config: {name} must be positive, got {getattr(self, name)}")
        if self.k > self.width:
            raise CircuitsError(f"SAE config: k {self.k} is larger than the width {self.width}")
        hook_names(self.kinds, [0])  # raises on unknown kinds
        return self

    @property
    def batch_tokens(self) -> int:
        return self.seqs_per_batch * (self.seq_len - 1)

    def hooks(self, model: HookedTransformer) -> list[str]:
        layers = range(model.cfg.n_layers) if self.layers is None else self.layers
        bad = [layer for layer in layers if not 0 <= layer < model.cfg.n_layers]
        if bad:
            raise CircuitsError(f"layer {bad[0]} does not exist: the model has {model.cfg.n_layers} layers")
        hooks = hook_names(self.kinds, layers)
        check_hooks(model, hooks)
        return hooks


def training_sae(cfg: SAETrainConfig, d_in: int, hook: str, model_name: str, seed: int,
                 device: str = "cpu") -> TrainingSAE:
    """A freshly initialised sae-lens training SAE of ``cfg.arch`` for one hook."""
    sae_cls, cfg_cls = get_sae_training_class(cfg.arch)
    extra = {
        "topk": {"k": cfg.k}, "batchtopk": {"k": cfg.k},
        "standard": {"l1_coefficient": cfg.l1_coefficient},
        "gated": {"l1_coefficient": cfg.l1_coefficient},
        "jumprelu": {"l0_coefficient": cfg.l0_coefficient},
    }[cfg.arch]
    sae_cfg = cfg_cls(d_in=d_in, d_sae=cfg.width, device=device,
                      metadata=SAEMetadata(hook_name=hook, model_name=model_name), **extra)
    torch.manual_seed(seed)
    return sae_cls(sae_cfg)


class ActivationBatches(Iterator[dict[str, torch.Tensor]]):
    """Batch i: activations at every hook for the toy documents seeded by (seed, i)."""

    def __init__(self, model: HookedTransformer, hooks: list[str], cfg: SAETrainConfig, start: int = 0):
        self.model, self.hooks, self.cfg, self.index = model, hooks, cfg, start
        self.stop_at = max(int(h.split(".")[1]) for h in hooks) + 1

    @torch.no_grad()
    def __next__(self) -> dict[str, torch.Tensor]:
        tokens = corpus_tokens(self.model.tokenizer, f"sae/{self.cfg.seed}/{self.index}",
                               self.cfg.seqs_per_batch, self.cfg.seq_len)
        self.index += 1
        _, cache = self.model.run_with_cache(tokens.to(self.model.cfg.device), names_filter=self.hooks,
                                             stop_at_layer=self.stop_at)
        return {h: cache[h][:, 1:].reshape(-1, cache[h].shape[-1]) for h in self.hooks}


def train_sae_set(model: HookedTransformer, cfg: SAETrainConfig, folder: str | Path,
                  progress: bool = True, stop_after: int | None = None) -> SAESet | None:
    """Train one SAE per hook of ``cfg`` and save the set to ``folder``.

    ``stop_after`` stops after that many training steps of this call, leaving a checkpoint
    and no final set (used to test resumption); the function then returns None.
    """
    cfg.validated()
    folder = Path(folder)
    hooks = cfg.hooks(model)
    device = str(model.cfg.device)
    model_name = model.cfg.model_name
    saes = {h: training_sae(cfg, hook_width(model, h), h, model_name, cfg.seed + i, device)
            for i, h in enumerate(hooks)}
    n_steps = cfg.n_tokens // cfg.batch_tokens
    ckpt_root = folder.with_name(folder.name + ".training")
    trainer_cfg = SAETrainerConfig(
        total_training_samples=n_steps * cfg.batch_tokens,
        train_batch_size_samples=cfg.batch_tokens, lr=cfg.lr, lr_end=cfg.lr / 10,
        lr_scheduler_name="cosineannealing", lr_warm_up_steps=min(50, n_steps // 10),
        lr_decay_steps=n_steps // 5, device=device, n_checkpoints=cfg.n_checkpoints,
        checkpoint_path=str(ckpt_root), dead_feature_window=200, feature_sampling_window=200,
    )
    trainer = MultiSAETrainer(trainer_cfg, saes, {h: h for h in hooks}, iter(()),
                              save_checkpoint_fn=partial(_mark_complete, cfg))
    start = _resume(trainer, ckpt_root, cfg)
    if stop_after is not None:
        # Only the coordinator's loop stops early; per-SAE lr schedules keep the whole run.
        trainer.cfg = replace(trainer_cfg, total_training_samples=min(n_steps, start + stop_after) * cfg.batch_tokens)
    trainer.checkpoint_thresholds = [t for t in trainer.checkpoint_thresholds
                                     if t > start * cfg.batch_tokens]
    trainer.data_provider = ActivationBatches(model, hooks, cfg, start)
    with _progress(progress):
        trained = trainer.fit()
    if stop_after is not None and trainer.n_training_steps < n_steps:
        trainer.save_checkpoint(str(trainer.n_training_samples))
        return None
    _save_inference_set(trained, folder, model_name)
    shutil.rmtree(ckpt_root, ignore_errors=True)
    return SAESet.load(folder, model, device=device)


def _mark_complete(cfg: SAETrainConfig, checkpoint_path: Path | None) -> None:
    # Written last: a checkpoint folder without it was interrupted while being written.
    if checkpoint_path is not None:
        (Path(checkpoint_path) / COMPLETE).write_text(json.dumps({"config": cfg.to_dict()}))


def _resume(trainer: MultiSAETrainer, ckpt_root: Path, cfg: SAETrainConfig) -> int:
    """Load the newest complete checkpoint; return the number of steps already done."""
    if not ckpt_root.is_dir():
        return 0
    done = [p for p in ckpt_root.iterdir() if (p / COMPLETE).is_file() and p.name.isdigit()]
    if not done:
        return 0
    newest = max(done, key=lambda p: int(p.name))
    saved = json.loads((newest / COMPLETE).read_text())["config"]
    if saved != json.loads(json.dumps(cfg.to_dict())):
        raise CircuitsError(f"{newest}: checkpoint was made with a different SAE config; delete it to start over")
    trainer.load_checkpoint(newest)
    return trainer.n_training_steps


@contextmanager
def _progress(enabled: bool):
    """sae-lens's trainer always draws a tqdm bar; quiet it by handing it a disabled one."""
    original = multi_sae_trainer.tqdm
    multi_sae_trainer.tqdm = partial(original, disable=not enabled)
    try:
        yield
    finally:
        multi_sae_trainer.tqdm = original


def _save_inference_set(saes: dict[str, TrainingSAE], folder: Path, model_name: str) -> None:
    """Write the trained SAEs in sae-lens's inference format as an SAE set, atomically."""
    tmp = folder.with_name(folder.name + ".saving")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for hook, sae in saes.items():
        sae.save_inference_model(tmp / hook)
    write_manifest(tmp, list(saes), model_name)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
