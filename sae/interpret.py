"""Latent interpretability measured against the toy language's ground truth.

Each latent of an SAE set is matched to the concept (``tasks.concepts``: a boolean per token,
from what the generator made the text from) that best predicts where it is active, on
held-out corpus text the SAEs were not trained on (BOS positions left out):

    precision = |active & concept| / |active|,  recall = |active & concept| / |concept|,
    match = F1 = 2 |active & concept| / (|active| + |concept|).

F1 of "latent active" (its activation is non-zero) rather than AUROC of its activation: the
latents of TopK / JumpReLU SAEs are exactly zero on most tokens, so AUROC ties them there and
a latent that fires on a tenth of a concept and nowhere else still scores ~0.55; F1 is 1.0
only for a latent active exactly where a concept holds, and low when it misses most of the
concept (recall) or fires outside it (precision). A latent is **matched** when its best F1
is at least ``MATCH`` (0.8). Per SAE set: the share of alive latents that are matched; per
circuit (``matched_share``): the share of its latents' |effect| in matched latents.

Cost: one forward pass over the text, one encode per SAE, and one sparse product per hook
(concepts x tokens by tokens x latents), so it runs on every set of a sweep (``seconds``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuits.core.config import Result
from circuits.core.tables import markdown_table
from circuits.core.vocab import flat_act
from sae.saeset import SAESet
from tasks.concepts import Concepts, labelled_corpus

MATCH = 0.8  # a latent whose best concept F1 reaches this is "matched"


@dataclass
class LatentMatches:
    """One SAE's latents, each with its best concept on the text (``""`` where never active)
    and that concept's F1, precision and recall; ``n_active``: positions where it fired."""

    concept: list[str]
    f1: torch.Tensor
    precision: torch.Tensor
    recall: torch.Tensor
    n_active: torch.Tensor

    @property
    def alive(self) -> torch.Tensor:
        return self.n_active > 0

    def matched(self, threshold: float = MATCH) -> torch.Tensor:
        """``[d_sae]`` bool: latents whose best concept F1 reaches ``threshold``."""
        return self.alive & (self.f1 >= threshold)

    def matched_fraction(self, threshold: float = MATCH) -> float:
        """The share of alive latents that are matched."""
        alive = int(self.alive.sum())
        return int(self.matched(threshold).sum()) / alive if alive else 0.0


@dataclass
class Interpretability(Result):
    """An SAE set's latents matched to concepts on ``n_tokens`` held-out tokens."""

    hooks: dict[str, LatentMatches]
    n_tokens: int
    n_concepts: int
    seconds: float
    threshold: float = MATCH

    def matched_fraction(self) -> float:
        """Over the whole set: matched latents / alive latents."""
        alive = sum(int(m.alive.sum()) for m in self.hooks.values())
        matched = sum(int(m.matched(self.threshold).sum()) for m in self.hooks.values())
        return matched / alive if alive else 0.0

    def is_matched(self, hook: str, latent: int) -> bool:
        m = self.hooks.get(hook)
        return m is not None and bool(m.matched(self.threshold)[latent])

    def concept_of(self, hook: str, latent: int) -> tuple[str, float]:
        """A latent's best concept and its F1."""
        m = self.hooks[hook]
        return m.concept[latent], float(m.f1[latent])

    def to_dict(self) -> dict:
        return {
            "threshold": self.threshold,
            "n_tokens": self.n_tokens,
            "n_concepts": self.n_concepts,
            "seconds": self.seconds,
            "matched_fraction": self.matched_fraction(),
            "hooks": {
                h: {
                    "matched_fraction": m.matched_fraction(self.threshold),
                    "alive": int(m.alive.sum()),
                    "concept": m.concept,
                    "f1": [round(float(x), 4) for x in m.f1],
                }
                for h, m in self.hooks.items()
            },
        }


def match_latents(active: torch.Tensor, concepts: Concepts) -> LatentMatches:
    """Each latent's best concept by F1: ``active`` is ``[n_tokens, d_sae]`` (bool or 0/1,
    dense or sparse COO) over the same positions as ``concepts``."""
    a = (active.coalesce() if active.is_sparse else active.to_sparse()).float()
    n_active = torch.sparse.sum(a, dim=0).to_dense() if a._nnz() else torch.zeros(a.shape[1])
    with warnings.catch_warnings():  # sparse x sparse goes through CSR, which torch calls beta
        warnings.simplefilter("ignore", UserWarning)
        both = torch.sparse.mm(concepts.matrix, a).to_dense()  # [n_concepts, d_sae]
    n_concept = concepts.counts.float()
    f1 = 2 * both / (n_concept[:, None] + n_active[None, :]).clamp(min=1)
    if not concepts.names:
        zeros = torch.zeros(a.shape[1])
        return LatentMatches([""] * a.shape[1], zeros, zeros, zeros, n_active)
    best_f1, best = f1.max(0)
    hits = both.gather(0, best[None]).squeeze(0)
    precision = hits / n_active.clamp(min=1)
    recall = hits / n_concept[best].clamp(min=1)
    names = [concepts.names[j] if n > 0 else "" for j, n in zip(best.tolist(), n_active.tolist(), strict=True)]
    return LatentMatches(names, best_f1, precision, recall, n_active)


