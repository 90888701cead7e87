"""Node attribution: the effect of every SAE latent and error term on the task metric.

For a node a with clean value a_c and corrupt value a_p (docs/design.md, "Node effects"):
* ``atp``:   IE(a) ~ dm/da(a_c) . (a_p - a_c)
* ``ig``:    IE(a) ~ mean_k dm/da(a_c + (k + 1/2)/N (a_p - a_c)) . (a_p - a_c), k = 0..N-1
             (midpoint rule), one submodule interpolated at a time (its latents and error
             together), the rest computed;
* ``exact``: m(a patched to a_p) - m(clean), one forward pass per node (validation only).
Effects are per example and position, then averaged over examples: ``NodeValues`` with
latents ``[pos, d_sae]`` and error ``[pos]`` per hook; the embeddings (``EMBED_HOOK``) are a
submodule without latents whose error node is the embedding vector.
Sign convention (tasks/task.py): negative effect = the behaviour relies on the node.

The work is organised by batch of prompt pairs (``BatchRun``: one clean and one corrupt
spliced run whose values and activations every later step reuses) so discovery streams over
the prompts with flat memory; ``first_pass`` gathers everything discovery needs from its
first pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuits.attribution.splice import encode, spliced
from circuits.core.errors import CircuitsError
from circuits.core.parallel import all_reduce, batch_starts, is_main
from circuits.core.values import NodeValues, add_into, flat
from circuits.core.vocab import EMBED_HOOK, Node, Submodule, flat_act, on_flat, resid_pre
from sae.saeset import SAESet
from tasks.task import Task

Method = Literal["atp", "ig"]
# Token rows per IG forward pass: many paths per pass share the Python overhead, but past a
# few thousand rows the activations fall out of the CPU's caches (measured on the embedded
# model: 320 rows of 15 tokens per pass ran 1.36 s per batch, 960 rows 1.85 s).
IG_TOKENS_PER_PASS = 5_000
# Rows x positions x vocabulary of the logits one IG forward pass may hold (~256 MB in fp32).
IG_LOGIT_BUDGET = 64_000_000


def prepare(model: HookedTransformer, task: Task) -> Task:
    """Check that ``task`` fits ``model`` and, for the kl metric, record the clean reference."""
    task.check_fits(model.cfg.n_ctx)
    if task.metric == "kl" and task.reference is None:
        with torch.no_grad():  # in batches: the full [pairs, pos, vocab] logits are never held
            refs = [
                task.subset(slice(lo, lo + 64)).with_reference(model(task.clean[lo : lo + 64])).reference
                for lo in range(0, task.n_examples, 64)
            ]
        task = replace(task, reference=torch.cat(refs))
    return task


def finite(task: Task, metric: torch.Tensor) -> torch.Tensor:
    """``metric``, or one error line when it is not finite."""
    if not torch.isfinite(metric).all():
        raise CircuitsError(f"task {task.name}: the metric is not finite ({metric.sum().item()})")
    return metric


def _empty_latents(x: torch.Tensor) -> torch.Tensor:
    return x.new_zeros(*x.shape[:-1], 0)


@dataclass
class BatchRun:
    """One batch of prompt pairs run clean and corrupt with the SAEs spliced: node values at
    the spliced hooks and the embeddings (``clean`` / ``corrupt``), the activations at every
    SAE hook and block input (``acts`` clean, ``acts_p`` corrupt), and each example's clean /
    corrupt metric."""

    part: Task
    clean: dict[str, NodeValues]
    corrupt: dict[str, NodeValues]
    acts: dict[str, torch.Tensor]
    acts_p: dict[str, torch.Tensor]
    clean_metric: torch.Tensor
    corrupt_metric: torch.Tensor
    _deltas: dict[str, NodeValues] = field(default_factory=dict, repr=False)

    def delta(self, hook: str) -> NodeValues:
        return self.corrupt[hook] - self.clean[hook]

    def delta_at(self, saes: SAESet, hook: str, positions: list[int]) -> NodeValues:
        """corrupt - clean nodes of ``hook``, encoded at ``positions`` only when the run did
        not encode that hook (zero elsewhere: for edges, which read the kept nodes' positions)."""
        if hook in self.clean:
            return self.delta(hook)
        if hook not in self._deltas:
            x_c, x_p = self.acts[hook], self.acts_p[hook]
            part = encode_at(saes, hook, x_p[:, positions]) - encode_at(saes, hook, x_c[:, positions])
            full = NodeValues(x_c.new_zeros(*x_c.shape[:2], part.latents.shape[-1]), torch.zeros_like(x_c))
            full.latents[:, positions], full.error[:, positions] = part.latents, part.error
            self._deltas[hook] = full
        return self._deltas[hook]


@torch.no_grad()
def run_batch(model: HookedTransformer, saes: SAESet, part: Task, hooks: list[str] | None = None) -> BatchRun:
    """The clean and corrupt runs of one batch (see ``BatchRun``): two plain forward passes
    caching the activations, then the nodes of ``hooks`` (default: every SAE hook) encoded
    from them — the values a spliced run would expose, since splicing changes nothing."""
    names = list(dict.fromkeys([*saes, *_stream_names(model)]))
    logits, cache = model.run_with_cache(part.clean, names_filter=names)
    logits_p, cache_p = model.run_with_cache(part.corrupt, names_filter=names)
    acts, acts_p = ({n: flat_act(c[n]) for n in names} for c in (cache, cache_p))
    hooks = with_inputs(list(saes) if hooks is None else hooks)
    return BatchRun(
        part,
        {h: encode_at(saes, h, acts[h]) for h in hooks},
        {h: encode_at(saes, h, acts_p[h]) for h in hooks},
        acts,
        acts_p,
        part.metric_per_example(logits),
        part.metric_per_example(logits_p),
    )


def clean_grads(
    model: HookedTransformer, saes: SAESet, run: BatchRun, hooks: list[str] | None = None
) -> dict[str, torch.Tensor]:
    """dm/d(activation) on the clean run at ``hooks`` (default: every SAE hook) and the
    embeddings, from one backward pass (metric summed over examples, so each example's rows
    hold its own gradient). The splice passes gradients through unchanged, so no SAE need
    run: ``node_grads`` turns them into dm/d(nodes)."""
    hooks = [h for h in (list(saes) if hooks is None else hooks) if h != EMBED_HOOK]
    x = run.acts[EMBED_HOOK].detach().clone().requires_grad_(True)
    acts: dict[str, torch.Tensor] = {}

    @on_flat
    def record(act: torch.Tensor, hook) -> None:
        acts[hook.name] = act

    with model.hooks(fwd_hooks=[(h, record) for h in hooks]):
        metric = finite(run.part, run.part.metric_per_example(model(x, start_at_layer=0)).sum())
    grads = torch.autograd.grad(metric, [acts[h] for h in hooks] + [x])
    return dict(zip(hooks + [EMBED_HOOK], grads, strict=False))


def node_grads(saes: SAESet, hook: str, grad: torch.Tensor) -> NodeValues:
    """dm/d(nodes) from dm/d(activation) ``grad``: the error term is added as it is and the
    decoder is affine, so dm/de = dm/dx and dm/df_i = W_dec[i] . dm/dx."""
    if hook == EMBED_HOOK and hook not in saes:  # the embedding vector
        return NodeValues(_empty_latents(grad), grad)
    return NodeValues(grad @ saes[hook].W_dec.detach().T, grad)


def _stream_names(model: HookedTransformer) -> list[str]:
    """The residual stream entering every block, and leaving the last one."""
    return [resid_pre(layer) for layer in range(model.cfg.n_layers)] + [Submodule(model.cfg.n_layers - 1, "resid").hook]


def _stream(model: HookedTransformer, layer: int) -> str:
    """The hook of the residual stream entering block ``layer`` (n_layers: leaving the last)."""
    return _stream_names(model)[layer]


def with_inputs(hooks: list[str]) -> list[str]:
    """``hooks`` and the embeddings (once: they may have an SAE of their own)."""
    return list(dict.fromkeys([*hooks, EMBED_HOOK]))


# How an IG path at each kind enters a forward pass that starts at ``Submodule.start_block``:
# as that block's input (the residual stream there); patched inside the block, whose input
# stays clean; or, for mlp_L (the last thing block L adds), as its change added to the
# clean stream leaving the block.
_IG_ENTRY = {"embed": "input", "resid_pre": "input", "resid": "input", "mlp": "added"}


def ig_grads(
    model: HookedTransformer, saes: SAESet, run: BatchRun, hooks: list[str], steps: int
) -> dict[str, torch.Tensor]:
    """dm/d(activation) at each of ``hooks`` (``EMBED_HOOK`` allowed) averaged over its IG
    path: the activation at clean + (k + 1/2)/steps (corrupt - clean), k = 0..steps-1,
    everything else computed. The SAE's decoder is affine, so interpolating a hook's latents
    and error together is interpolating its activation, and the mean gradient projects onto
    the latents once (``node_grads``). All paths that start at one block run as one batch
    (rows: one copy of the prompts per (hook, step)), split into passes of about
    ``IG_TOKENS_PER_PASS`` tokens (and ``IG_LOGIT_BUDGET`` logits)."""
    b, n_pos = run.part.n_examples, run.part.n_pos
    per_pass = max(1, min(IG_LOGIT_BUDGET // max(1, b * n_pos * model.cfg.d_vocab), IG_TOKENS_PER_PASS // (b * n_pos)))
    sums: dict[str, torch.Tensor] = {}
    by_start: dict[int, list[str]] = {}
    for h in hooks:
        by_start.setdefault(Submodule.parse(h).start_block, []).append(h)
    for start, group in sorted(by_start.items()):
        copies = [(h, k) for h in group for k in range(steps)]
        for lo in range(0, len(copies), per_pass):
            for h, g in _ig_pass(model, run, start, copies[lo : lo + per_pass], steps).items():
                sums[h] = g if h not in sums else sums[h] + g
    return {h: g / steps for h, g in sums.items()}


def _ig_pass(model, run: BatchRun, start: int, copies: list[tuple[str, int]], steps: int) -> dict[str, torch.Tensor]:
    """One forward and backward pass over ``copies`` (hook, step) of the batch, from block
    ``start`` (for paths at the last residual stream: the unembedding alone): the gradients
    at each hook's interpolated activation, summed over its steps."""
    b = run.part.n_examples
    hooks = list(dict.fromkeys(h for h, _ in copies))
    inputs, points, row = [], {}, 0
    for h in hooks:
        ks = torch.tensor([k for g, k in copies if g == h], dtype=torch.float32)
        x_c, x_p = run.acts[h], run.acts_p[h]
        alphas = ((ks + 0.5) / steps).to(x_c.device).repeat_interleave(b).view(-1, 1, 1)
        path = (x_c.repeat(len(ks), 1, 1) + (x_p - x_c).repeat(len(ks), 1, 1) * alphas).requires_grad_(True)
        points[h] = (slice(row, row + len(path)), path)
        row += len(path)
        entry = _IG_ENTRY.get(Submodule.parse(h).kind, "inner")
        if entry == "inner":  # patched inside the block, whose input stays clean
            inputs.append(run.acts[_stream(model, start)].repeat(len(ks), 1, 1))
        elif entry == "added":  # the block's clean output with mlp_out's change
            inputs.append(run.acts[_stream(model, start)].repeat(len(ks), 1, 1) + (path - x_c.repeat(len(ks), 1, 1)))
        else:
            inputs.append(path)
    x = torch.cat(inputs)
    inner = [h for h in hooks if Submodule.parse(h).kind not in _IG_ENTRY]

    @on_flat
    def patch(act: torch.Tensor, hook) -> torch.Tensor:
        rows, path = points[hook.name]
        return torch.cat([act[: rows.start], path, act[rows.stop :]])

    tiled = run.part.subset(torch.arange(b).repeat(row // b))
    with model.hooks(fwd_hooks=[(h, patch) for h in inner]):
        metric = finite(run.part, _metric_from(model, tiled, x, start).sum())
    grads = torch.autograd.grad(metric, [points[h][1] for h in hooks])
    return {h: g.reshape(g.shape[0] // b, b, *g.shape[1:]).sum(0) for h, g in zip(hooks, grads, strict=False)}


def _metric_from(model: HookedTransformer, task: Task, x: torch.Tensor, start: int) -> torch.Tensor:
    """Each example's metric with the model run from block ``start`` on residual stream ``x``
    (start = n_layers: the unembedding alone). Metrics read at the last position only
    unembed that position: the unembedding is per position, and many paths run at once."""
    if task.metric == "logprob" or not hasattr(model, "ln_final"):
        return task.metric_per_example(model(x, start_at_layer=start))
    resid = model(x, start_at_layer=start, stop_at_layer=model.cfg.n_layers)
    last = task.n_pos - 1 if task.lengths is None else task.lengths.to(x.device) - 1
    logits = model.unembed(model.ln_final(resid[torch.arange(len(resid)), last].unsqueeze(1)))
    return replace(task, lengths=None).metric_per_example(logits)


def batch_grads(
    model: HookedTransformer, saes: SAESet, run: BatchRun, method: Method, steps: int, hooks: list[str] | None = None
) -> dict[str, torch.Tensor]:
    """dm/d(activation) by ``method`` at ``hooks`` (default: every SAE hook and the
    embeddings)."""
    if method == "atp":  # one backward pass gives every hook's gradient at the clean point
        return clean_grads(model, saes, run, hooks)
    return ig_grads(model, saes, run, with_inputs(list(saes)) if hooks is None else hooks, steps)


@dataclass
class NodeEffects:
    """Mean effects over the task's examples, per hook (and ``EMBED_HOOK``): latents
    ``[pos, d_sae]``, error ``[pos]``."""

    values: dict[str, NodeValues]
    method: str
    n_examples: int


@dataclass
class FirstPass:
    """What discovery's first pass over the prompts yields: node effects, each node's mean
    clean activation (latents: value; error and embeddings: norm) and the mean metrics."""

    effects: NodeEffects
    activations: dict[str, NodeValues]
    clean_metric: float
    corrupt_metric: float


def _check_method(method: str, steps: int) -> None:
    if method not in ("atp", "ig"):
        raise CircuitsError(f"unknown attribution method {method!r}: use atp or ig (exact: exact_effects)")
    if steps < 1:
        raise CircuitsError(f"IG needs at least one step, got steps={steps}")


def first_pass(
    model: HookedTransformer,
    saes: SAESet,
    task: Task,
    method: Method | None = "ig",
    steps: int = 10,
    batch_size: int = 32,
    progress: bool = True,
    keep_grads: Path | None = None,
) -> FirstPass:
    """Stream over ``task`` in batches: the metrics, mean activations and (unless ``method``
    is None) every node's effect. Memory holds one batch and the running sums; with
    ``keep_grads`` (a folder), each batch's activation gradients are written there as
    ``<first example>.pt`` for a later pass over the same batches."""
    if method is not None:
        _check_method(method, steps)
    task = prepare(model, task)
    shapes = {EMBED_HOOK: (task.n_pos, 0)} | {h: (task.n_pos, saes[h].cfg.d_sae) for h in saes}
    effects = {h: NodeValues.zeros((p,), d) for h, (p, d) in shapes.items()}
    acts = {h: NodeValues.zeros((p,), d) for h, (p, d) in shapes.items()}
    metrics = torch.zeros(2, dtype=torch.float64)
    for lo in tqdm(
        batch_starts(task.n_examples, batch_size),
        desc=f"attribution ({method or 'metrics'})",
        disable=not (progress and is_main()),
    ):
        run = run_batch(model, saes, task.subset(slice(lo, lo + batch_size)))
        sums = torch.stack([run.clean_metric.sum(), run.corrupt_metric.sum()]).double().cpu()
        for name, value in zip(("clean", "corrupt"), sums.tolist(), strict=False):
            if not math.isfinite(value):  # before any gradient: say which run
                raise CircuitsError(f"task {task.name}: the {name} metric is not finite ({value})")
        metrics += sums
        add_into(
            acts, {h: NodeValues(v.latents.sum(0), v.error.norm(dim=-1).sum(0)).cpu() for h, v in run.clean.items()}
        )
        if method is not None:
            grads = batch_grads(model, saes, run, method, steps)
            if keep_grads is not None:  # for discovery's second pass
                torch.save({h: g.detach().cpu() for h, g in grads.items()}, keep_grads / f"{lo}.pt")
            add_into(effects, {h: (run.delta(h) @ node_grads(saes, h, g)).sum(0).cpu() for h, g in grads.items()})
    all_reduce([metrics, *flat(effects), *flat(acts)])
    n = task.n_examples
    return FirstPass(
        NodeEffects({h: v / n for h, v in effects.items()}, method or "none", n),
        {h: v / n for h, v in acts.items()},
        metrics[0].item() / n,
        metrics[1].item() / n,
    )


def node_effects(
    model: HookedTransformer,
    saes: SAESet,
    task: Task,
    method: Method = "ig",
    steps: int = 10,
    batch_size: int = 32,
    progress: bool = True,
) -> NodeEffects:
    """Effects of every latent and error node of ``saes`` (and of the embeddings) on
    ``task``'s metric (AtP or IG), streamed over batches of examples so memory does not grow
    with their number."""
    _check_method(method, steps)
    return first_pass(model, saes, task, method, steps, batch_size, progress).effects


def set_node(values: NodeValues, node: Node, new: NodeValues) -> NodeValues:
    """A copy of a hook's nodes with ``node`` (a latent or the error at its position) taken
    from ``new``."""
    out = values.map(torch.clone)
    if node.latent is None:
        out.error[:, node.position] = new.error[:, node.position]
    else:
        out.latents[:, node.position, node.latent] = new.latents[:, node.position, node.latent]
    return out


def _mean_metric(model: HookedTransformer, task: Task, tokens: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    return task.metric_per_example(model(task.clean if tokens is None else tokens, **kwargs)).mean()


@torch.no_grad()
def exact_effects(model: HookedTransformer, saes: SAESet, task: Task, nodes: list[Node]) -> torch.Tensor:
    """m(node patched to its corrupt value) - m(clean), mean over examples, for each node (the
    embeddings: the embedding vector at that position). One forward pass per node."""
    task = prepare(model, task)
    run = run_batch(model, saes, task)
    base = run.clean_metric.mean()
    out = []
    for node in nodes:
        if node.is_embed and node.hook not in saes:  # the embedding vector
            x = run.acts[EMBED_HOOK].clone()
            x[:, node.position] = run.corrupt[EMBED_HOOK].error[:, node.position]
            out.append(_mean_metric(model, task, x, start_at_layer=0) - base)
            continue
        edit = lambda v, n=node: set_node(v, n, run.corrupt[n.hook])  # noqa: E731
        with spliced(model, saes, hooks=[node.hook], edits={node.hook: edit}):
            out.append(_mean_metric(model, task) - base)
    return torch.stack(out).cpu()


@torch.no_grad()
def exact_submodule_effect(model: HookedTransformer, saes: SAESet, task: Task, hook: str) -> float:
    """m(the whole hook patched to its corrupt value) - m(clean), mean over examples."""
    task = prepare(model, task)
    run = run_batch(model, saes, task)
    with spliced(model, saes, hooks=[hook], edits={hook: lambda v: run.corrupt[hook]}):
        return (_mean_metric(model, task) - run.clean_metric.mean()).item()


def encode_at(saes: SAESet, hook: str, x: torch.Tensor) -> NodeValues:
    """The nodes of activation ``x`` at ``hook`` (the embeddings without an SAE: no latents,
    x itself)."""
    if hook == EMBED_HOOK and hook not in saes:
        return NodeValues(_empty_latents(x), x.clone())
    return encode(saes[hook], x)
