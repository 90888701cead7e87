"""Train an SAE set on a model's activations with sae-lens's `MultiSAETrainer`.

One model forward pass per batch feeds every SAE: the batch of step i is the activations of
toy-language documents seeded by (seed, i) at every hook (BOS excluded), so the data stream
is a pure function of the seed and a resumed run sees the same batches as an uninterrupted
one. Checkpoints (sae-lens's per-SAE trainer state) go to ``<folder>.training/`` and training
resumes from the newest complete one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from sae_lens import TrainingSAE
from sae_lens.config import SAETrainerConfig
from sae_lens.registry import get_sae_training_class
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE
from sae_lens.saes.sae import SAEMetadata
from sae_lens.saes.topk_sae import TopKTrainingSAE
from sae_lens.training import multi_sae_trainer
from sae_lens.training.multi_sae_trainer import MultiSAETrainer
from transformer_lens import HookedTransformer

from circuits.core.determinism import deterministic, keep_freed_memory
from circuits.core.errors import CircuitsError
from circuits.core.files import replace_dir
from circuits.core.fused import block_activations, fused_hook, fused_supported
from circuits.core.precision import use_bf16
from circuits.core.vocab import Submodule
from sae.config import SAETrainConfig
from sae.saeset import MANIFEST, SAESet, hook_width, write_manifest
from tasks.corpus import corpus_tokens

COMPLETE = "complete.json"
RECORD = "training.json"  # in a trained set's folder: the config and the model it was trained on


SAE_LENS_ARCH = {"matryoshka": "matryoshka_batchtopk"}  # our architecture names -> sae-lens's


def training_sae(
    cfg: SAETrainConfig, d_in: int, hook: str, model_name: str, seed: int, device: str = "cpu"
) -> TrainingSAE:
    """A freshly initialised sae-lens training SAE of ``cfg.arch`` for one hook."""
    sae_cls, cfg_cls = get_sae_training_class(SAE_LENS_ARCH.get(cfg.arch, cfg.arch))
    extra = {
        "topk": {"k": cfg.k, "aux_loss_coefficient": cfg.aux_coefficient},
        "batchtopk": {"k": cfg.k, "aux_loss_coefficient": cfg.aux_coefficient},
        "matryoshka": {
            "k": cfg.k,
            "aux_loss_coefficient": cfg.matryoshka_aux_coefficient,
            "matryoshka_widths": cfg.matryoshka_widths,
            "use_matryoshka_aux_loss": True,  # each level's dead latents fit that level's error
        },
        "standard": {"l1_coefficient": cfg.l1_coefficient},
        "gated": {"l1_coefficient": cfg.l1_coefficient},
        "jumprelu": {"l0_coefficient": cfg.l0_coefficient},
    }[cfg.arch]
    sae_cfg = cfg_cls(
        d_in=d_in, d_sae=cfg.width, device=device, metadata=SAEMetadata(hook_name=hook, model_name=model_name), **extra
    )
    torch.manual_seed(seed)
    if cfg.arch in ("topk", "batchtopk") and sae_cfg.rescale_acts_by_decoder_norm:
        sae_cls = _FOLDED[cfg.arch]
    return sae_cls(sae_cfg)


class NormsOnWeights:
    """Mixin for sae-lens's TopK / BatchTopK training SAEs: the decoder-norm rescaling
    (``rescale_acts_by_decoder_norm``) applied to the weights instead of the activations.

    sae-lens scales the pre-activations by the decoder row norms ``n`` and the latents by
    ``1 / n`` before decoding: two [batch, width] products forward and four backward, ~40 % of
    an SAE step on 2 CPU cores. ``(x W_enc + b_enc) * n = x (W_enc * n) + b_enc * n`` and
    ``(a / n) W_dec = a (W_dec / n)``, so scaling the [d_in, width] weights instead is the same
    function with the same gradients (to float rounding; tests/sae/test_sae.py), and the
    parameters, their meaning and the saved SAE are sae-lens's.
    """

    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 2:  # addmm takes [batch, d_in]; training batches are
            return super().encode_with_hidden_pre(x)
        hidden_pre = self._hidden_pre(x)
        return self.hook_sae_acts_post(self.activation_fn(hidden_pre)), hidden_pre

    def _hidden_pre(self, x: torch.Tensor) -> torch.Tensor:
        norms = self.W_dec.norm(dim=-1)
        return self.hook_sae_acts_pre(torch.addmm(self.b_enc * norms, self.process_sae_in(x), self.W_enc * norms))

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        if feature_acts.dim() != 2 or feature_acts.is_sparse:
            return super().decode(feature_acts)
        w_dec = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True)
        sae_out_pre = self.hook_sae_recons(torch.addmm(self.b_dec, feature_acts, w_dec))
        return self.reshape_fn_out(self.run_time_activation_norm_fn_out(sae_out_pre), self.d_head)


class FoldedTopKTrainingSAE(NormsOnWeights, TopKTrainingSAE):
    """sae-lens's TopK training SAE, decoder norms on the weights (`NormsOnWeights`), and a
    sparse decode in training steps.

    Each latent vector has exactly ``k`` non-zeros, so the decode is ``k`` decoder rows per
    token (``F.embedding_bag`` with the latents as per-sample weights): ``k / width`` of the
    dense product forward, and its backward (the latents' and the decoder's gradients) is as
    sparse. Same function and gradients as the dense decode (tests/sae/test_sae.py); about a
    quarter of an SAE training step on 2 CPU cores. ``encode_with_hidden_pre`` keeps the top-k
    values and indices for the ``decode`` of the latents it returned; any other tensor
    decodes densely, and with a hook on the latents the whole step is sae-lens's.
    """

    _topk: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (latents, values, indices)

    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 2 or self.hook_sae_acts_post.fwd_hooks:  # a hook may change the latents
            return super().encode_with_hidden_pre(x)
        hidden_pre = self._hidden_pre(x)
        values, indices = hidden_pre.topk(self.cfg.k, dim=-1, sorted=False)
        values = values.relu()
        # the dense latents sae-lens's TopK gives, for the trainer's firing statistics; the
        # gradient reaches the encoder through `values` in the sparse decode
        with torch.no_grad():
            latents = torch.zeros_like(hidden_pre).scatter_(-1, indices, values)
        self._topk = (latents, values, indices)
        return latents, hidden_pre

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        topk, self._topk = self._topk, None
        if topk is None or topk[0] is not feature_acts:
            return super().decode(feature_acts)
        _, values, indices = topk
        w_dec = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True)
        recons = F.embedding_bag(indices, w_dec, per_sample_weights=values.to(w_dec.dtype), mode="sum")
        sae_out_pre = self.hook_sae_recons(recons + self.b_dec)
        return self.reshape_fn_out(self.run_time_activation_norm_fn_out(sae_out_pre), self.d_head)


class FoldedBatchTopKTrainingSAE(NormsOnWeights, BatchTopKTrainingSAE):
    """sae-lens's BatchTopK training SAE, decoder norms on the weights (`NormsOnWeights`)."""