@torch.no_grad()
def interpretability(
    model: HookedTransformer,
    saes: SAESet,
    n_seqs: int = 256,
    seq_len: int = 64,
    key: str = "concepts/held-out",
    min_count: int = 5,
    threshold: float = MATCH,
    batch_size: int = 64,
    progress: bool = True,
) -> Interpretability:
    """Every latent of ``saes`` matched to the concepts of ``n_seqs`` held-out corpus
    sequences (``labelled_corpus(key)``; the SAEs train on other keys)."""
    start = time.perf_counter()
    seq_len = min(seq_len, model.cfg.n_ctx)
    tokens, labels = labelled_corpus(model.tokenizer, key, n_seqs, seq_len)
    keep = torch.ones(tokens.shape, dtype=torch.bool)
    keep[:, 0] = False  # BOS: the SAEs are not trained on it
    concepts = Concepts.of([lab for lab, k in zip(labels, keep.flatten().tolist(), strict=True) if k], min_count)
    active = active_latents(model, saes, tokens, batch_size, progress)
    matches = {h: match_latents(a, concepts) for h, a in active.items()}
    return Interpretability(matches, concepts.n_tokens, len(concepts.names), time.perf_counter() - start, threshold)


@torch.no_grad()
def active_latents(
    model: HookedTransformer, saes: SAESet, tokens: torch.Tensor, batch_size: int = 64, progress: bool = False
) -> dict[str, torch.Tensor]:
    """Per hook, where each latent is active on ``tokens`` ``[n_seqs, seq_len]`` (BOS left
    out): a sparse COO ``[n_seqs * (seq_len - 1), d_sae]`` of ones, row-major by sequence."""
    hooks = list(saes)
    rows: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}  # active (token, latent) pairs
    done = 0
    for lo in tqdm(range(0, tokens.shape[0], batch_size), desc="latent activity", disable=not progress):
        batch = tokens[lo : lo + batch_size].to(model.cfg.device)
        _, cache = model.run_with_cache(batch, names_filter=hooks)
        for h in hooks:
            f = saes[h].encode(flat_act(cache[h])[:, 1:].float()).flatten(0, 1)
            nz = (f != 0).nonzero().cpu()
            nz[:, 0] += done
            rows[h].append(nz)
        done += batch.shape[0] * (tokens.shape[1] - 1)
    out = {}
    for h in hooks:
        index = torch.cat(rows[h]).T if rows[h] else torch.zeros(2, 0, dtype=torch.long)
        ones = torch.ones(index.shape[1])
        out[h] = torch.sparse_coo_tensor(index, ones, (done, saes[h].cfg.d_sae), check_invariants=False)
    return out


def format_matches(interp: Interpretability, top: int = 3) -> str:
    """Per hook: alive latents, the share matched, and the best-matched concepts."""
    rows = []
    for hook, m in interp.hooks.items():
        best = torch.argsort(m.f1, descending=True)[:top].tolist()
        rows.append(
            [hook, int(m.alive.sum()), f"{m.matched_fraction(interp.threshold):.3f}"]
            + ["; ".join(f"{m.concept[i]} ({float(m.f1[i]):.2f})" for i in best)]
        )
    table = markdown_table(["hook", "alive", f"matched (F1 >= {interp.threshold:g})", "best matches"], rows)
    return (
        f"{table}\n\nlatents matched to a concept: {interp.matched_fraction():.3f} of the alive ones "
        f"({interp.n_concepts} concepts on {interp.n_tokens} held-out tokens, {interp.seconds:.1f} s)"
    )


@dataclass
class LatentConcept:
    """One circuit latent (``node``: its id) with its effect and best concept on the text."""

    node: str
    effect: float
    concept: str
    f1: float
    precision: float
    recall: float


@dataclass
class Readability(Result):
    """How readable a circuit is against ground truth: the shares of its |effect| in latents
    matched to a concept (F1 >= ``threshold``), in other latents and in error terms; its
    strongest latents with their best concepts; the whole set's matched fraction."""

    matched: float
    unmatched: float
    error: float
    threshold: float
    set_matched: float
    strongest: list[LatentConcept]


def readability(
    nodes: Iterable[tuple[str, str, int | None, float]], interp: Interpretability, top: int = 12
) -> Readability:
    """The `Readability` of a circuit's nodes ``(id, hook, latent or None for an error
    term, effect)``, listing its ``top`` latents by |effect|."""
    nodes = list(nodes)
    share = matched_share([n[1:] for n in nodes], interp)
    latents = sorted((n for n in nodes if n[2] is not None), key=lambda n: -abs(n[3]))[:top]
    strongest = []
    for node, hook, latent, effect in latents:
        m = interp.hooks[hook]
        scores = (float(m.f1[latent]), float(m.precision[latent]), float(m.recall[latent]))
        strongest.append(LatentConcept(node, effect, m.concept[latent], *scores))
    return Readability(
        share["matched"], share["unmatched"], share["error"], interp.threshold, interp.matched_fraction(), strongest
    )


def matched_share(nodes: Iterable[tuple[str, int | None, float]], interp: Interpretability) -> dict[str, float]:
    """Of a circuit's nodes ``(hook, latent or None for an error term, effect)``: the share
    of the total |effect| in matched latents, in unmatched latents and in error terms."""
    out = {"matched": 0.0, "unmatched": 0.0, "error": 0.0}
    for hook, latent, effect in nodes:
        part = "error" if latent is None else ("matched" if interp.is_matched(hook, latent) else "unmatched")
        out[part] += abs(effect)
    total = sum(out.values())
    return {k: v / total if total else 0.0 for k, v in out.items()}
