"""An edit chosen for what it does to everything else: the circuit's latents (or families) whose
edit removes the target behaviour with the least collateral.

The objective, on the optimisation data only (the target task's discovery prompts, the retain
tasks' prompts at the same seed, and retain documents of toy-corpus text drawn with their own
key): what is left of the target behaviour (`Objective.left`: 0 when the model no longer
prefers the answer), plus ``weight`` x the retain tasks' mean |relative change|, plus
``worst_weight`` x the largest one (every task must stay put, not only the average), plus
``text_weight`` x the mean per-token KL on the retain text.

Two searches minimise it. Over latents, `gradient_search`: a gate in [0, 1] per candidate
latent moves it from its value towards the edit's (zero or its corpus mean) at every position;
the gates are trained by gradient on the objective plus a size penalty, their temperature
annealed so they end near 0 or 1; the latents ranked by gate are then cut at the prefix with
the lowest objective measured with the real (all-or-nothing) edit, and pruned one at a time
while that lowers it. Over families, `greedy_search`: forward selection, at each step the unit
whose addition lowers the objective most. `edit_report` then checks either on held-out prompts
and held-out text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import networkx as nx
import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuits.circuit.edit import (
    INDIFFERENT_AT_ZERO,
    Edit,
    FeatureEdit,
    edited,
    labelled_documents,
    next_token_logprobs,
)
from circuits.circuit.families import family_nodes
from circuits.circuit.graph import nodes_of
from circuits.circuit.record import record_of
from circuits.core.config import Config, Result
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
    """An edit on the optimisation data: the target's relative change and what is left of it
    (see `Objective.left`), the retain tasks' mean and largest |relative change|, the retain
    text's KL (nats per token) and the objective."""

    units: list[str]
    target_change: float
    left: float
    unintended: float
    worst: float
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
    """The search's objective (see the module docstring), its references computed once.
    ``others`` are the retain tasks (every other built-in task by default); ``text_weight`` 0
    leaves the retain text out."""

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
        worst_weight: float = 2.0,
    ):
        self.model, self.saes, self.target, self.others = model, saes, target, others
        self.weight, self.text_weight, self.worst_weight = weight, text_weight, worst_weight
        self.tokens, _ = labelled_documents(model.tokenizer, RETAIN_KEY, n_docs, min(seq_len, model.cfg.n_ctx))
        with torch.no_grad():
            self.text_before = model(self.tokens)[:, :-1].log_softmax(-1)
            clean = {name: t.metric_per_example(model(t.clean)) for name, t in self.tasks.items()}
            self.before = {name: _clean_and_span(model, t, clean[name]) for name, t in self.tasks.items()}
            self.preference = float(torch.relu(clean["target"]).mean())

    @property
    def tasks(self) -> dict[str, Task]:
        return {"target": self.target, **self.others}

    def score(self, edit: Edit, names: list[str]) -> EditScore:
        """The objective of ``edit`` (applied through the splice)."""
        with torch.no_grad(), edited(self.model, self.saes, edit):
            metrics = self.metrics()
            after = next_token_logprobs(self.model, self.tokens, edit)
        parts = self.parts(metrics, after)
        return EditScore(names, *(float(v) for v in parts))

    def metrics(self) -> dict[str, torch.Tensor]:
        """Each task's per-prompt clean metric under the hooks now on the model."""
        return {name: task.metric_per_example(self.model(task.clean)) for name, task in self.tasks.items()}

    def parts(self, metrics: dict[str, torch.Tensor], after: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """From `metrics` and the retain text's log-probabilities: the target's
        relative change, what is left of it, the retain tasks' mean |relative change|, the worst
        one, text KL and the objective (differentiable: the gradient search's loss)."""
        change = {n: (m.mean() - self.before[n][0]) / self.before[n][1] for n, m in metrics.items()}
        before = self.text_before
        kl = (before.exp() * (before - after)).sum(-1).mean()
        moved = torch.stack([change[n].abs() for n in self.others]) if self.others else torch.zeros(1)
        left = self.left(metrics["target"], change["target"])
        value = left + self.weight * moved.mean() + self.worst_weight * moved.max() + self.text_weight * kl
        return change["target"], left, moved.mean(), moved.max(), kl, value

    def left(self, metric: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
        """What is left of the target behaviour: for a metric that is 0 at no preference (logit
        / probability difference), the mean over prompts of the preference each still has
        (its metric floored at 0) over that mean before — 0 when no prompt prefers the answer
        any more (removing agreement is indifference, not the flipped number SVA's corrupt
        prompts give; and a mean of 0 made of flipped and unflipped prompts is not removal);
        otherwise 1 + the change as a share of the clean - corrupt range, floored at 0."""
        if self.target.metric in INDIFFERENT_AT_ZERO and self.preference > 0:
            return torch.relu(metric).mean() / self.preference
        return torch.relu(1.0 + change)


def _clean_and_span(model: HookedTransformer, task: Task, clean: torch.Tensor) -> tuple[float, float]:
    """The mean clean metric (from per-prompt ``clean``) and the clean - corrupt range."""
    corrupt = float(task.metric_per_example(model(task.corrupt)).mean())
    return float(clean.mean()), abs(float(clean.mean()) - corrupt) or 1.0


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


@dataclass
class GateSchedule(Config):
    """How `gradient_search` trains its gates: ``steps`` of Adam at ``lr``; ``size`` x the sum
    of the gates joins the objective; the temperature falls from 1 to ``final_temperature``
    over the second half (gates end near 0 or 1, so the all-or-nothing edit is what was
    optimised)."""

    label: ClassVar[str] = "gate schedule"

    steps: int = 200
    lr: float = 0.1
    size: float = 0.01
    final_temperature: float = 0.05

    def validate(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.size < 0 or not 0 < self.final_temperature <= 1:
            raise CircuitsError(
                "gate schedule: steps >= 1, lr > 0, size >= 0 and 0 < final_temperature <= 1 "
                f"(got {self.steps}, {self.lr}, {self.size}, {self.final_temperature})"
            )

    def temperature(self, step: int) -> float:
        half = self.steps // 2
        if step < half:
            return 1.0
        return self.final_temperature ** ((step - half) / max(self.steps - half - 1, 1))


def latent_candidates(
    graph: nx.DiGraph, action: str = "zero", means: dict[str, torch.Tensor] | None = None
) -> list[FeatureEdit]:
    """The circuit's latents (each hook/latent once, whatever its positions), each edited at
    every position — how an edit runs on text, where the prompt's positions do not exist."""
    if action == "mean" and means is None:
        raise CircuitsError("a mean edit needs the features' mean activations")
    if action not in ("zero", "mean"):
        raise CircuitsError(f"the edit search switches latents off ('zero') or to their mean ('mean'), not {action!r}")
    keys = sorted({(n.hook, n.latent) for n in nodes_of(graph).values() if n.latent is not None and not n.is_embed})
    if not keys:
        raise CircuitsError("the circuit has no SAE latents to edit")
    return [FeatureEdit(h, i, action, None if action == "zero" else float(means[h][i])) for h, i in keys]


def gradient_search(
    objective: Objective,
    candidates: list[FeatureEdit],
    budget: int,
    schedule: GateSchedule | None = None,
    progress: bool = True,
) -> tuple[Edit, list[EditScore]]:
    """The edit of at most ``budget`` of ``candidates`` (each at every position) that
    `objective` rates best (module docstring). Returns the edit and the real edit's score for
    each prefix tried, then each pruning step, the chosen one last."""
    if budget < 1:
        raise CircuitsError(f"an edit's budget must be at least 1 latent, got {budget}")
    schedule = schedule or GateSchedule()
    gates = _train_gates(objective, candidates, schedule, progress)
    order = [candidates[i] for i in gates.argsort(descending=True).tolist()]
    n_on = int((gates > 0.5).sum())
    cap = min(budget, len(order))
    sizes = sorted({min(max(k, 1), cap) for k in range(n_on - 5, n_on + 6)})  # around the gates left on
    history = [objective.score(_latent_edit(order[:k]), _names(order[:k])) for k in sizes]
    best = min(history, key=lambda s: s.objective)
    chosen = order[: len(best.units)]
    while len(chosen) > 1:  # prune: drop the latent whose removal lowers the objective most
        trials = [(objective.score(_latent_edit(rest), _names(rest)), rest) for rest in _without_each(chosen)]
        score, rest = min(trials, key=lambda t: t[0].objective)
        if score.objective >= best.objective:
            break
        best, chosen = score, rest
        history.append(score)
    history.append(best)
    return _latent_edit(chosen), history


def _train_gates(
    objective: Objective, candidates: list[FeatureEdit], schedule: GateSchedule, progress: bool
) -> torch.Tensor:
    """Train one gate per candidate (see `GateSchedule`); returns the final gates ``[n]``."""
    model = objective.model
    logits = torch.full((len(candidates),), -3.0, requires_grad=True)
    temperature = [1.0]
    hooks = _gate_hooks(objective.saes, candidates, logits, temperature)
    optimiser = torch.optim.Adam([logits], lr=schedule.lr)
    for step in tqdm(range(schedule.steps), desc="edit gates", disable=not progress):
        temperature[0] = schedule.temperature(step)
        with model.hooks(fwd_hooks=hooks):
            metrics = objective.metrics()
            after = model(objective.tokens)[:, :-1].log_softmax(-1)
        loss = objective.parts(metrics, after)[-1] + schedule.size * torch.sigmoid(logits / temperature[0]).sum()
        (grad,) = torch.autograd.grad(loss, [logits])  # the model's own parameters get no .grad
        optimiser.zero_grad()
        logits.grad = grad
        optimiser.step()
    return torch.sigmoid(logits / temperature[0]).detach()


def _gate_hooks(
    saes: SAESet, candidates: list[FeatureEdit], logits: torch.Tensor, temperature: list[float]
) -> list[tuple[str, Callable]]:
    """TransformerLens hook functions that apply each candidate's edit by its gate
    ``sigmoid(logit / temperature[0])``, at every position: the splice's edit (f' - f) W_dec
    with f' = f + g (value - f), so a gate at 1 is the candidate's edit and at 0 none."""
    by_hook: dict[str, list[int]] = {}
    for j, fe in enumerate(candidates):
        by_hook.setdefault(fe.hook, []).append(j)
    values = torch.tensor([0.0 if fe.action == "zero" else fe.value for fe in candidates])

    def gate_hook(hook_name: str) -> Callable:
        rows = torch.tensor(by_hook[hook_name])
        latents = torch.tensor([candidates[j].latent for j in by_hook[hook_name]])
        sae = saes[hook_name]

        def hook(x: torch.Tensor, hook) -> torch.Tensor:  # noqa: ARG001 (TransformerLens passes the HookPoint)
            f = sae.encode(x)[..., latents]
            g = torch.sigmoid(logits[rows] / temperature[0])
            return x + (g * (values[rows] - f)) @ sae.W_dec[latents]

        return hook

    return [(h, gate_hook(h)) for h in by_hook]


def optimise_edit(
    graph: nx.DiGraph,
    model: HookedTransformer,
    saes: SAESet,
    task_name: str,
    units: str = "latents",
    action: str = "zero",
    budget: int | None = None,
    retain: list[str] | None = None,
    schedule: GateSchedule | None = None,
    n_prompts: int = 64,
    n_docs: int = 32,
    progress: bool = True,
) -> tuple[Edit, list[EditScore]]:
    """The edit of ``graph``'s latents (`gradient_search`; at most ``budget``, default 50) or
    families (`greedy_search`; default 5) that removes ``task_name`` with the least collateral
    on ``retain`` (built-in task names and/or ``"text"``; default every other built-in task
    and text), all on optimisation data: ``n_prompts`` discovery prompts (seed 0) of the
    target, twice as many of each retain task, ``n_docs`` retain documents of 64 tokens."""
    from circuits.circuit.edit import mean_activations
    from tasks.builtin import BUILTIN_TASKS, make_task
    from tasks.corpus import corpus_tokens

    budget = budget if budget is not None else (50 if units == "latents" else 5)
    if budget < 1:
        raise CircuitsError(f"an edit's budget (--budget) must be at least 1, got {budget}")
    target = make_task(task_name, model.tokenizer, n=n_prompts, seed=0)
    retain = retain if retain is not None else [t for t in BUILTIN_TASKS if t != target.name] + ["text"]
    others = {t: make_task(t, model.tokenizer, n=2 * n_prompts, seed=0) for t in retain if t != "text"}
    text_weight = 1.0 if "text" in retain else 0.0
    objective = Objective(model, saes, target, others, n_docs=n_docs, seq_len=64, text_weight=text_weight)
    means = None
    if action == "mean":
        tokens = corpus_tokens(model.tokenizer, "edit-means", 256, min(64, model.cfg.n_ctx))
        means = mean_activations(model, saes, tokens, list(saes))
    if units == "latents":
        return gradient_search(objective, latent_candidates(graph, action, means), budget, schedule, progress)
    return greedy_search(family_units(graph, action, means), objective.score, budget, progress)


def _latent_edit(features: list[FeatureEdit]) -> Edit:
    return Edit(list(features), f"optimised: {len(features)} latents" if features else "nothing")


def _names(features: list[FeatureEdit]) -> list[str]:
    return [f"{fe.hook}/{fe.latent}" for fe in features]


def _without_each(features: list[FeatureEdit]) -> Iterator[list[FeatureEdit]]:
    for i in range(len(features)):
        yield features[:i] + features[i + 1 :]


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
