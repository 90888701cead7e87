"""Edge attribution: direct effects between SAE nodes of connected submodules.

Submodules of layer L are attn_L, mlp_L and resid_L (hook_resid_post); the direct-effect
edges (SFC's scheme, shared DESIGN.md section 4) are resid_{L-1} -> {attn_L, mlp_L, resid_L},
attn_L -> {mlp_L, resid_L}, mlp_L -> resid_L, with the embeddings (blocks.0.hook_resid_pre)
as resid_{-1}. For an upstream node u and a downstream node d,

    edge(u -> d) = dm/dd . (dd/du along the direct path) . (u_p - u_c),

per example, then averaged. Block L alone is run once, from its input, with each upstream
activation a leaf (attn_L and mlp_L outputs replaced by their clean values, which cuts every
indirect path); d's latents and error are recomputed from its hook with gradient. The
backward pass goes to the upstream *activations* only; an upstream latent's edge follows
from the decoder being affine: d/df_i = W_dec[i] . d/da.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from circuits.attribution import EMBED, ig_grads, metric_grads, prepare, set_node
from circuits.errors import CircuitsError
from circuits.parallel import all_reduce, batch_starts
from circuits.splice import spliced
from sae.saeset import SAESet
from tasks.task import Task

KINDS = ("hook_attn_out", "hook_mlp_out", "hook_resid_post")
Target = tuple[int, "int | None"]  # (position, latent) - latent None: the error node


def parse_hook(hook: str) -> tuple[int, str]:
    """(layer, kind) of an edge-graph hook such as ``blocks.2.hook_mlp_out``."""
    parts = hook.split(".")
    if len(parts) != 3 or parts[0] != "blocks" or not parts[1].isdigit() or parts[2] not in KINDS:
        raise CircuitsError(f"hook {hook!r}: edges are defined between attn_out, mlp_out and resid_post hooks")
    return int(parts[1]), parts[2]


def upstream_hooks(hook: str, saes: SAESet) -> list[str]:
    """The submodules with a direct edge into ``hook``, residual stream first (embeddings for
    layer 0). attn_L / mlp_L without an SAE are left out: the paths through them then count
    as direct from the residual stream."""
    layer, kind = parse_hook(hook)
    resid_before = EMBED if layer == 0 else f"blocks.{layer - 1}.hook_resid_post"
    if resid_before != EMBED and resid_before not in saes:
        raise CircuitsError(f"edges into {hook} need an SAE at {resid_before} (the set lacks it)")
    inner = {"hook_attn_out": [], "hook_mlp_out": ["attn"], "hook_resid_post": ["attn", "mlp"]}[kind]
    return [resid_before] + [h for h in (f"blocks.{layer}.hook_{k}_out" for k in inner) if h in saes]


@dataclass
class EdgesInto:
    """Edges into the chosen nodes of one downstream hook, mean over examples.

    ``targets`` lists the downstream nodes as (position, latent or None for the error);
    ``latents[u]`` is ``[n_targets, pos, d_sae_u]`` and ``errors[u]`` is ``[n_targets, pos]``
    (for the embeddings, ``errors[EMBED]`` holds the edge from the embedding vector)."""

    hook: str
    targets: list[Target]
    latents: dict[str, torch.Tensor]
    errors: dict[str, torch.Tensor]


def _encode_nodes(saes: SAESet, hook: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        if hook == EMBED:
            return torch.zeros(*x.shape[:-1], 0), x.clone()
        f = saes[hook].encode(x)
        return f, x - saes[hook].decode(f)


def edges_into(model: HookedTransformer, saes: SAESet, task: Task, hook: str,
               targets: list[Target], sources: dict[str, Sources] | None = None,
               batched: bool = True, batch_size: int = 32, chunk: int = 128,
               method: str = "atp", steps: int = 10) -> EdgesInto:
    """Edge weights into each target node of ``hook`` from the upstream nodes.

    ``sources[u] = (latent_mask [pos, d_sae_u], error_mask [pos])`` restricts the upstream
    nodes (e.g. to those of a pruned graph; the other entries stay 0); default: all.
    Examples are streamed in batches of ``batch_size``. Per batch: the clean-run metric
    gradient, then the hook's block run once on its clean inputs and one backward pass per
    ``chunk`` targets (vmapped; ``batched=False``: one backward pass per target). For mlp_out
    and resid_post, which act on each position alone, the block runs on the targets'
    position only. ``method`` sets dm/dd: its value on the clean run (``atp``) or its mean
    along d's IG path (``ig``: d's hook interpolated from clean to corrupt, ``steps`` points),
    which is what makes edges into large nodes (error terms) agree with patching."""
    if method not in ("atp", "ig"):
        raise CircuitsError(f"unknown edge method {method!r}: use atp or ig")
    if not targets:
        raise CircuitsError(f"edges into {hook}: no target nodes given")
    task = prepare(model, task)
    ups = upstream_hooks(hook, saes)
    for pos, latent in targets:
        if not 0 <= pos < task.n_pos or (latent is not None and not 0 <= latent < saes[hook].cfg.d_sae):
            raise CircuitsError(f"edges into {hook}: target (position {pos}, latent {latent}) is out of range")
    sources = {u: _full_sources(saes, u, task.n_pos) if sources is None or u not in sources else sources[u]
               for u in ups}
    out_f = {u: torch.zeros(len(targets), task.n_pos, saes[u].cfg.d_sae) for u in ups if u != EMBED}
    out_e = {u: torch.zeros(len(targets), task.n_pos) for u in ups}
    for lo in batch_starts(task.n_examples, batch_size):
        part = task.subset(slice(lo, lo + batch_size))
        if method == "ig":
            grads = ig_grads(model, saes, part, hook, steps)
        else:
            (g_f,), (g_e,) = metric_grads(model, saes, part, [hook])
            grads = (g_f, g_e)
        _add_batch(model, saes, part, hook, ups, targets, sources, grads, batched, chunk, out_f, out_e)
    all_reduce([*out_f.values(), *out_e.values()])
    n = task.n_examples
    return EdgesInto(hook, targets, {u: v / n for u, v in out_f.items()}, {u: v / n for u, v in out_e.items()})


Sources = tuple["torch.Tensor | None", torch.Tensor]


def _full_sources(saes: SAESet, hook: str, n_pos: int) -> Sources:
    latents = None if hook == EMBED else torch.ones(n_pos, saes[hook].cfg.d_sae, dtype=torch.bool)
    return latents, torch.ones(n_pos, dtype=torch.bool)


def _add_batch(model, saes, part: Task, hook: str, ups: list[str], targets: list[Target],
               sources: dict[str, Sources], grads: tuple[torch.Tensor, torch.Tensor], batched: bool,
               chunk: int, out_f, out_e) -> None:
    """Add one batch's edges, summed over its examples, to ``out_f`` / ``out_e``."""
    layer, kind = parse_hook(hook)
    with torch.no_grad():
        _, cache_c = model.run_with_cache(part.clean, names_filter=ups, stop_at_layer=layer + 1)
        _, cache_p = model.run_with_cache(part.corrupt, names_filter=ups, stop_at_layer=layer + 1)
    grad_f, grad_e = grads
    deltas = {}
    for u in ups:
        (f_c, e_c), (f_p, e_p) = _encode_nodes(saes, u, cache_c[u]), _encode_nodes(saes, u, cache_p[u])
        deltas[u] = (f_p - f_c, e_p - e_c)
    # attention mixes positions; mlp_out and resid_post do not, once attn_L is a leaf
    per_position = kind != "hook_attn_out" and f"blocks.{layer}.hook_attn_out" in ups
    groups = sorted({p for p, _ in targets}) if per_position else [None]
    for pos in groups:
        window = slice(pos, pos + 1) if per_position else slice(None)
        idx = [t for t, (p, _) in enumerate(targets) if pos is None or p == pos]
        local = [(p - (pos or 0), latent) for p, latent in (targets[t] for t in idx)]
        acts = {u: cache_c[u][:, window] for u in ups}
        step = chunk if batched else 1
        for lo in range(0, len(idx), step):
            grads = _block_grads(model, saes, hook, layer, ups, acts, grad_f[:, window], grad_e[:, window],
                                 local[lo:lo + step])
            rows = idx[lo:lo + step]
            positions = range(part.n_pos)[window]
            for u, g in zip(ups, grads):
                _accumulate(saes, u, g, positions, deltas[u], sources[u], rows, out_f, out_e)


