"""Model editing: switch SAE features off (or clamp / scale them) and measure what changes.

An edit is a list of features ``(hook, latent, positions)`` with an action: ``zero``,
``mean`` (its mean activation over the toy corpus, stored in ``value`` when the edit is
made), ``clamp`` (to ``value``) or ``scale`` (by ``value``). Applied through the splice, an
edit changes the hook's output by exactly (f' - f) W_dec for each edited latent; the error
term and every other latent stay as computed. Apply it in a ``with edited(...)`` block, or
``attach`` it until its handle's ``remove()``. Edits are saved as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import networkx as nx
import torch
from transformer_lens import HookedTransformer

from circuits.errors import CircuitsError
from circuits.files import read_json, write_atomic
from circuits.graph import METRIC
from circuits.splice import NodeEdit, spliced
from circuits.values import NodeValues
from sae.saeset import SAESet

ACTIONS = ("zero", "mean", "clamp", "scale")


@dataclass
class FeatureEdit:
    """One latent of one hook's SAE; ``positions`` None = every position, negative positions
    count from the end (-1: the last token)."""

    hook: str
    latent: int
    action: str = "zero"
    value: float | None = None
    positions: list[int] | None = None


@dataclass
class Edit:
    """Features to change, applied together."""

    features: list[FeatureEdit] = field(default_factory=list)
    description: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "edit") -> Edit:
        if not isinstance(data, dict) or not isinstance(data.get("features"), list):
            raise CircuitsError(f"{where}: expected an object with a \"features\" list")
        features = []
        for i, item in enumerate(data["features"]):
            if not isinstance(item, dict):
                raise CircuitsError(f"{where}: features[{i}] is not an object")
            unknown = set(item) - set(FeatureEdit.__dataclass_fields__)
            missing = {"hook", "latent"} - set(item)
            if unknown or missing:
                what = f"unknown field {sorted(unknown)[0]!r}" if unknown else f"missing field {sorted(missing)[0]!r}"
                raise CircuitsError(f"{where}: features[{i}]: {what}")
            features.append(FeatureEdit(**item))
        return cls(features, str(data.get("description", "")))

    def save(self, path: str | Path) -> Path:
        """Write as JSON, atomically."""
        return write_atomic(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Edit:
        return cls.from_dict(read_json(path, "edit file"), where=f"edit file {path}")

    def check(self, saes: SAESet) -> Edit:
        """Raise one line for a hook without an SAE, a latent out of range or a bad action."""
        for i, fe in enumerate(self.features):
            name = f"edit feature {i} ({fe.hook}/{fe.latent})"
            if fe.hook not in saes:
                raise CircuitsError(f"{name}: the SAE set has no SAE at {fe.hook}")
            if not isinstance(fe.latent, int) or not 0 <= fe.latent < saes[fe.hook].cfg.d_sae:
                raise CircuitsError(f"{name}: latent out of range (the SAE has {saes[fe.hook].cfg.d_sae})")
            if fe.action not in ACTIONS:
                raise CircuitsError(f"{name}: unknown action {fe.action!r} (use {', '.join(ACTIONS)})")
            if fe.action != "zero" and fe.value is None:
                raise CircuitsError(f"{name}: action {fe.action!r} needs a value")
        return self


def _hook_edit(features: list[FeatureEdit]) -> NodeEdit:
    def edit(nodes: NodeValues) -> NodeValues:
        f = nodes.latents.clone()
        for fe in features:
            n = f.shape[1]
            pos = slice(None) if fe.positions is None else [p % n for p in fe.positions if -n <= p < n]
            current = f[:, pos, fe.latent]
            if fe.action == "zero":
                new = torch.zeros_like(current)
            elif fe.action == "scale":
                new = current * fe.value
            else:  # mean, clamp
                new = torch.full_like(current, fe.value)
            f[:, pos, fe.latent] = new
        return NodeValues(f, nodes.error)
    return edit


def _edits(edit: Edit) -> dict[str, NodeEdit]:
    by_hook: dict[str, list[FeatureEdit]] = {}
    for fe in edit.features:
        by_hook.setdefault(fe.hook, []).append(fe)
    return {h: _hook_edit(fs) for h, fs in by_hook.items()}


@contextmanager
def edited(model: HookedTransformer, saes: SAESet, edit: Edit) -> Iterator[None]:
    """Forward passes inside the block run with ``edit`` applied; hooks removed on exit."""
    edits = _edits(edit.check(saes))
    with spliced(model, saes, hooks=list(edits), edits=edits):
        yield


class AttachedEdit:
    """An edit attached to a model until ``remove()``."""

    def __init__(self, model: HookedTransformer, saes: SAESet, edit: Edit):
        self._stack = edited(model, saes, edit)
        self._stack.__enter__()
        self._active = True

    def remove(self) -> None:
        if self._active:
            self._stack.__exit__(None, None, None)
            self._active = False


def attach(model: HookedTransformer, saes: SAESet, edit: Edit) -> AttachedEdit:
    """Apply ``edit`` to every forward pass of ``model`` until ``handle.remove()``."""
    return AttachedEdit(model, saes, edit)


@torch.no_grad()
def mean_activations(model: HookedTransformer, saes: SAESet, tokens: torch.Tensor,
                     hooks: list[str]) -> dict[str, torch.Tensor]:
    """Mean latent activation per hook over ``tokens`` (BOS excluded): ``[d_sae]``."""
    with spliced(model, saes, hooks=hooks) as nodes:
        model(tokens)
    return {h: nodes[h].latents[:, 1:].mean((0, 1)).detach() for h in hooks}


def edit_from_circuit(graph: nx.DiGraph, top: int, action: str = "zero",
                      means: dict[str, torch.Tensor] | None = None, everywhere: bool = False) -> Edit:
    """The ``top`` features the circuit's behaviour relies on most (most negative summed
    effect over their positions). Each is switched off where the circuit uses it, as
    positions counted from the end of the prompt (END = -1), or at every position with
    ``everywhere`` (or when the circuit sums over positions)."""
    totals: dict[tuple[str, int], float] = {}
    where: dict[tuple[str, int], set[int]] = {}
    n_pos = len(graph.graph.get("position_labels") or [])
    for n, a in graph.nodes(data=True):
        if n != METRIC and a.get("latent") is not None:
            key = (a["hook"], a["latent"])
            totals[key] = totals.get(key, 0.0) + a["effect"]
            if a.get("position") is not None and n_pos:
                where.setdefault(key, set()).add(a["position"] - n_pos)
    chosen = sorted((k for k, v in totals.items() if v < 0), key=lambda k: totals[k])[:top]
    if action == "mean" and means is None:
        raise CircuitsError("a mean edit needs the features' mean activations")
    features = [FeatureEdit(h, i, action, None if action == "zero" else float(means[h][i]),
                            None if everywhere or (h, i) not in where else sorted(where[(h, i)]))
                for h, i in chosen]
    scope = "every position" if everywhere or not where else "the circuit's positions"
    return Edit(features, f"top {len(features)} features of the {graph.graph.get('task')} circuit, "
                          f"{action} at {scope}")


@torch.no_grad()
def greedy(model: HookedTransformer, tokens: torch.Tensor, n_new: int = 4) -> list[str]:
    """Greedy continuations (``n_new`` tokens, no KV cache so position-wise edits hold)."""
    for _ in range(n_new):
        nxt = model(tokens)[:, -1].argmax(-1, keepdim=True)
        tokens = torch.cat([tokens, nxt], dim=1)
    return [" ".join(model.to_str_tokens(row[-n_new:])) for row in tokens]


def edit_report(model: HookedTransformer, saes: SAESet, edit: Edit, task_name: str,
                n: int = 256, seed: int = 0, n_completions: int = 3) -> dict:
    """Metric and accuracy of every built-in task (and ``task_name``) before and after
    ``edit``; greedy completions of a few ``task_name`` prompts before and after."""
    from tasks.builtin import BUILTIN_TASKS, make_task

    from circuits.behaviour import evaluate_task

    names = [task_name] + [t for t in BUILTIN_TASKS if t != Path(task_name).stem]
    rows = {}
    for name in names:
        task = make_task(name, model.tokenizer, n=n, seed=seed)
        before = evaluate_task(model, task)
        with edited(model, saes, edit):
            after = evaluate_task(model, task)
        # the share of the behaviour's range (clean - corrupt metric) that the edit moved
        span = abs(before["clean_metric"] - before["corrupt_metric"]) or 1.0
        change = (after["clean_metric"] - before["clean_metric"]) / span
        rows[Path(name).stem] = {"before": before, "after": after, "relative_change": change}
    task = make_task(task_name, model.tokenizer, n=n_completions, seed=seed)
    prompts = task.clean[:n_completions]
    before = greedy(model, prompts)
    with edited(model, saes, edit):
        after = greedy(model, prompts)
    completions = [{"prompt": p, "before": b, "after": a} for p, b, a in zip(task.prompts, before, after)]
    return {"edit": edit.to_dict(), "task": Path(task_name).stem, "tasks": rows, "completions": completions}