_FOLDED = {"topk": FoldedTopKTrainingSAE, "batchtopk": FoldedBatchTopKTrainingSAE}


class ActivationBatches(Iterator[dict[str, torch.Tensor]]):
    """Batch i: activations at every hook for the toy documents seeded by (seed, i)."""

    def __init__(self, model: HookedTransformer, hooks: list[str], cfg: SAETrainConfig, start: int = 0):
        self.model, self.hooks, self.cfg, self.index = model, hooks, cfg, start
        self.stop_at = max(Submodule.parse(h).layer for h in hooks) + 1
        # the same values as run_with_cache, ~2.5x faster (circuits/core/fused.py)
        self.fused = fused_supported(model) and all(fused_hook(h) for h in hooks)

    @torch.no_grad()
    def __next__(self) -> dict[str, torch.Tensor]:
        tokens = corpus_tokens(
            self.model.tokenizer, f"sae/{self.cfg.seed}/{self.index}", self.cfg.seqs_per_batch, self.cfg.seq_len
        )
        self.index += 1
        tokens = tokens.to(self.model.cfg.device)
        if self.fused:
            cache = block_activations(self.model, tokens, self.hooks)
        else:
            _, cache = self.model.run_with_cache(tokens, names_filter=self.hooks, stop_at_layer=self.stop_at)
        return {h: cache[h][:, 1:].reshape(-1, cache[h].shape[-1]) for h in self.hooks}


