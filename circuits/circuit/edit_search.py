"""An edit chosen for what it does to everything else: greedy search over a circuit's families
(or latents) for the edit that removes the target behaviour with the least collateral.

The objective, on the optimisation data only (the target task's discovery prompts, the other
built-in tasks' prompts at the same seed, and retain documents of toy-corpus text drawn with
their own key): what is left of the target behaviour (1 + its relative change, 0 when gone,
floored at 0), plus ``weight`` x the other tasks' mean |relative change|, plus ``text_weight``
x the mean per-token KL on the retain text. Greedy forward selection: at each step the unit
(a family, or a latent) whose addition lowers the objective most, until the budget or until
nothing lowers it. `edit_report` then checks the result on held-out prompts and held-out text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import networkx as nx
import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuits.circuit.edit import Edit, FeatureEdit, edited, labelled_documents, next_token_logprobs
from circuits.circuit.families import family_nodes
from circuits.circuit.record import record_of
from circuits.core.config import Result
from circuits.core.errors import CircuitsError
from sae.saeset import SAESet
from tasks.task import Task

RETAIN_KEY = "edit-search/retain"  # retain text: neither training's keys nor the held-out text's


@dataclass
class EditUnit:
    """What the search adds at once: a family's latents, or one latent."""

    name: str
    features: list[FeatureEdit]


@dataclass
class EditScore(Result):
    """An edit on the optimisation data: the target's relative change, the other tasks' mean
    |relative change|, the retain text's KL (nats per token) and the objective."""

    units: list[str]
    target_change: float
    unintended: float
    kl: float
    objective: float


def family_units(
    graph: nx.DiGraph, action: str = "zero", means: dict[str, torch.Tensor] | None = None
) -> list[EditUnit]:
    """One unit per family of a hierarchical circuit: its latents at their positions (counted
    from the end of the prompt), switched off (``zero``) or set to their corpus mean (``mean``,
    from ``means``: per hook, ``[d_sae]``)."""
    if action == "mean" and means is None:
        raise CircuitsError("a mean edit needs the features' mean activations")
    record = record_of(graph)
    h = record.hierarchy
    if h is None or not h.families:
        raise CircuitsError("an edit over families needs a circuit with families (discover --target-faithfulness)")
    nodes, n_pos = family_nodes(h), record.n_positions
    units = []
    for f in h.families:
        features = [
            FeatureEdit(
                nodes[m].hook,
                nodes[m].latent,
                action,
                None if action == "zero" else float(means[nodes[m].hook][nodes[m].latent]),
                _where(nodes[m].position, n_pos),
            )
            for m in f.members
        ]
        units.append(EditUnit(f"{f.id} {f.name}", features))
    return units


def _where(position: int | None, n_pos: int) -> list[int] | None:
    return None if position is None or not n_pos else [position - n_pos]


class Objective:
    """The search's objective (see the module docstring), its references computed once."""

    def __init__(
        self,
        model: HookedTransformer,
        saes: SAESet,
        target: Task,
        others: dict[str, Task],
        n_docs: int = 16,
        seq_len: int = 32,
        weight: float = 2.0,
        text_weight: float = 1.0,
    ):
        self.model, self.saes, self.target, self.others = model, saes, target, others
        self.weight, self.text_weight = weight, text_weight
        self.tokens, _ = labelled_documents(model.tokenizer, RETAIN_KEY, n_docs, min(seq_len, model.cfg.n_ctx))
        with torch.no_grad():
            self.text_before = model(self.tokens)[:, :-1].log_softmax(-1)
            self.before = {name: _clean_and_span(model, t) for name, t in {"target": target, **others}.items()}

    def score(self, edit: Edit, names: list[str]) -> EditScore:
        with torch.no_grad(), edited(self.model, self.saes, edit):
            change = {name: self._change(name, t) for name, t in {"target": self.target, **self.others}.items()}
            after = next_token_logprobs(self.model, self.tokens, edit)
        kl = float((self.text_before.exp() * (self.text_before - after)).sum(-1).mean())
        unintended = sum(abs(change[n]) for n in self.others) / max(len(self.others), 1)
        left = max(1.0 + change["target"], 0.0)
        value = left + self.weight * unintended + self.text_weight * kl
        return EditScore(names, change["target"], unintended, kl, value)

    def _change(self, name: str, task: Task) -> float:
        clean, span = self.before[name]
        return (_clean_metric(self.model, task) - clean) / span


