"""Ablation: switch node sets off and measure the task metric (``Ablator``).

Nodes are ``circuits.core.vocab.Node`` (position None: every position); node sets travel as
masks, one ``NodeValues`` of booleans per hook. Ablating a node replaces its value by
(the convention, ``Ablation``; with the first layer ablated and a seed: ``AblationSpec``,
both in ``circuits.circuit.config``):

* ``mean`` — its mean over the task's clean prompts at that position;
* ``mean_corrupt`` — its mean over the corrupt prompts at that position (SFC's evaluation);
* ``counterfactual`` — its value on the example's own corrupt prompt (MIB's interchange
  intervention; ablating every node gives the corrupt run);
* ``zero``;
* ``resample`` — its value on another example's clean prompt.

All hooks are ablated in one forward pass, each computed from the already-ablated layers
before it; submodules of layers below ``start_layer`` are never ablated (SFC's
``start_layer``: early layers given for free). See docs/design.md, "Ablation".

Everything streams over batches of prompt pairs, as the node pass does, and all-reduces its
sums under torch.distributed (``circuits.core.parallel``): per-position means are sums over
batches, the metric is a sum of per-example metrics over batches divided by their number,
and per-example reference values (``counterfactual``, ``resample``) are recomputed for each
batch from its own prompts. Memory holds one batch, whatever the number of prompts.

Faithfulness F(C) = (m(C) - m(empty)) / (m(M) - m(empty)): m(M) the model, m(empty) every
node ablated, m(C) every node outside C ablated (``Endpoints``). Completeness is F of the
complement (everything but C kept); a complete circuit leaves ~0 behind. Measurements,
curves and cuts built on this are in ``circuits.circuit.faithfulness``.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import networkx as nx
import torch
from transformer_lens import HookedTransformer

from circuits.attribution.edges import source_masks
from circuits.attribution.nodes import prepare
from circuits.attribution.splice import decode, spliced
from circuits.circuit.config import BATCH_SIZE, AblationSpec
from circuits.circuit.record import record_of
from circuits.core.errors import CircuitsError
from circuits.core.parallel import all_reduce, batch_starts
from circuits.core.values import NodeValues, add_into, flat
from circuits.core.vocab import Node, Site, Submodule, on_flat
from sae.saeset import SAESet
from tasks.task import Task

Masks = dict[str, NodeValues]  # per hook: which latents [pos, d_sae] and error terms [pos]


def ablatable_hooks(saes: SAESet) -> list[str]:
    """The set's hooks whose nodes ablation may switch off: all but an SAE on the embeddings,
    which are the circuit's inputs (its latents and error are inputs too)."""
    return [h for h in saes if not Submodule.parse(h).is_embed]


def empty_masks(saes: SAESet, n_pos: int) -> Masks:
    return source_masks([], saes, n_pos, ablatable_hooks(saes))


def node_masks(nodes: list[Node], saes: SAESet, n_pos: int) -> Masks:
    """Masks of ``nodes`` (position None: every position); a hook without an SAE, a latent or
    position out of range is one line. Embedding nodes are not ablatable and are skipped."""
    for n in nodes:
        if n.is_embed:
            continue
        if n.hook not in saes:
            raise CircuitsError(f"node {n.hook}/{n.latent}: the SAE set has no SAE at {n.hook}")
        if n.position is not None and not 0 <= n.position < n_pos:
            raise CircuitsError(f"node {n.hook}/{n.latent}@{n.position}: position out of range (prompts have {n_pos})")
        if n.latent is not None and not 0 <= n.latent < saes[n.hook].cfg.d_sae:
            raise CircuitsError(f"node {n.hook}/{n.latent}: latent out of range (the SAE has {saes[n.hook].cfg.d_sae})")
    return source_masks(nodes, saes, n_pos, ablatable_hooks(saes))


def site_masks(sites: list[Site], saes: SAESet, n_pos: int) -> Masks:
    """Every latent and the error term of each site (position None: every position)."""
    masks = empty_masks(saes, n_pos)
    for s in sites:
        at = slice(None) if s.position is None else s.position
        masks[s.hook].latents[at] = True
        masks[s.hook].error[at] = True
    return masks