class ResamplingMultiSAETrainer(MultiSAETrainer):
    """sae-lens's multi-SAE trainer, plus periodic re-initialisation of dead latents.

    On small models many TopK latents never win a slot and the auxiliary loss barely moves
    them once the reconstruction error is small. Every ``resample_every`` steps, each latent
    that has not fired for ``dead_window`` steps gets the direction of the reconstruction
    error of a batch input (drawn with probability proportional to the squared error), the
    mean norms of the live latents, and fresh optimizer state.
    """

    def __init__(self, *args, train_cfg: SAETrainConfig, n_steps: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_cfg, self.n_steps_total = train_cfg, n_steps

    def _checkpoint_if_needed(self) -> None:
        step = self.n_training_steps + 1
        every = self.train_cfg.resample_every
        if every and step % every == 0 and step <= self.train_cfg.resample_until * self.n_steps_total:
            batch = self.data_provider.last
            for name, trainer in self.trainers.items():
                if self.saes[name].cfg.architecture() in ("topk", "batchtopk"):  # matryoshka: aux loss
                    resample_dead_latents(
                        trainer,
                        batch[self.hook_names[name]],
                        torch.Generator().manual_seed(self.train_cfg.seed * 100003 + step),
                        self.train_cfg.dead_window,
                    )
        super()._checkpoint_if_needed()


@torch.no_grad()
def resample_dead_latents(trainer, batch: torch.Tensor, generator: torch.Generator, window: int) -> int:
    """Re-initialise the latents of one sae-lens `SAETrainer` that have not fired for
    ``window`` steps; return how many."""
    sae = trainer.sae
    dead = trainer.n_forward_passes_since_fired > window
    n_dead = int(dead.sum())
    if n_dead == 0 or n_dead == dead.numel():
        return 0
    x = trainer.activation_scaler(batch.to(sae.W_dec.device))
    acts, _ = sae.encode_with_hidden_pre(x)
    directions = _error_directions(x - sae.decode(acts), n_dead, generator)
    alive = ~dead
    sae.W_dec.data[dead] = directions * sae.W_dec.data[alive].norm(dim=-1).mean()
    sae.W_enc.data[:, dead] = directions.T * sae.W_enc.data[:, alive].norm(dim=0).mean()
    sae.b_enc.data[dead] = 0.0
    _reset_optimizer_state(trainer.optimizer, sae, dead)
    trainer.n_forward_passes_since_fired[dead] = 0
    return n_dead


def _error_directions(error: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` unit rows of ``error``, drawn with probability proportional to their squared norm."""
    weights = error.pow(2).sum(-1).cpu()
    picks = torch.multinomial(weights / weights.sum(), n, replacement=True, generator=generator)
    directions = error[picks.to(error.device)]
    return directions / directions.norm(dim=-1, keepdim=True).clamp(min=1e-8)


def _reset_optimizer_state(optimizer: torch.optim.Optimizer, sae, dead: torch.Tensor) -> None:
    """Zero Adam's moments of the ``dead`` latents' encoder, decoder and bias entries."""
    for param in (sae.W_dec, sae.W_enc, sae.b_enc):
        state = optimizer.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                if param is sae.W_enc:
                    state[key][:, dead] = 0.0
                else:
                    state[key][dead] = 0.0


def train_sae_set(
    model: HookedTransformer,
    cfg: SAETrainConfig,
    folder: str | Path,
    progress: bool = True,
    stop_after: int | None = None,
) -> SAESet | None:
    """Train one SAE per hook of ``cfg`` on ``model``'s activations and save the set to ``folder``.

    ``stop_after`` stops after that many training steps of this call, leaving a checkpoint
    and no final set (used to test resumption); the function then returns None.
    """
    if cfg.seq_len > model.cfg.n_ctx:
        raise CircuitsError(f"SAE config: seq_len {cfg.seq_len} is longer than the model's n_ctx {model.cfg.n_ctx}")
    folder = Path(folder)
    hooks = cfg.hooks(model)
    device = str(model.cfg.device)
    saes = {
        h: training_sae(cfg, hook_width(model, h), h, model.cfg.model_name, cfg.seed + i, device)
        for i, h in enumerate(hooks)
    }
    trained = fit_saes(
        saes,
        lambda start: ActivationBatches(model, hooks, cfg, start),
        cfg,
        folder.with_name(folder.name + ".training"),
        progress,
        stop_after,
        device,
    )
    if trained is None:
        return None
    _save_inference_set(trained, folder, model.cfg.model_name, training_record(cfg, model))
    shutil.rmtree(folder.with_name(folder.name + ".training"), ignore_errors=True)
    return SAESet.load(folder, model, device=device)


def fit_saes(
    saes: dict[str, TrainingSAE],
    batches: Callable[[int], Iterator[dict[str, torch.Tensor]]],
    cfg: SAETrainConfig,
    ckpt_root: Path,
    progress: bool = True,
    stop_after: int | None = None,
    device: str = "cpu",
    batch_size: int | None = None,
) -> dict[str, TrainingSAE] | None:
    """Train ``saes`` (name -> sae-lens training SAE) in lockstep on ``batches(start_step)``,
    an iterator of ``{name: [batch_size, d_in]}`` (default batch size: ``cfg.batch_tokens``);
    checkpoint to and resume from ``ckpt_root``. Returns None when ``stop_after`` ends the
    call before the run is complete."""
    batch_size = batch_size or cfg.batch_tokens
    n_steps = cfg.n_tokens // batch_size
    trainer_cfg = SAETrainerConfig(
        total_training_samples=n_steps * batch_size,
        train_batch_size_samples=batch_size,
        lr=cfg.lr,
        lr_end=cfg.lr / 10,
        lr_scheduler_name="cosineannealing",
        lr_warm_up_steps=min(50, n_steps // 10),
        lr_decay_steps=n_steps // 5,
        device=device,
        autocast=use_bf16(cfg.autocast, device),
        n_checkpoints=cfg.n_checkpoints,
        checkpoint_path=str(ckpt_root),
        # sae-lens's dead mask only drives the TopK auxiliary loss; a coefficient of 0 skips it.
        dead_feature_window=cfg.dead_window if _aux_loss(cfg) else n_steps + 1,
        feature_sampling_window=200,
    )
    trainer = ResamplingMultiSAETrainer(
        trainer_cfg,
        saes,
        {name: name for name in saes},
        iter(()),
        save_checkpoint_fn=partial(_mark_complete, cfg),
        train_cfg=cfg,
        n_steps=n_steps,
    )
    start = _resume(trainer, ckpt_root, cfg)
    if stop_after is not None:
        # Only the coordinator's loop stops early; per-SAE lr schedules keep the whole run.
        trainer.cfg = replace(trainer_cfg, total_training_samples=min(n_steps, start + stop_after) * batch_size)
    trainer.checkpoint_thresholds = [t for t in trainer.checkpoint_thresholds if t > start * batch_size]
    trainer.data_provider = _LastBatch(batches(start))
    keep_freed_memory()
    with _progress(progress), deterministic():
        trained = trainer.fit()
    if trainer.n_training_steps < n_steps:
        trainer.save_checkpoint(str(trainer.n_training_samples))
        return None
    return trained


def _aux_loss(cfg: SAETrainConfig) -> bool:
    """Whether sae-lens's dead-latent auxiliary loss is on (it needs the dead mask)."""
    return bool(cfg.matryoshka_aux_coefficient if cfg.arch == "matryoshka" else cfg.aux_coefficient)


class _LastBatch(Iterator[dict[str, torch.Tensor]]):
    """Passes batches through, remembering the last one (resampling draws inputs from it)."""

    def __init__(self, batches: Iterator[dict[str, torch.Tensor]]):
        self.batches, self.last = batches, {}

    def __next__(self) -> dict[str, torch.Tensor]:
        self.last = next(self.batches)
        return self.last


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


def _save_inference_set(saes: dict[str, TrainingSAE], folder: Path, model_name: str, record: dict) -> None:
    """Write the trained SAEs in sae-lens's inference format as an SAE set, with its training
    record, atomically."""
    with replace_dir(folder) as tmp:
        for hook, sae in saes.items():
            sae.save_inference_model(tmp / hook)
        write_manifest(tmp, list(saes), model_name)
        (tmp / RECORD).write_text(json.dumps(record, indent=2))


def load_default_set(folder: str | Path, model: HookedTransformer, progress: bool = True) -> SAESet:
    """The default SAE set for ``model`` cached in ``folder``, trained there first (again) when
    `stale_reason` says so (`circuits.loaders.load_saes("toy")` calls this on the cache's
    ``saes-toy/`` folder)."""
    folder = Path(folder)
    reason = stale_reason(folder, model)
    if reason:
        if (folder / MANIFEST).is_file():
            print(f"{folder}: {reason}; training the default SAE set again", file=sys.stderr)
        train_sae_set(model, default_config(), folder, progress=progress)
    return SAESet.load(folder, model, device=str(model.cfg.device))


def default_config() -> SAETrainConfig:
    """The default recipe: what ``load_saes("toy")`` trains."""
    return SAETrainConfig()


def model_fingerprint(model: HookedTransformer) -> str:
    """A short hash of the model's weights (names, shapes and float32 values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def training_record(cfg: SAETrainConfig, model: HookedTransformer) -> dict:
    """What a trained set's ``training.json`` holds: its config, whether that was the default
    recipe, the fingerprint of the model it was trained on, and whether its steps ran in bf16."""
    return {
        "config": cfg.to_dict(),
        "default": cfg == default_config(),
        "model": model_fingerprint(model),
        "bf16": use_bf16(cfg.autocast, str(model.cfg.device)),
    }


def stale_reason(folder: Path, model: HookedTransformer) -> str | None:
    """Why the cached default set in ``folder`` must be trained (again), or None to use it: it
    is missing, predates training records, was trained on another model, or was trained with
    an earlier default recipe. A set trained there with other options on this model is kept."""
    if not (folder / MANIFEST).is_file():
        return "no SAE set"
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        return f"no readable {RECORD} (trained before training records)"
    if record.get("model") != model_fingerprint(model):
        return "trained on another model"
    if record.get("default") and _recorded_config(record) != default_config():
        return "trained with an earlier default recipe"
    return None


def _recorded_config(record: dict) -> SAETrainConfig | None:
    """The config a training record names (fields added since take their defaults), or None
    where it no longer reads as one."""
    try:
        return SAETrainConfig.from_dict(record.get("config"))
    except CircuitsError:
        return None