def _clean_metric(model: HookedTransformer, task: Task) -> float:
    return float(task.metric_per_example(model(task.clean)).mean())


def _clean_and_span(model: HookedTransformer, task: Task) -> tuple[float, float]:
    clean = _clean_metric(model, task)
    corrupt = float(task.metric_per_example(model(task.corrupt)).mean())
    return clean, abs(clean - corrupt) or 1.0


def greedy_search(
    units: list[EditUnit],
    score: Callable[[Edit, list[str]], EditScore],
    budget: int,
    progress: bool = True,
) -> tuple[Edit, list[EditScore]]:
    """Greedy forward selection of at most ``budget`` units, each step adding the unit that
    lowers ``score``'s objective most; stops early when none lowers it. Returns the edit and
    the score after each step (the empty edit first)."""
    if budget < 1:
        raise CircuitsError(f"an edit's budget must be at least 1 unit, got {budget}")
    chosen: list[EditUnit] = []
    history = [score(Edit([]), [])]
    left = list(units)
    for _ in tqdm(range(min(budget, len(units))), desc="edit search", disable=not progress):
        best = None
        for unit in left:
            trial = chosen + [unit]
            s = score(_edit(trial), [u.name for u in trial])
            if best is None or s.objective < best[1].objective:
                best = (unit, s)
        if best is None or best[1].objective >= history[-1].objective:
            break
        chosen.append(best[0])
        left.remove(best[0])
        history.append(best[1])
    return _edit(chosen), history


def _edit(units: list[EditUnit]) -> Edit:
    features = [fe for u in units for fe in u.features]
    return Edit(features, "optimised: " + ", ".join(u.name for u in units) if units else "nothing")


@dataclass
class Steering(Result):
    """A steering edit's aim, on held-out prompts: the share whose top answer is the chosen
    value (``success``), before (``base``) and after the edit."""

    variable: str
    value: str
    n_prompts: int
    base: float
    success: float


def steer_edit(
    graph: nx.DiGraph, model: HookedTransformer, saes: SAESet, task: Task, variable: str, value: str
) -> Edit:
    """Clamp every latent of the families tracking ``variable`` to its mean activation over the
    prompts of ``task`` (discovery prompts) whose ``variable`` is ``value``: "make the model's
    answer ``value``" without a donor prompt."""
    from circuits.circuit.families import latent_values

    record = record_of(graph)
    h = record.hierarchy
    families = [f for f in (h.families if h is not None else []) if f.variable == variable]
    if not families:
        tracked = sorted({f.variable for f in (h.families if h is not None else []) if f.variable})
        raise CircuitsError(
            f"no family tracks {variable!r} (the circuit's families track: {', '.join(tracked) or 'nothing'})"
        )
    rows = [i for i, v in enumerate(task.vars.get(variable, [])) if v == value]
    if not rows:
        raise CircuitsError(
            f"no prompt of {task.name} has {variable} = {value!r}: the steering values are its mean there"
        )
    nodes, n_pos = family_nodes(h), record.n_positions
    members = [nodes[m] for f in families for m in f.members]
    hooks = list(dict.fromkeys(n.hook for n in members))
    means = {k: v[rows].mean(0) for k, v in latent_values(model, saes, task.clean, hooks).items()}
    features = [
        FeatureEdit(
            n.hook,
            n.latent,
            "clamp",
            float(means[n.hook][n.position if n.position is not None else -1, n.latent]),
            _where(n.position, n_pos),
        )
        for n in members
    ]
    return Edit(features, f"steer {variable} to {value!r}: {len(families)} families clamped")


@torch.no_grad()
def steering_success(
    model: HookedTransformer, saes: SAESet, edit: Edit, task: Task, variable: str, value: str
) -> Steering:
    """How often the top answer on ``task``'s prompts (held-out) is ``value``, before and after."""
    ids = model.tokenizer.encode(value, add_special_tokens=False)
    if len(ids) != 1:
        ids = model.tokenizer.encode(" " + value, add_special_tokens=False)
    if len(ids) != 1:
        raise CircuitsError(f"steer target {value!r} is {len(ids)} tokens, not one")
    keep = torch.tensor([v != value for v in task.vars.get(variable, [None] * task.n_examples)])
    part = task.subset(keep)
    base = float((part._last(model(part.clean)).argmax(-1) == ids[0]).float().mean())
    with edited(model, saes, edit):
        after = float((part._last(model(part.clean)).argmax(-1) == ids[0]).float().mean())
    return Steering(variable, value, part.n_examples, base, after)