def circuit_masks(circuit: list[Node | Site], saes: SAESet, n_pos: int) -> Masks:
    """Masks of a circuit given as nodes, sites (all of each site's nodes), or both."""
    sites = [c for c in circuit if isinstance(c, Site)]
    masks = node_masks([c for c in circuit if not isinstance(c, Site)], saes, n_pos)
    if sites:
        for h, m in site_masks(sites, saes, n_pos).items():
            masks[h] = NodeValues(masks[h].latents | m.latents, masks[h].error | m.error)
    return masks


def complement(masks: Masks) -> Masks:
    return {h: m.complement() for h, m in masks.items()}


def check_graph(graph: nx.DiGraph, model: HookedTransformer, saes: SAESet) -> None:
    """A circuit file must come from this model and SAE set (hooks and widths)."""
    record = record_of(graph)
    for hook, width in record.saes.items():
        if hook not in saes:
            raise CircuitsError(f"the circuit was found with an SAE at {hook}; this SAE set has none")
        if saes[hook].cfg.d_sae != width:
            raise CircuitsError(
                f"the circuit's SAE at {hook} has {width} latents; this set's has {saes[hook].cfg.d_sae}"
            )
    n_layers = record.model.n_layers
    if n_layers is not None and n_layers != model.cfg.n_layers:
        raise CircuitsError(f"the circuit is from a {n_layers}-layer model; this model has {model.cfg.n_layers}")


@torch.no_grad()
def reference_values(
    model: HookedTransformer,
    saes: SAESet,
    task: Task,
    spec: AblationSpec | None = None,
    rows: slice | torch.Tensor | None = None,
    hooks: list[str] | None = None,
    batch_size: int = BATCH_SIZE,
) -> dict[str, NodeValues]:
    """What ablated nodes are set to, per hook (default: every SAE hook):

    * per position (``[pos, ...]``) for ``zero``, ``mean``, ``mean_corrupt``: zeros, or the
      mean over the task's clean or corrupt prompts, streamed in batches of ``batch_size``
      (sums over batches, all-reduced across processes);
    * per example (``[len(rows), pos, ...]``) for ``counterfactual``, ``resample``: for the
      examples ``rows`` (default: all), each one's own corrupt values, or the clean values of
      its partner under a fixed derangement of the task's examples; one spliced run of those
      prompts, so pass one batch's rows at a time to stream."""
    spec = spec or AblationSpec()
    hooks = list(saes) if hooks is None else hooks
    if spec.per_example:
        index = torch.arange(task.n_examples)[slice(None) if rows is None else rows]
        if spec.kind == "counterfactual":
            tokens = task.corrupt[index]
        else:
            tokens = task.clean[derangement(task.n_examples, spec.seed)[index]]
        with spliced(model, saes, hooks=hooks) as nodes:
            model(tokens)
        return {h: nodes[h].detach() for h in hooks}
    like = {h: saes[h].W_dec for h in hooks}
    if spec.kind == "zero":
        return {
            h: NodeValues.zeros((task.n_pos,), saes[h].cfg.d_sae, saes[h].cfg.d_in).map(lambda t, h=h: t.to(like[h]))
            for h in hooks
        }
    tokens = task.clean if spec.kind == "mean" else task.corrupt
    sums = {h: NodeValues.zeros((task.n_pos,), saes[h].cfg.d_sae, saes[h].cfg.d_in, torch.float64) for h in hooks}
    for lo in batch_starts(task.n_examples, batch_size):
        with spliced(model, saes, hooks=hooks) as nodes:
            model(tokens[lo : lo + batch_size])
        add_into(sums, {h: nodes[h].map(lambda t: t.detach().double().sum(0).cpu()) for h in hooks})
    all_reduce(flat(sums))
    return {h: (v / task.n_examples).map(lambda t, h=h: t.to(like[h])) for h, v in sums.items()}


