"""An ablation-aware optimiser: a learned mask over the nodes of some sites.

Attribution ranks nodes by a first-order estimate of each one's effect alone; a circuit is a
set, and the embedded model computes densely, so many small effects add up and redundant
nodes hide each other. The optimiser instead trains one logit per candidate node (every
latent and the error term of each site) against the metric of the ablated forward pass
itself: keep = 1[logit > 0] forward, d keep / d logit = sigmoid'(logit) backward (straight-
through), loss max(0, aim - F)^2 + sparsity x (mean of sigmoid(logit)), Adam, each step
over a random minibatch of the prompts (``MaskConfig.batch_size``; None: all of them, in
passes of ``MASK_TOKENS_PER_PASS`` tokens whose gradients add up to the full batch's).
The sparsity weight ramps up from 0 over the steps (a regularisation path: nodes drop out
least-needed first), and the ranking is by final logit (ties broken by attribution).
Everything outside the sites is ablated throughout, exactly as in evaluation
(``ablation.ablation_hook``), so what the mask learns is what faithfulness measures. It sees
only the prompts it is given — the discovery prompts — never the held-out ones; the ranking
is cut to a size by ablation on held-out prompts (``circuits.circuit.hierarchy``).

Measured on the embedded model (128 discovery pairs, held-out cut at F 0.9, mean ablation):
a constant sparsity of 0.05–2 or the ramp give IOI 989–1,038 nodes and SVA 330–347, the ramp
among the best on both; a per-example loss (each example's metric matched) was worse on IOI
(1,166). The mask keeps fewer nodes than the held-out cut needs (IOI ~600–800 at train F ~0.9–1):
the gap is generalisation to new prompts, not optimisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuits.circuit.ablation import Ablator, ablation_hook
from circuits.circuit.config import MaskConfig
from circuits.core.values import NodeValues
from circuits.core.vocab import Site
from sae.saeset import SAESet

# Token rows per forward and backward pass of the mask (prompt pairs x positions): a step over
# more prompts runs in passes of this many and sums their gradients (the loss's gradient is
# a fixed multiple of the summed metric's), so memory does not grow with the prompts.
MASK_TOKENS_PER_PASS = 5_000


@dataclass
class MaskResult:
    """Per site, one logit per node: latents then the error term (``[d_sae + 1]``); larger
    is more needed. ``history`` holds (step, F on the training prompts, nodes kept)."""

    logits: dict[Site, torch.Tensor]
    history: list[tuple[int, float, int]]


def initial_logits(scores: dict[Site, torch.Tensor], n_on: int, spread: float = 3.0) -> dict[Site, torch.Tensor]:
    """Logits from attribution scores (|effect| per node, ``[d_sae + 1]`` per site): log-
    scaled so the ``n_on`` largest start positive, clamped to +-``spread``; nodes with no
    effect start at -``spread``."""
    flat = torch.cat([s.abs().flatten() for s in scores.values()])
    k = min(n_on, int((flat > 0).sum()))
    if k == 0:
        return {site: torch.full_like(s, -spread) for site, s in scores.items()}
    cut = flat.topk(k).values[-1].clamp(min=1e-30)
    out = {}
    for site, s in scores.items():
        a = s.abs()
        z = torch.where(a > 0, (a.clamp(min=1e-30) / cut).log() + 0.5, torch.full_like(a, -math.inf))
        out[site] = z.clamp(-spread, spread)
    return out


def optimise_mask(
    model: HookedTransformer,
    saes: SAESet,
    ab: Ablator,
    sites: list[Site],
    init: dict[Site, torch.Tensor],
    cfg: MaskConfig | None = None,
    progress: bool = True,
    desc: str = "mask",
) -> MaskResult:
    """Train the mask over every node of ``sites`` on ``ab``'s prompts and convention (the
    discovery prompts), starting from ``init`` (``initial_logits``). A site whose initial
    logits are one number (``[1]``) is kept or ablated whole: a mask over sites."""
    cfg = cfg or MaskConfig()
    task, n_pos = ab.task, ab.n_pos
    logits = {s: init[s].detach().clone().float().requires_grad_(True) for s in sites}
    by_hook: dict[str, list[Site]] = {}
    for s in sites:
        by_hook.setdefault(s.hook, []).append(s)
    n_nodes = sum(t.numel() for t in logits.values())
    opt = torch.optim.Adam(list(logits.values()), lr=cfg.lr)
    history: list[tuple[int, float, int]] = []
    denom = ab.ref.m_model - ab.ref.m_empty
    rng = torch.Generator().manual_seed(cfg.seed)
    n = task.n_examples
    per_pass = max(1, MASK_TOKENS_PER_PASS // max(1, n_pos))
    # where a step is one pass, every row's references are held and indexed per step (per
    # example: counterfactual, resample); otherwise each pass computes its rows' own
    held = ab.references() if min(n, cfg.batch_size or n) <= per_pass else None

    def hooks(keep: dict[Site, torch.Tensor], rows: torch.Tensor | None) -> list:
        """The ablation hooks of a forward pass over ``rows`` of the prompts (None: all)."""
        values, acts = held if held is not None else ab.references(rows)
        index = rows if held is not None else None
        return [
            (h, _hook(saes[h], *_rows(values[h], acts[h], index), n_pos, by_hook.get(h, []), keep))
            for h in saes
            if ab.ablatable(h)
        ]

    for step in tqdm(range(cfg.steps), desc=desc, disable=not progress):
        idx = (
            None
            if cfg.batch_size is None or cfg.batch_size >= n
            else torch.randperm(n, generator=rng)[: cfg.batch_size]
        )
        keep = {s: _straight_through(t).expand(saes[s.hook].cfg.d_sae + 1) for s, t in logits.items()}
        density = torch.cat([torch.sigmoid(t) for t in logits.values()]).sum() / n_nodes
        weight = cfg.sparsity * (step / max(cfg.steps - 1, 1) if cfg.schedule == "ramp" else 1.0)
        opt.zero_grad()
        rows = torch.arange(n) if idx is None else idx
        if len(rows) <= per_pass:  # one forward and backward pass over the step's prompts
            batch = task if idx is None else task.subset(idx)
            m = batch.metric_per_example(model.run_with_hooks(batch.clean, fwd_hooks=hooks(keep, idx))).mean()
            f = (m - ab.ref.m_empty) / denom
            loss = (cfg.aim - f).clamp(min=0) ** 2 + weight * density
            loss.backward()
            f = float(f.detach())
        else:  # the same gradient, one pass of rows at a time: dF/dkeep summed over passes, then scaled
            leaves = {s: k.detach().requires_grad_(True) for s, k in keep.items()}
            total = torch.zeros((), dtype=torch.float64)
            for lo in range(0, len(rows), per_pass):
                part = rows[lo : lo + per_pass]
                batch = task.subset(part)
                m = batch.metric_per_example(model.run_with_hooks(batch.clean, fwd_hooks=hooks(leaves, part)))
                m.sum().backward()
                total += m.detach().double().sum().cpu()
            f = (total.item() / len(rows) - ab.ref.m_empty) / denom
            scale = -2 * max(cfg.aim - f, 0.0) / (denom * len(rows))  # d loss / d (sum of the metrics)
            grads = [
                scale * (leaves[s].grad if leaves[s].grad is not None else torch.zeros_like(k)) for s, k in keep.items()
            ]
            torch.autograd.backward([*keep.values(), weight * density], [*grads, torch.ones(())])
        opt.step()
        if step % 25 == 0 or step == cfg.steps - 1:
            history.append((step, f, int(sum((t > 0).sum() for t in logits.values()))))
    return MaskResult({s: t.detach() for s, t in logits.items()}, history)


def _rows(ref: NodeValues, act: torch.Tensor, idx: torch.Tensor | None) -> tuple[NodeValues, torch.Tensor]:
    """A batch's rows of per-example reference values (``[batch, pos, ...]``); per-position
    ones (``[pos, ...]``) are shared by every example."""
    if idx is None or act.dim() == 2:
        return ref, act
    return ref.map(lambda t: t[idx]), act[idx]


def _straight_through(logit: torch.Tensor) -> torch.Tensor:
    """1[logit > 0] forward, sigmoid's gradient backward."""
    soft = torch.sigmoid(logit)
    return (logit > 0).float() + soft - soft.detach()


def _hook(sae, ref: NodeValues, ref_act: torch.Tensor, n_pos: int, sites: list[Site], keep: dict[Site, torch.Tensor]):
    """The ablation hook of one submodule: its sites mixed by the learned keep values, every
    other position fully ablated. A site at every position (``None``) shares one mask."""
    full = torch.ones(n_pos, dtype=torch.bool)
    mixed = torch.zeros(n_pos, dtype=torch.bool)
    rows_l, rows_e = [], []
    everywhere = [s for s in sites if s.position is None]
    if everywhere:
        full[:] = False
        mixed[:] = True
        k = keep[everywhere[0]]
        rows_l, rows_e = [k[:-1].expand(n_pos, -1)], [k[-1:].expand(n_pos)]
    else:
        for s in sorted(sites, key=lambda s: s.position):
            full[s.position], mixed[s.position] = False, True
            rows_l.append(keep[s][:-1].unsqueeze(0))
            rows_e.append(keep[s][-1:])
    if not rows_l:
        return ablation_hook(sae, ref, ref_act, full, mixed, None)
    return ablation_hook(sae, ref, ref_act, full, mixed, NodeValues(torch.cat(rows_l), torch.cat(rows_e)))
