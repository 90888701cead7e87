"""Node attribution: the effect of every SAE latent and error term on the task metric.

For a node a with clean value a_c and corrupt value a_p (shared DESIGN.md section 3):
* ``atp``:   IE(a) ~ dm/da(a_c) . (a_p - a_c)
* ``ig``:    IE(a) ~ mean_k dm/da(a_c + (k + 1/2)/N (a_p - a_c)) . (a_p - a_c), k = 0..N-1
             (midpoint rule), one hook interpolated at a time (its latents and error
             together), the rest computed;
* ``exact``: m(a patched to a_p) - m(clean), one forward pass per node (validation only).
Effects are per example and position, then averaged over examples: latents ``[pos, d_sae]``
and errors ``[pos]`` per hook. The error node is the whole error vector at a position.
Sign convention (tasks/task.py): negative effect = the behaviour relies on the node.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuits.errors import CircuitsError
from circuits.parallel import all_reduce, batch_starts, is_main
from circuits.splice import NodeEdit, SpliceNodes, spliced
from sae.saeset import SAESet
from tasks.task import Task

METHODS = ("atp", "ig", "exact")
EMBED = "blocks.0.hook_resid_pre"  # the token (+ position) embeddings: the graph's input nodes


@dataclass
class NodeEffects:
    """Mean effects over the task's examples, per hook: latents ``[pos, d_sae]``, errors ``[pos]``.

    ``errors[EMBED]`` holds the effect of the embedding vector at each position (the input
    nodes; ``latents`` has no EMBED entry)."""

    latents: dict[str, torch.Tensor]
    errors: dict[str, torch.Tensor]
    method: str
    n_examples: int


def prepare(model: HookedTransformer, task: Task) -> Task:
    """Check that ``task`` fits ``model`` and, for the kl metric, record the clean reference."""
    task.check_fits(model.cfg.n_ctx)
    if task.metric == "kl" and task.reference is None:
        with torch.no_grad():  # in batches: the full [pairs, pos, vocab] logits are never held
            refs = [task.subset(slice(lo, lo + 64)).with_reference(model(task.clean[lo:lo + 64])).reference
                    for lo in range(0, task.n_examples, 64)]
        task = replace(task, reference=torch.cat(refs))
    return task


def _nodes(model: HookedTransformer, saes: SAESet, tokens: torch.Tensor) -> SpliceNodes:
    with torch.no_grad(), spliced(model, saes) as nodes:
        model(tokens)
    return nodes


def _finite(task: Task, metric: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(metric):
        raise CircuitsError(f"task {task.name}: the metric is not finite ({metric.item()})")
    return metric


def metric_grads(model: HookedTransformer, saes: SAESet, task: Task, hooks: list[str],
                 edits: dict[str, NodeEdit] | None = None,
                 start: tuple[int, torch.Tensor] | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """dm/df and dm/de at ``hooks`` on the clean prompts (metric summed over examples, so
    each example's rows hold its own gradient). Only ``hooks`` are spliced: the splice is the
    identity for values and gradients, so the others need not be. ``start=(layer, resid)``
    runs the model from block ``layer`` with ``resid`` as its input (the layers before
    ``hooks`` need not be recomputed)."""
    with spliced(model, saes, hooks=hooks, edits=edits) as nodes:
        if start is None:
            logits = model(task.clean)
        else:
            logits = model(start[1], start_at_layer=start[0])
        metric = _finite(task, task.metric_per_example(logits).sum())
    grads = torch.autograd.grad(metric, [nodes.latents[h] for h in hooks] + [nodes.errors[h] for h in hooks])
    return list(grads[:len(hooks)]), list(grads[len(hooks):])


def _interpolate(f_c, e_c, f_p, e_p, alpha: float) -> NodeEdit:
    return lambda f, e: (f_c + alpha * (f_p - f_c), e_c + alpha * (e_p - e_c))


def _layer(hook: str) -> int:
    return int(hook.split(".")[1])


def node_effects(model: HookedTransformer, saes: SAESet, task: Task, method: str = "ig",
                 steps: int = 10, batch_size: int = 32, progress: bool = True) -> NodeEffects:
    """Effects of every latent and error node of ``saes`` (and of the embeddings) on
    ``task``'s metric (AtP or IG), streamed over batches of examples so memory does not grow
    with their number."""
    if method not in ("atp", "ig"):
        raise CircuitsError(f"unknown attribution method {method!r}: use atp or ig (exact: exact_effects)")
    if steps < 1:
        raise CircuitsError(f"IG needs at least one step, got steps={steps}")
    task = prepare(model, task)
    hooks = list(saes)
    sums_f = {h: torch.zeros(task.n_pos, saes[h].cfg.d_sae) for h in hooks}
    sums_e = {h: torch.zeros(task.n_pos) for h in hooks + [EMBED]}
    for start in tqdm(batch_starts(task.n_examples, batch_size), desc=f"attribution ({method})",
                      disable=not (progress and is_main())):
        part = task.subset(slice(start, start + batch_size))
        _batch_effects(model, saes, part, method, steps, sums_f, sums_e)
    all_reduce([*sums_f.values(), *sums_e.values()])
    n = task.n_examples
    return NodeEffects({h: v / n for h, v in sums_f.items()}, {h: v / n for h, v in sums_e.items()}, method, n)


def ig_grads(model: HookedTransformer, saes: SAESet, part: Task, hook: str, steps: int,
             clean: SpliceNodes | None = None, corrupt: SpliceNodes | None = None,
             resid_pre: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """dm/df and dm/de at ``hook`` averaged over the IG path: the hook's nodes at
    clean + (k + 1/2)/steps (corrupt - clean), k = 0..steps-1, everything else computed.
    ``clean`` / ``corrupt`` nodes and the hook block's clean input may be passed if known."""
    layer = _layer(hook)
    if clean is None or corrupt is None or resid_pre is None:
        name = f"blocks.{layer}.hook_resid_pre"
        with torch.no_grad(), spliced(model, saes, hooks=[hook]) as clean:
            _, cache = model.run_with_cache(part.clean, names_filter=[name])
        with torch.no_grad(), spliced(model, saes, hooks=[hook]) as corrupt:
            model(part.corrupt)
        resid_pre = cache[name]
    f_c, e_c, f_p, e_p = clean.latents[hook], clean.errors[hook], corrupt.latents[hook], corrupt.errors[hook]
    g_f, g_e = torch.zeros_like(f_c), torch.zeros_like(e_c)
    for k in range(steps):
        edit = _interpolate(f_c, e_c, f_p, e_p, (k + 0.5) / steps)
        (gf,), (ge,) = metric_grads(model, saes, part, [hook], {hook: edit}, start=(layer, resid_pre))
        g_f, g_e = g_f + gf / steps, g_e + ge / steps
    return g_f, g_e


def _batch_effects(model, saes, part: Task, method: str, steps: int, sums_f, sums_e) -> None:
    """Add one batch's per-example effects, summed over its examples, to the running sums."""
    hooks = list(saes)
    resid_names = [f"blocks.{layer}.hook_resid_pre" for layer in range(model.cfg.n_layers)]
    with torch.no_grad(), spliced(model, saes) as clean:
        _, cache = model.run_with_cache(part.clean, names_filter=resid_names)
    with torch.no_grad(), spliced(model, saes) as corrupt:
        _, cache_p = model.run_with_cache(part.corrupt, names_filter=[EMBED])
    if method == "atp":  # one backward pass gives every hook's gradient at the clean point
        atp_f, atp_e = metric_grads(model, saes, part, hooks)
    for i, h in enumerate(hooks):
        if method == "atp":
            g_f, g_e = atp_f[i], atp_e[i]
        else:
            g_f, g_e = ig_grads(model, saes, part, h, steps, clean, corrupt,
                                cache[f"blocks.{_layer(h)}.hook_resid_pre"])
        sums_f[h] += (g_f * (corrupt.latents[h] - clean.latents[h])).sum(0).detach().cpu()
        sums_e[h] += (g_e * (corrupt.errors[h] - clean.errors[h])).sum((0, -1)).detach().cpu()
    emb_c, emb_p = cache[EMBED], cache_p[EMBED]
    alphas = [0.0] if method == "atp" else [(k + 0.5) / steps for k in range(steps)]
    g = torch.zeros_like(emb_c)
    for alpha in alphas:  # the embeddings: the model run from its first block
        x = (emb_c + alpha * (emb_p - emb_c)).requires_grad_(True)
        metric = _finite(part, part.metric_per_example(model(x, start_at_layer=0)).sum())
        g += torch.autograd.grad(metric, x)[0] / len(alphas)
    sums_e[EMBED] += (g * (emb_p - emb_c)).sum((0, -1)).detach().cpu()


def set_node(f: torch.Tensor, e: torch.Tensor, pos: int, latent: int | None, f_new: torch.Tensor,
             e_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies of a hook's latents and error with one node (latent at ``pos``, or the error
    there when ``latent`` is None) taken from ``f_new`` / ``e_new``."""
    f, e = f.clone(), e.clone()
    if latent is None:
        e[:, pos] = e_new[:, pos]
    else:
        f[:, pos, latent] = f_new[:, pos, latent]
    return f, e


@torch.no_grad()
def exact_effects(model: HookedTransformer, saes: SAESet, task: Task,
                  nodes: list[tuple[str, int, int | None]]) -> torch.Tensor:
    """m(node patched to its corrupt value) - m(clean), mean over examples, for each
    ``(hook, position, latent)`` (latent None: the error node; hook EMBED: the embedding
    vector). One forward pass per node."""
    task = prepare(model, task)
    corrupt = _nodes(model, saes, task.corrupt)
    _, cache_p = model.run_with_cache(task.corrupt, names_filter=[EMBED])
    base = task.metric_per_example(model(task.clean)).mean()
    out = []
    for hook, pos, latent in nodes:
        if hook == EMBED:
            def patch(x, hook, pos=pos):  # noqa: ARG001
                x = x.clone()
                x[:, pos] = cache_p[EMBED][:, pos]
                return x
            with model.hooks(fwd_hooks=[(EMBED, patch)]):
                out.append(task.metric_per_example(model(task.clean)).mean() - base)
            continue
        edit = lambda f, e, h=hook, p=pos, i=latent: set_node(f, e, p, i, corrupt.latents[h], corrupt.errors[h])  # noqa: E731
        with spliced(model, saes, hooks=[hook], edits={hook: edit}):
            out.append(task.metric_per_example(model(task.clean)).mean() - base)
    return torch.stack(out).cpu()


@torch.no_grad()
def exact_submodule_effect(model: HookedTransformer, saes: SAESet, task: Task, hook: str) -> float:
    """m(the whole hook patched to its corrupt value) - m(clean), mean over examples."""
    task = prepare(model, task)
    corrupt = _nodes(model, saes, task.corrupt)
    base = task.metric_per_example(model(task.clean)).mean()
    edit = lambda f, e: (corrupt.latents[hook], corrupt.errors[hook])  # noqa: E731
    with spliced(model, saes, hooks=[hook], edits={hook: edit}):
        return (task.metric_per_example(model(task.clean)).mean() - base).item()
