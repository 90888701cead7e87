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
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuits.core.config import Result
from circuits.core.errors import CircuitsError
from circuits.core.tables import markdown_table
from circuits.core.vocab import flat_act, on_flat
from sae.saeset import SAESet
from tasks.corpus import corpus_tokens

DENSE_THRESHOLD = 0.1


def _replace_hook(fn: Callable[[torch.Tensor], torch.Tensor]):
    """A TransformerLens hook that replaces every non-BOS position by ``fn(activation)``
    (attn.hook_z's heads concatenated, as SAEs read them)."""

    @on_flat
    def hook(act: torch.Tensor, hook) -> torch.Tensor:  # noqa: ARG001 (TL passes the HookPoint)
        out = act.clone()
        out[:, 1:] = fn(act[:, 1:])
        return out

    return hook


def _reconstruct(sae) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: sae.decode(sae.encode(x))


def _zero(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(x)


@dataclass
class SAEScore(Result):
    """One hook's SAE: L0, FVU, dead / dense fractions, CE loss recovered (and the CE losses
    with the reconstruction and with zeros in its place)."""

    l0: float
    fvu: float
    dead_frac: float
    dense_frac: float
    ce_recovered: float
    ce_sae: float
    ce_zero: float


@dataclass
class SAEEvaluation(Result):
    """``to_dict()`` is the JSON of ``circuits eval-saes --json``."""

    saes: dict[str, SAEScore]
    all_spliced_ce_recovered: float
    ce_clean: float
    ce_all_spliced: float
    ce_all_zero: float


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
def evaluate_saes(
    model: HookedTransformer,
    saes: SAESet,
    n_seqs: int = 512,
    seq_len: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> SAEEvaluation:
    """Per-hook `SAEScore`s and the all-spliced CE loss recovered on ``n_seqs`` held-out
    sequences of ``seq_len`` tokens (default: 64, or the model's context if shorter)."""
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
        tokens = corpus_tokens(
            model.tokenizer, f"sae-eval/{seed}/{start}", min(batch_size, n_seqs - start), seq_len
        ).to(model.cfg.device)
        loss, cache = model.run_with_cache(tokens, return_type="loss", names_filter=hooks)
        ce_sums["clean"] += loss.item()
        for h in hooks:
            stats[h].update(flat_act(cache[h])[:, 1:], saes[h])
            for kind, fn in (("sae", _reconstruct(saes[h])), ("zero", _zero)):
                ce_sums[(h, kind)] += model.run_with_hooks(
                    tokens, return_type="loss", fwd_hooks=[(h, _replace_hook(fn))]
                ).item()
        ce_sums["all_sae"] += model.run_with_hooks(
            tokens, return_type="loss", fwd_hooks=[(h, _replace_hook(_reconstruct(saes[h]))) for h in hooks]
        ).item()
        ce_sums["all_zero"] += model.run_with_hooks(
            tokens, return_type="loss", fwd_hooks=[(h, _replace_hook(_zero)) for h in hooks]
        ).item()
        n_batches += 1
    ce = {k: v / n_batches for k, v in ce_sums.items()}
    scores = {
        h: SAEScore(
            **stats[h].result(),
            ce_recovered=_recovered(ce[(h, "zero")], ce[(h, "sae")], ce["clean"]),
            ce_sae=ce[(h, "sae")],
            ce_zero=ce[(h, "zero")],
        )
        for h in hooks
    }
    return SAEEvaluation(
        scores,
        _recovered(ce["all_zero"], ce["all_sae"], ce["clean"]),
        ce_clean=ce["clean"],
        ce_all_spliced=ce["all_sae"],
        ce_all_zero=ce["all_zero"],
    )


@dataclass(frozen=True)
class QualityBar:
    """The bar the default SAE set meets on every training seed (docs/design.md, "SAE quality")."""

    # FVU up to 0.08: the width-256 / k-16 default reconstructs less (0.065 at its worst hook on
    # seed 0) than the old width-1,024 / k-32 one (<= 0.05) and buys a 2.6x smaller IOI circuit;
    # what the circuits need is held by CE recovered, per hook and all spliced.
    max_fvu: float = 0.08
    max_l0: float = 16.0
    max_dead_frac: float = 0.05
    min_ce_recovered: float = 0.95
    # ... or the reconstruction costs at most this many nats per token. CE recovered is a ratio
    # over what zeroing the hook costs, and blocks.3.hook_attn_out's zeroing costs 0.003 nats on
    # the embedded model: there 0.95 asks for <= 0.00014 nats, and seeds of one recipe
    # (FVU 0.018) land at 0.94-0.97. 0.001 nats is stricter than 0.95 at every other hook.
    max_ce_increase: float = 0.001
    min_all_spliced_ce_recovered: float = 0.90

    def failures(self, result: SAEEvaluation) -> list[str]:
        """One line per hook and measure that misses the bar (empty: the set passes)."""
        misses = [miss for hook, score in result.saes.items() for miss in self._misses(hook, score, result.ce_clean)]
        spliced = result.all_spliced_ce_recovered
        if spliced < self.min_all_spliced_ce_recovered:
            misses.append(f"all spliced: CE recovered {spliced:.4f}, needs >= {self.min_all_spliced_ce_recovered:g}")
        return misses

    def _misses(self, hook: str, score: SAEScore, ce_clean: float) -> list[str]:
        checks = (
            ("FVU", score.fvu, "<=", self.max_fvu),
            ("L0", score.l0, "<=", self.max_l0),
            ("dead", score.dead_frac, "<=", self.max_dead_frac),
        )
        misses = [
            f"{hook}: {name} {value:.4f}, needs {op} {bound:g}"
            for name, value, op, bound in checks
            if not (value <= bound if op == "<=" else value >= bound)
        ]
        increase = score.ce_sae - ce_clean
        if score.ce_recovered < self.min_ce_recovered and increase > self.max_ce_increase:
            misses.append(
                f"{hook}: CE recovered {score.ce_recovered:.4f}, needs >= {self.min_ce_recovered:g} "
                f"(or a CE increase <= {self.max_ce_increase:g} nats, not {increase:.4f})"
            )
        return misses


def format_table(result: SAEEvaluation) -> str:
    """The evaluation as a markdown table and a line for all SAEs spliced at once."""
    table = markdown_table(
        ["hook", "L0", "FVU", "CE rec", "dead", "dense"],
        [[hook, f"{r.l0:.1f}", r.fvu, r.ce_recovered, r.dead_frac, r.dense_frac] for hook, r in result.saes.items()],
    )
    return (
        f"{table}\n\nall SAEs spliced at once: CE recovered {result.all_spliced_ce_recovered:.3f} "
        f"(clean CE {result.ce_clean:.3f}, spliced {result.ce_all_spliced:.3f}, "
        f"all zero-ablated {result.ce_all_zero:.3f})"
    )