def _block_grads(model, saes, hook: str, layer: int, ups: list[str], acts: dict[str, torch.Tensor],
                 grad_f: torch.Tensor, grad_e: torch.Tensor, targets: list[Target]) -> list[torch.Tensor]:
    """Gradients of sum_b dm/dd[b] * d[b], for each target d, with respect to each upstream
    activation (``[T, batch, window, d_model]`` per upstream hook): the block is run from its
    input with attn_L / mlp_L outputs replaced by leaves, which cuts every indirect path."""
    leaves = {u: a.detach().clone().requires_grad_(True) for u, a in acts.items()}
    recorded: dict[str, torch.Tensor] = {}

    def replace_with_leaf(x, hook):
        return leaves[hook.name]

    def record(x, hook):
        recorded["x"] = x
        return x

    inner = [u for u in ups if u.startswith(f"blocks.{layer}.")]
    with model.hooks(fwd_hooks=[(u, replace_with_leaf) for u in inner] + [(hook, record)]):
        model(leaves[ups[0]], start_at_layer=layer, stop_at_layer=layer + 1)
    x = recorded["x"]
    cotangent = _hook_cotangents(saes[hook], x.detach(), grad_f, grad_e, targets)
    inputs = [leaves[u] for u in ups]
    if len(targets) == 1:
        grads = torch.autograd.grad(x, inputs, cotangent[0], allow_unused=True)
        grads = [None if g is None else g.unsqueeze(0) for g in grads]
    else:
        grads = torch.autograd.grad(x, inputs, cotangent, is_grads_batched=True, allow_unused=True)
    return [torch.zeros(len(targets), *a.shape, dtype=a.dtype, device=a.device) if g is None else g
            for g, a in zip(grads, inputs)]


