"""Edge attribution: direct effects between SAE nodes of connected submodules.

The direct-effect layout (docs/design.md, "Edges") is ``Submodule.upstream``: into each
submodule, the nearest submodule before it on the residual stream (the embeddings if none)
and the attention / MLP outputs with an SAE that join the stream after that. For SFC's set
(attn, mlp, resid_post) that is resid_{L-1} -> {attn_L, mlp_L, resid_L}, attn_L -> {mlp_L,
resid_L}, mlp_L -> resid_L; for a residual-only set, resid -> resid through a whole block.
For an upstream node u and a downstream node d,

    edge(u -> d) = dm/dd . (dd/du along the direct path) . (u_p - u_c),

per example, then averaged. The model is run once from the residual-stream upstream's
activation to d's hook, with each upstream activation a leaf (attention and MLP outputs
replaced by their clean values, which cuts every indirect path); d's latents and error are
recomputed from its hook with gradient. The backward pass goes to the upstream
*activations* only; an upstream latent's edge follows from the decoder being affine:
d/df_i = W_dec[i] . d/da.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from circuits.attribution.nodes import (
    BatchRun,
    Method,
    batch_grads,
    encode_at,
    node_grads,
    prepare,
    run_batch,
    set_node,
)
from circuits.attribution.splice import spliced
from circuits.core.errors import CircuitsError
from circuits.core.parallel import all_reduce, batch_starts
from circuits.core.values import NodeValues, add_into, flat
from circuits.core.vocab import Node, Submodule, on_flat, resid_pre
from sae.saeset import SAESet
from tasks.task import Task


def upstream_hooks(hook: str, saes: SAESet, model: HookedTransformer) -> list[str]:
    """The hooks with a direct edge into ``hook`` in ``model`` (``Submodule.upstream``), the
    residual stream first."""
    return [s.hook for s in Submodule.parse(hook).upstream(saes, model.cfg.parallel_attn_mlp)]


@dataclass
class EdgesInto:
    """Edges into the chosen nodes of one downstream hook, mean over examples: ``weights[u]``
    holds, per upstream hook u, latents ``[n_targets, pos, d_sae_u]`` and error
    ``[n_targets, pos]`` (for the embeddings, the edge from the embedding vector)."""

    hook: str
    targets: list[Node]
    weights: dict[str, NodeValues]


def _width(saes: SAESet, hook: str) -> int:
    return saes[hook].cfg.d_sae if hook in saes else 0  # the embedding vector: no latents


def full_sources(saes: SAESet, hooks: list[str], n_pos: int) -> dict[str, NodeValues]:
    """Masks keeping every upstream node of ``hooks``."""
    return {
        u: NodeValues(torch.ones(n_pos, _width(saes, u), dtype=torch.bool), torch.ones(n_pos, dtype=torch.bool))
        for u in hooks
    }


def source_masks(nodes: list[Node], saes: SAESet, n_pos: int, hooks: list[str]) -> dict[str, NodeValues]:
    """Masks of the ``nodes`` that sit at ``hooks`` (the others are ignored); a node summed over
    positions sets every position."""
    masks = {h: m.complement() for h, m in full_sources(saes, hooks, n_pos).items()}
    for n in nodes:
        if n.hook not in masks:
            continue
        where = slice(None) if n.position is None else n.position
        if n.latent is None:
            masks[n.hook].error[where] = True
        else:
            masks[n.hook].latents[where, n.latent] = True
    return masks


def _check_targets(saes: SAESet, hook: str, targets: list[Node], n_pos: int) -> None:
    if not targets:
        raise CircuitsError(f"edges into {hook}: no target nodes given")
    for t in targets:
        if (
            t.hook != hook
            or t.position is None
            or not 0 <= t.position < n_pos
            or (t.latent is not None and not 0 <= t.latent < saes[hook].cfg.d_sae)
        ):
            raise CircuitsError(
                f"edges into {hook}: target {t.id} (position {t.position}, latent {t.latent}) is out of range"
            )


def edges_into(
    model: HookedTransformer,
    saes: SAESet,
    task: Task,
    hook: str,
    targets: list[Node],
    sources: dict[str, NodeValues] | None = None,
    batched: bool = True,
    batch_size: int = 32,
    chunk: int = 128,
    method: Method = "atp",
    steps: int = 10,
) -> EdgesInto:
    """Edge weights into each target node of ``hook`` from the upstream nodes.

    ``sources[u]`` masks (latents ``[pos, d_sae_u]``, error ``[pos]``) restrict the upstream
    nodes (e.g. to those of a pruned graph; the other entries stay 0); default: all. Examples
    are streamed in batches of ``batch_size``; per batch, dm/dd (on the clean run for
    ``atp``, averaged along d's IG path for ``ig`` — which is what makes edges into large
    nodes such as error terms agree with patching), then ``batch_edges``."""
    if method not in ("atp", "ig"):
        raise CircuitsError(f"unknown edge method {method!r}: use atp or ig")
    task = prepare(model, task)
    _check_targets(saes, hook, targets, task.n_pos)
    ups = upstream_hooks(hook, saes, model)
    sources = {**full_sources(saes, ups, task.n_pos), **(sources or {})}
    out = {u: NodeValues.zeros((len(targets), task.n_pos), _width(saes, u)) for u in ups}
    for lo in batch_starts(task.n_examples, batch_size):
        run = run_batch(model, saes, task.subset(slice(lo, lo + batch_size)), hooks=[u for u in ups if u in saes])
        grad = node_grads(saes, hook, batch_grads(model, saes, run, method, steps, hooks=[hook])[hook])
        add_into(out, batch_edges(model, saes, run, hook, targets, sources, grad, chunk if batched else 1))
    all_reduce(flat(out))
    return EdgesInto(hook, targets, {u: v / task.n_examples for u, v in out.items()})


def batch_edges(
    model: HookedTransformer,
    saes: SAESet,
    run: BatchRun,
    hook: str,
    targets: list[Node],
    sources: dict[str, NodeValues],
    grad: NodeValues,
    chunk: int = 128,
) -> dict[str, NodeValues]:
    """One batch's edges into ``targets`` (nodes of ``hook``), summed over its examples, from
    the kept ``sources`` of each upstream hook, given dm/dd (``grad``). The hook's block runs
    once on the batch's clean inputs, with one backward pass per ``chunk`` targets (vmapped).
    Where no attention between the upstream stream and ``hook`` is left computed (each one
    is a leaf), every position is computed alone, so the span runs on the targets' position
    only."""
    sub = Submodule.parse(hook)
    ups = upstream_hooks(hook, saes, model)
    n_pos = run.part.n_pos
    out = {u: NodeValues.zeros((len(targets), n_pos), _width(saes, u)) for u in ups}
    per_position = _per_position(sub, [Submodule.parse(u) for u in ups], model.cfg.parallel_attn_mlp)
    stream_in = _stream_in(run, ups)
    kept = {}  # the positions of each upstream hook's kept nodes
    for u in ups:
        positions = (sources[u].latents.any(-1) | sources[u].error).nonzero().flatten().tolist()
        if positions:
            kept[u] = positions
    for pos in sorted({t.position for t in targets}) if per_position else [None]:
        window = slice(pos, pos + 1) if per_position else slice(None)
        idx = [i for i, t in enumerate(targets) if pos is None or t.position == pos]
        local = [(t.position - (pos or 0), t.latent) for t in (targets[i] for i in idx)]
        acts = {u: run.acts[u][:, window] for u in ups}
        start = None if stream_in is None else stream_in[:, window]
        g = NodeValues(grad.latents[:, window], grad.error[:, window])
        for lo in range(0, len(idx), chunk):
            grads = _block_grads(model, saes, hook, ups, acts, start, g, local[lo : lo + chunk])
            rows = torch.tensor(idx[lo : lo + chunk])
            for u, gu in zip(ups, grads, strict=True):
                if u in kept:
                    delta = run.delta_at(saes, u, kept[u])
                    _accumulate(saes, u, gu, range(n_pos)[window], delta, sources[u], rows, out[u])
    return out


def _per_position(d: Submodule, ups: list[Submodule], parallel: bool) -> bool:
    """Whether ``d`` is computed from its upstream activations position by position: no
    block's attention between the stream upstream ``ups[0]`` and ``d`` is left computed
    (attention outputs with an SAE are leaves), and ``d`` is no attention itself."""
    if d.kind in ("attn", "z"):
        return False
    cut = {u.layer for u in ups[1:] if u.kind in ("attn", "z")}
    reads = d.stream(parallel)
    first = ups[0].stream(parallel)
    return all(not (first <= 2 * b < reads) or b in cut for b in range(ups[0].start_block, d.layer + 1))


def _stream_in(run: BatchRun, ups: list[str]) -> torch.Tensor | None:
    """The clean block input a span starts from when its first upstream hook is inside a block
    (resid_mid; hook_z, the one input of its attn_out), else None (the span starts at it)."""
    base = Submodule.parse(ups[0])
    return run.acts[resid_pre(base.start_block)] if base.kind in ("resid_mid", "z") else None


def run_span(
    model: HookedTransformer, hook: str, ups: list[str], values: dict[str, torch.Tensor], stream_in: torch.Tensor | None
) -> torch.Tensor:
    """``hook``'s activation (flat) computed from its upstream activations ``values`` alone:
    the model runs from ``ups[0]`` (the residual stream; with ``stream_in``, from that block
    input with ``ups[0]`` replaced too) to ``hook``'s block, every other upstream hook
    replaced by its value."""
    base = Submodule.parse(ups[0])
    inner = ups[1:] if stream_in is None else ups
    recorded: dict[str, torch.Tensor] = {}

    @on_flat
    def replace(x, hook):
        return values[hook.name]

    @on_flat
    def record(x, hook):
        recorded["x"] = x

    with model.hooks(fwd_hooks=[(u, replace) for u in inner] + [(hook, record)]):
        x_in = values[ups[0]] if stream_in is None else stream_in
        model(x_in, start_at_layer=base.start_block, stop_at_layer=Submodule.parse(hook).layer + 1)
    return recorded["x"]


def _block_grads(
    model,
    saes: SAESet,
    hook: str,
    ups: list[str],
    acts: dict[str, torch.Tensor],
    stream_in: torch.Tensor | None,
    grad: NodeValues,
    targets: list[tuple[int, int | None]],
) -> list[torch.Tensor]:
    """Gradients of sum_b dm/dd[b] * d[b], for each target d, with respect to each upstream
    activation (``[T, batch, window, width]`` per upstream hook): the span from the stream
    upstream to ``hook`` is run with every upstream activation a leaf, which cuts every
    indirect path."""
    leaves = {u: a.detach().clone().requires_grad_(True) for u, a in acts.items()}
    x = run_span(model, hook, ups, leaves, None if stream_in is None else stream_in.detach())
    cotangent = _hook_cotangents(saes[hook], x.detach(), grad, targets)
    inputs = [leaves[u] for u in ups]
    if len(targets) == 1:
        grads = torch.autograd.grad(x, inputs, cotangent[0], allow_unused=True)
        grads = [None if g is None else g.unsqueeze(0) for g in grads]
    else:
        grads = torch.autograd.grad(x, inputs, cotangent, is_grads_batched=True, allow_unused=True)
    return [
        torch.zeros(len(targets), *a.shape, dtype=a.dtype, device=a.device) if g is None else g
        for g, a in zip(grads, inputs, strict=False)
    ]


def _accumulate(
    saes: SAESet,
    u: str,
    g: torch.Tensor,
    positions: range,
    delta: NodeValues,
    source: NodeValues,
    rows: torch.Tensor,
    out: NodeValues,
) -> None:
    """Edges from the kept nodes of ``u`` at ``positions``: latent i at position q gets
    sum_b (W_dec[i] . g[t, b, q]) * delta_f[b, q, i] (the decoder is affine), the error
    sum_b g[t, b, q] . delta_e[b, q]."""
    for j, q in enumerate(positions):
        g_q = g[:, :, j]  # [T, batch, d_model]
        if source.error[q]:
            out.error[rows, q] += torch.einsum("tbd,bd->t", g_q, delta.error[:, q]).detach().float().cpu()
        keep = source.latents[q].nonzero().flatten()
        if len(keep):
            on = keep.to(g_q.device)
            w = saes[u].W_dec.detach()[on]  # [k, d_model]
            vals = ((g_q @ w.T) * delta.latents[:, q, on]).sum(1)  # [T, k]
            out.latents[rows.unsqueeze(1), q, keep.unsqueeze(0)] += vals.detach().float().cpu()


def _hook_cotangents(sae, x: torch.Tensor, grad: NodeValues, targets: list[tuple[int, int | None]]) -> torch.Tensor:
    """For each target d at position p, the gradient of sum_b dm/dd[b] * d[b] with respect to
    the hook's activation ``x``: ``[T, batch, pos, d_model]``, non-zero at p only.

    The SAE acts on each position alone, so its backward pass runs on ``x[:, p]`` for the
    targets at p (a vmapped backward through the encoder on dense ``[batch, pos, d_sae]``
    cotangents would cost pos times more)."""
    out = torch.zeros(len(targets), *x.shape, dtype=x.dtype, device=x.device)
    for pos in sorted({p for p, _ in targets}):
        idx = [t for t, (p, _) in enumerate(targets) if p == pos]
        xp = x[:, pos].clone().requires_grad_(True)
        f = sae.encode(xp)
        e = xp - sae.decode(f)
        ct_f = torch.zeros(len(idx), *f.shape, dtype=f.dtype, device=f.device)
        ct_e = torch.zeros(len(idx), *e.shape, dtype=e.dtype, device=e.device)
        for j, t in enumerate(idx):
            latent = targets[t][1]
            if latent is None:
                ct_e[j] = grad.error[:, pos]
            else:
                ct_f[j, :, latent] = grad.latents[:, pos, latent]
        (g,) = torch.autograd.grad([f, e], [xp], [ct_f, ct_e], is_grads_batched=True)
        out[idx, :, pos] = g
    return out


@torch.no_grad()
def exact_edge_effects(
    model: HookedTransformer, saes: SAESet, task: Task, edges: list[tuple[Node, Node]]
) -> torch.Tensor:
    """Exact two-node patching, mean over examples, for each edge (u, d): patch u to its
    corrupt value along the direct path only (the other upstream nodes of d's block held
    clean), recompute d, put that value of d into an otherwise clean run, and measure
    m - m(clean). The attribution ``edges_into`` is its first-order approximation."""
    task = prepare(model, task)
    run = run_batch(model, saes, task)
    base = run.clean_metric.mean()
    out = []
    for u, d in edges:
        ups = upstream_hooks(d.hook, saes, model)
        if u.hook not in ups:
            raise CircuitsError(f"no direct edge from {u.hook} into {d.hook}")
        acts = {v: run.acts[v].clone() for v in ups}
        q, change = u.position, run.delta_at(saes, u.hook, [u.position])
        if u.latent is None:
            acts[u.hook][:, q] += change.error[:, q]
        else:
            acts[u.hook][:, q] += change.latents[:, q, u.latent].unsqueeze(-1) * saes[u.hook].W_dec[u.latent]
        new = encode_at(saes, d.hook, run_span(model, d.hook, ups, acts, _stream_in(run, ups)))
        edit = lambda v, d=d, new=new: set_node(v, d, new)  # noqa: E731
        with spliced(model, saes, hooks=[d.hook], edits={d.hook: edit}):
            out.append(task.metric_per_example(model(task.clean)).mean() - base)
    return torch.stack(out).cpu()