@functools.lru_cache(maxsize=8)
def derangement(n: int, seed: int) -> torch.Tensor:
    """A permutation of ``n`` examples with no fixed point (identity for n = 1), fixed by
    ``seed``: ``resample``'s partners. Not to be modified (cached)."""
    if n == 1:
        return torch.zeros(1, dtype=torch.long)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    perm = torch.empty(n, dtype=torch.long)
    perm[torch.tensor(order)] = torch.tensor(order[1:] + order[:1])
    return perm


def ablation_hook(
    sae, ref: NodeValues, ref_act: torch.Tensor, full: torch.Tensor, mixed: torch.Tensor, keep: NodeValues | None
):
    """The TransformerLens hook that ablates one submodule: positions ``full`` (``[pos]``
    booleans) replaced by the reference activation ``ref_act`` = D(ref) + ref error, positions ``mixed``
    encoded and each node moved to its reference value by 1 - ``keep`` (``keep`` at the mixed
    positions: booleans, or floats for a learned mask, whose gradient then flows), the rest
    left alone. Gradients flow through the encoder at mixed positions, so a mask upstream
    sees its effect through every kept node downstream."""
    full_at, mixed_at = full.nonzero().flatten(), mixed.nonzero().flatten()
    ref_mixed = ref.map(lambda t: t[..., mixed_at, :]) if len(mixed_at) else None

    @on_flat
    def hook(x: torch.Tensor, hook) -> torch.Tensor:  # noqa: ARG001 (TransformerLens passes the HookPoint)
        out = x.clone()
        if len(full_at):
            out[:, full_at] = ref_act[..., full_at, :].to(x.dtype)
        if ref_mixed is not None:
            xm = x[:, mixed_at]
            f = sae.encode(xm)
            e = xm - sae.decode(f)
            if keep.latents.dtype == torch.bool:
                f = torch.where(keep.latents, f, ref_mixed.latents)
                e = torch.where(keep.error[..., None], e, ref_mixed.error)
            else:
                f = ref_mixed.latents + keep.latents * (f - ref_mixed.latents)
                e = ref_mixed.error + keep.error[..., None] * (e - ref_mixed.error)
            out[:, mixed_at] = sae.decode(f) + e
        return out

    return hook


@contextmanager
def ablated(
    model: HookedTransformer,
    saes: SAESet,
    masks: Masks,
    values: dict[str, NodeValues],
    acts: dict[str, torch.Tensor] | None = None,
) -> Iterator[None]:
    """Inside the block, forward passes of ``model`` run with the masked nodes replaced by
    ``values`` (from ``reference_values``; ``acts``: their activations, computed when not
    given); hooks are removed on exit, also on error.
    Positions whose nodes are all ablated need no SAE (their activation becomes the
    reference activation), so site-level circuits cost plain forward passes."""
    saes.check_model(model)
    hooks = []
    for h, m in masks.items():
        full = m.latents.all(-1) & m.error
        mixed = (m.latents.any(-1) | m.error) & ~full
        if full.any() or mixed.any():
            keep = NodeValues(~m.latents[mixed], ~m.error[mixed])
            act = acts[h] if acts is not None else decode(saes[h], values[h])
            hooks.append((h, ablation_hook(saes[h], values[h], act, full, mixed, keep)))
    with model.hooks(fwd_hooks=hooks):
        yield


@dataclass(frozen=True)
class Endpoints:
    """m(M), the model's mean metric, and m(empty), with every node ablated: the ends of the
    faithfulness scale."""

    m_model: float
    m_empty: float

    def of(self, m: float) -> float:
        """F of a circuit whose ablated run has metric ``m``."""
        denom = self.m_model - self.m_empty
        if abs(denom) <= 1e-6 * max(abs(self.m_model), abs(self.m_empty), 1e-6):
            raise CircuitsError(
                f"faithfulness is undefined: the model's metric ({self.m_model:.4g}) equals the "
                f"metric with every node ablated ({self.m_empty:.4g})"
            )
        return (m - self.m_empty) / denom


