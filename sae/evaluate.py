"""SAE quality on held-out toy-language text (definitions: docs/design.md, "SAE quality").

Per hook: L0 (mean active latents per token), FVU = sum |x - x_hat|^2 / sum |x - mean(x)|^2,
CE loss recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean) with only that hook replaced
(by the reconstruction, or by zeros for the floor), dead fraction (never active on the
evaluation text) and dense fraction (active on > 10% of tokens). Also CE loss recovered with
every SAE spliced at once, error terms off, against every hook zero-ablated at once.
Interventions and statistics skip the BOS position, which the SAEs are not trained on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuits.errors import CircuitsError
from sae.saeset import SAESet
from tasks.corpus import corpus_tokens

DENSE_THRESHOLD = 0.1


def _replace_hook(fn: Callable[[torch.Tensor], torch.Tensor]):
    """A TransformerLens hook that replaces every non-BOS position by ``fn(activation)``."""

    def hook(act: torch.Tensor, hook) -> torch.Tensor:  # noqa: ARG001 (TL passes the HookPoint)
        out = act.clone()
        out[:, 1:] = fn(act[:, 1:])
        return out

    return hook


def _reconstruct(sae) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: sae.decode(sae.encode(x))


def _zero(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(x)


class _HookStats:
    """Running sums for one hook's L0, FVU and latent firing counts."""

    def __init__(self, d_sae: int):
        self.tokens = 0
        self.active = 0.0
        self.sq_err = 0.0
        self.sum_x: torch.Tensor | None = None
        self.sum_sq = 0.0
        self.fired = torch.zeros(d_sae)

    def update(self, x: torch.Tensor, sae) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        f = sae.encode(x)
        x_hat = sae.decode(f)
        self.tokens += x.shape[0]
        self.active += (f != 0).sum().item()
        self.sq_err += (x - x_hat).pow(2).sum().item()
        self.sum_x = x.sum(0) if self.sum_x is None else self.sum_x + x.sum(0)
        self.sum_sq += x.pow(2).sum().item()
        self.fired += (f != 0).sum(0).float().cpu()

    def result(self) -> dict[str, float]:
        total_var = self.sum_sq - self.sum_x.pow(2).sum().item() / self.tokens
        freq = self.fired / self.tokens
        return {
            "l0": self.active / self.tokens,
            "fvu": self.sq_err / total_var,
            "dead_frac": (self.fired == 0).float().mean().item(),
            "dense_frac": (freq > DENSE_THRESHOLD).float().mean().item(),
        }


def _recovered(ce_zero: float, ce_sae: float, ce_clean: float) -> float:
    return (ce_zero - ce_sae) / (ce_zero - ce_clean)


@torch.no_grad()
def evaluate_saes(model: HookedTransformer, saes: SAESet, n_seqs: int = 512, seq_len: int | None = None,
                  batch_size: int = 64, seed: int = 0, progress: bool = True) -> dict:
    """``{"saes": {hook: {l0, fvu, ce_recovered, dead_frac, dense_frac}},
    "all_spliced_ce_recovered": …, "ce_clean": …}`` on ``n_seqs`` held-out sequences of
    ``seq_len`` tokens (default: 64, or the model's context if shorter)."""
    saes.check_model(model)
    seq_len = min(64, model.cfg.n_ctx) if seq_len is None else seq_len
    if seq_len > model.cfg.n_ctx:
        raise CircuitsError(f"evaluation seq_len {seq_len} is longer than the model's n_ctx {model.cfg.n_ctx}")
    hooks = list(saes)
    stats = {h: _HookStats(saes[h].cfg.d_sae) for h in hooks}
    ce_sums = {"clean": 0.0, "all_sae": 0.0, "all_zero": 0.0}
    ce_sums.update({(h, kind): 0.0 for h in hooks for kind in ("sae", "zero")})
    n_batches = 0
    for start in tqdm(range(0, n_seqs, batch_size), desc="evaluate SAEs", disable=not progress):
        tokens = corpus_tokens(model.tokenizer, f"sae-eval/{seed}/{start}",
                               min(batch_size, n_seqs - start), seq_len).to(model.cfg.device)
        loss, cache = model.run_with_cache(tokens, return_type="loss", names_filter=hooks)
        ce_sums["clean"] += loss.item()
        for h in hooks:
            stats[h].update(cache[h][:, 1:], saes[h])
            for kind, fn in (("sae", _reconstruct(saes[h])), ("zero", _zero)):
                ce_sums[(h, kind)] += model.run_with_hooks(
                    tokens, return_type="loss", fwd_hooks=[(h, _replace_hook(fn))]).item()
        ce_sums["all_sae"] += model.run_with_hooks(
            tokens, return_type="loss",
            fwd_hooks=[(h, _replace_hook(_reconstruct(saes[h]))) for h in hooks]).item()
        ce_sums["all_zero"] += model.run_with_hooks(
            tokens, return_type="loss", fwd_hooks=[(h, _replace_hook(_zero)) for h in hooks]).item()
        n_batches += 1
    ce = {k: v / n_batches for k, v in ce_sums.items()}
    result = {}
    for h in hooks:
        result[h] = {**stats[h].result(),
                     "ce_recovered": _recovered(ce[(h, "zero")], ce[(h, "sae")], ce["clean"]),
                     "ce_sae": ce[(h, "sae")], "ce_zero": ce[(h, "zero")]}
    return {
        "saes": result,
        "all_spliced_ce_recovered": _recovered(ce["all_zero"], ce["all_sae"], ce["clean"]),
        "ce_clean": ce["clean"], "ce_all_spliced": ce["all_sae"], "ce_all_zero": ce["all_zero"],
    }


def format_table(result: dict) -> str:
    """The evaluation as an aligned text table."""
    lines = [f"{'hook':<28}{'L0':>7}{'FVU':>8}{'CE rec':>8}{'dead':>7}{'dense':>7}"]
    for hook, r in result["saes"].items():
        lines.append(f"{hook:<28}{r['l0']:>7.1f}{r['fvu']:>8.3f}{r['ce_recovered']:>8.3f}"
                     f"{r['dead_frac']:>7.3f}{r['dense_frac']:>7.3f}")
    lines.append(f"all SAEs spliced at once: CE recovered {result['all_spliced_ce_recovered']:.3f} "
                 f"(clean CE {result['ce_clean']:.3f}, spliced {result['ce_all_spliced']:.3f}, "
                 f"all zero-ablated {result['ce_all_zero']:.3f})")
    return "\n".join(lines)