def _accumulate(saes, u: str, g: torch.Tensor, positions: range, delta: tuple[torch.Tensor, torch.Tensor],
                source: Sources, rows: list[int], out_f, out_e) -> None:
    """Edges from the kept nodes of ``u`` at ``positions``: latent i at position q gets
    sum_b (W_dec[i] . g[t, b, q]) * delta_f[b, q, i] (the decoder is affine), the error
    sum_b g[t, b, q] . delta_e[b, q]."""
    latent_mask, error_mask = source
    rows_t = torch.tensor(rows)
    for j, q in enumerate(positions):
        g_q = g[:, :, j]  # [T, batch, d_model]
        if error_mask[q]:
            out_e[u][rows_t, q] += torch.einsum("tbd,bd->t", g_q, delta[1][:, q]).detach().float().cpu()
        if latent_mask is None:
            continue
        keep = latent_mask[q].nonzero().flatten()
        if len(keep):
            on = keep.to(g_q.device)
            w = saes[u].W_dec.detach()[on]  # [k, d_model]
            vals = ((g_q @ w.T) * delta[0][:, q, on]).sum(1)  # [T, k]
            out_f[u][rows_t.unsqueeze(1), q, keep.unsqueeze(0)] += vals.detach().float().cpu()


def _hook_cotangents(sae, x: torch.Tensor, grad_f: torch.Tensor, grad_e: torch.Tensor,
                     targets: list[Target]) -> torch.Tensor:
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
                ct_e[j] = grad_e[:, pos]
            else:
                ct_f[j, :, latent] = grad_f[:, pos, latent]
        (g,) = torch.autograd.grad([f, e], [xp], [ct_f, ct_e], is_grads_batched=True)
        out[idx, :, pos] = g
    return out


Node = tuple[str, int, "int | None"]  # (hook, position, latent or None)


@torch.no_grad()
def exact_edge_effects(model: HookedTransformer, saes: SAESet, task: Task,
                       edges: list[tuple[Node, Node]]) -> torch.Tensor:
    """Exact two-node patching, mean over examples, for each edge (u, d): patch u to its
    corrupt value along the direct path only (the other upstream nodes of d's block held
    clean), recompute d, put that value of d into an otherwise clean run, and measure
    m - m(clean). The attribution ``edges_into`` is its first-order approximation."""
    task = prepare(model, task)
    base = task.metric_per_example(model(task.clean)).mean()
    out = []
    for (u, q, i), (hook, p, j) in edges:
        ups = upstream_hooks(hook, saes)
        if u not in ups:
            raise CircuitsError(f"no direct edge from {u} into {hook}")
        layer, _ = parse_hook(hook)
        _, cache_c = model.run_with_cache(task.clean, names_filter=ups, stop_at_layer=layer + 1)
        _, cache_p = model.run_with_cache(task.corrupt, names_filter=[u], stop_at_layer=layer + 1)
        (f_c, e_c), (f_p, e_p) = _encode_nodes(saes, u, cache_c[u]), _encode_nodes(saes, u, cache_p[u])
        acts = {v: cache_c[v].clone() for v in ups}
        if i is None:
            acts[u][:, q] += e_p[:, q] - e_c[:, q]
        else:
            acts[u][:, q] += (f_p[:, q, i] - f_c[:, q, i]).unsqueeze(-1) * saes[u].W_dec[i]
        recorded = {}
        inner = [v for v in ups if v.startswith(f"blocks.{layer}.")]
        with model.hooks(fwd_hooks=[(v, lambda x, hook, acts=acts: acts[hook.name]) for v in inner]
                         + [(hook, lambda x, hook, rec=recorded: rec.setdefault("x", x))]):
            model(acts[ups[0]], start_at_layer=layer, stop_at_layer=layer + 1)
        f_new = saes[hook].encode(recorded["x"])
        e_new = recorded["x"] - saes[hook].decode(f_new)

        edit = lambda f, e, p=p, j=j, f_new=f_new, e_new=e_new: set_node(f, e, p, j, f_new, e_new)  # noqa: E731
        with spliced(model, saes, hooks=[hook], edits={hook: edit}):
            out.append(task.metric_per_example(model(task.clean)).mean() - base)
    return torch.stack(out).cpu()