class Ablator:
    """One task, SAE set and ``AblationSpec``, streamed in batches of ``batch_size`` prompt
    pairs: the mean metric with any node set removed (ablated) or kept (everything else
    ablated). Per-position reference values are computed once (one streamed pass);
    per-example ones are recomputed for each batch from its own prompts. Under
    torch.distributed each process runs its share of the batches and the sums are
    all-reduced, so every process gets the same numbers. Hooks of layers below
    ``spec.start_layer`` are never ablated."""

    def __init__(
        self,
        model: HookedTransformer,
        saes: SAESet,
        task: Task,
        spec: AblationSpec | None = None,
        batch_size: int = BATCH_SIZE,
    ):
        if batch_size < 1:
            raise CircuitsError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.saes, self.task = model, saes, prepare(model, task)
        self.spec, self.batch_size, self.n_pos = spec or AblationSpec(), batch_size, self.task.n_pos
        self.values: dict[str, NodeValues] | None = None  # per-position reference values (None: per example)
        self.acts: dict[str, torch.Tensor] | None = None  # their activations D(f) + e
        if not self.spec.per_example:
            self.values = reference_values(model, saes, self.task, self.spec, batch_size=batch_size)
            with torch.no_grad():
                self.acts = {h: decode(saes[h], v) for h, v in self.values.items()}
        self.ref = Endpoints(self.metric_removing({}), self.metric_removing(self.everything()))

    def batches(self) -> Iterator[slice]:
        """This process's batches of the task's examples."""
        for lo in batch_starts(self.task.n_examples, self.batch_size):
            yield slice(lo, lo + self.batch_size)

    def references(
        self, rows: slice | torch.Tensor | None = None, hooks: list[str] | None = None
    ) -> tuple[dict[str, NodeValues], dict[str, torch.Tensor]]:
        """Reference values and their activations for the examples ``rows`` (default: all) at
        ``hooks`` (default: every SAE hook): the per-position ones, shared by every example,
        or the rows' own (one spliced run of their prompts)."""
        if self.values is not None:
            return self.values, self.acts
        values = reference_values(self.model, self.saes, self.task, self.spec, rows, hooks)
        with torch.no_grad():
            return values, {h: decode(self.saes[h], v) for h, v in values.items()}

    def everything(self) -> Masks:
        return complement(empty_masks(self.saes, self.n_pos))

    def ablatable(self, hook: str) -> bool:
        return self.spec.ablatable(hook)

    @torch.no_grad()
    def metric_removing(self, masks: Masks) -> float:
        """The mean metric over the task with the nodes of ``masks`` ablated (``{}``: the
        plain model): a sum of per-example metrics over batches, divided by their number."""
        masks = {h: m for h, m in masks.items() if self.ablatable(h) and (m.latents.any() or m.error.any())}
        total = torch.zeros(1, dtype=torch.float64)

        def add(rows: slice) -> None:
            part = self.task.subset(rows)
            total.add_(part.metric_per_example(self.model(part.clean)).double().sum().cpu())

        if not masks or self.values is not None:  # one set of hooks for every batch
            with ablated(self.model, self.saes, masks, self.values or {}, self.acts):
                for rows in self.batches():
                    add(rows)
        else:
            for rows in self.batches():
                with ablated(self.model, self.saes, masks, *self.references(rows, list(masks))):
                    add(rows)
        all_reduce([total])
        return total.item() / self.task.n_examples

    def metric_keeping(self, masks: Masks) -> float:
        """The mean metric with every node outside ``masks`` ablated."""
        return self.metric_removing(complement(masks))

    def faithfulness(self, circuit: list[Node | Site]) -> float:
        """F of a circuit (nodes, sites, or both): everything outside it ablated."""
        return self.ref.of(self.metric_keeping(circuit_masks(circuit, self.saes, self.n_pos)))

    def completeness(self, circuit: list[Node | Site]) -> float:
        """F of the circuit's complement: the circuit itself ablated (~0: nothing left behind)."""
        return self.ref.of(self.metric_removing(circuit_masks(circuit, self.saes, self.n_pos)))
