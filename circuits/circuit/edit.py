"""Model editing: switch SAE features off (or clamp / scale them) and measure what changes.

An edit is a list of features ``(hook, latent, positions)`` with an action: ``zero``,
``mean`` (its mean activation over the toy corpus, stored in ``value`` when the edit is
made), ``clamp`` (to ``value``) or ``scale`` (by ``value``). Applied through the splice, an
edit changes the hook's output by exactly (f' - f) W_dec for each edited latent; the error
term and every other latent stay as computed. Apply it in a ``with edited(...)`` block, or
``attach`` it until its handle's ``remove()``. Edits are saved as JSON.

Attached edits are independent: each `AttachedEdit` registers its own hook functions on the
hook points (``HookPoint.add_hook``, the splice's own hook function from
``circuits.attribution.splice.splice_hook``) and keeps the `LensHandle` of each, so ``remove()`` takes
off exactly its own hooks, in any order. (Entering ``model.hooks()`` and leaving it later,
as a handle once did, is wrong: TransformerLens removes a context's hooks by the context
*level* current when it exits, so attach A, attach B, remove A took B's hooks off and left
A's.) The handles carry no context level, so a ``with model.hooks(...)`` block (``edited``,
``spliced``, ``run_with_hooks``) leaves attached edits alone; ``model.reset_hooks()`` removes
them like every other non-permanent hook.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import networkx as nx
import torch
from transformer_lens import HookedTransformer

from circuits.attribution.splice import NodeEdit, splice_hook, spliced
from circuits.circuit.config import CIRCUIT_ACTIONS, Action
from circuits.circuit.evaluate import TaskScore, evaluate_task
from circuits.circuit.graph import METRIC
from circuits.circuit.record import record_of
from circuits.core.config import Config, Result
from circuits.core.errors import CircuitsError
from circuits.core.files import read_json, write_atomic
from circuits.core.values import NodeValues
from circuits.core.vocab import Latent
from sae.saeset import SAESet
from tasks.corpus import corpus_tokens
from tasks.language import sentences
from tasks.task import Task


@dataclass
class FeatureEdit(Config):
    """One latent of one hook's SAE; ``positions`` None = every position, negative positions
    count from the end (-1: the last token)."""

    label: ClassVar[str] = "edit feature"
    field_labels: ClassVar[dict[str, str]] = {"action": "action"}

    hook: str
    latent: int
    action: Action = "zero"
    value: float | None = None
    positions: list[int] | None = None

    def validate(self) -> None:
        if self.action != "zero" and self.value is None:
            raise CircuitsError(f"edit feature {self.hook}/{self.latent}: action {self.action!r} needs a value")


@dataclass
class Edit(Config):
    """Features to change, applied together."""

    label: ClassVar[str] = "edit"

    features: list[FeatureEdit]
    description: str = ""

    def save(self, path: str | Path) -> Path:
        """Write as JSON, atomically."""
        return write_atomic(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Edit:
        return cls.from_dict(read_json(path, "edit file"), where=f"edit file {path}")

    def check(self, saes: SAESet) -> Edit:
        """Raise one line for a hook without an SAE or a latent out of range (actions and
        values are checked when a `FeatureEdit` is made)."""
        for i, fe in enumerate(self.features):
            name = f"edit feature {i} ({fe.hook}/{fe.latent})"
            if fe.hook not in saes:
                raise CircuitsError(f"{name}: the SAE set has no SAE at {fe.hook}")
            if not isinstance(fe.latent, int) or not 0 <= fe.latent < saes[fe.hook].cfg.d_sae:
                raise CircuitsError(f"{name}: latent out of range (the SAE has {saes[fe.hook].cfg.d_sae})")
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
    """An edit attached to a model until ``remove()``: its own hooks, removed by their own
    handles (see the module docstring)."""

    def __init__(self, model: HookedTransformer, saes: SAESet, edit: Edit):
        edits = _edits(edit.check(saes))
        saes.check_model(model)
        nodes: dict = {}
        self._handles = []
        for hook, node_edit in edits.items():
            point = model.hook_dict[hook]
            point.add_hook(splice_hook(saes[hook], hook, nodes, node_edit))
            self._handles.append((point, point.fwd_hooks[-1]))  # add_hook appends its LensHandle

    def remove(self) -> None:
        """Take this edit's hooks off (again: nothing)."""
        for point, handle in self._handles:
            handle.hook.remove()
            point.fwd_hooks = [h for h in point.fwd_hooks if h is not handle]
        self._handles = []


def attach(model: HookedTransformer, saes: SAESet, edit: Edit) -> AttachedEdit:
    """Apply ``edit`` to every forward pass of ``model`` until ``handle.remove()``; handles
    of several attached edits can be removed in any order."""
    return AttachedEdit(model, saes, edit)


@torch.no_grad()
def mean_activations(
    model: HookedTransformer, saes: SAESet, tokens: torch.Tensor, hooks: list[str]
) -> dict[str, torch.Tensor]:
    """Mean latent activation per hook over ``tokens`` (BOS excluded): ``[d_sae]``."""
    with spliced(model, saes, hooks=hooks) as nodes:
        model(tokens)
    return {h: nodes[h].latents[:, 1:].mean((0, 1)).detach() for h in hooks}


def edit_from_circuit(
    graph: nx.DiGraph,
    top: int,
    action: str = "zero",
    means: dict[str, torch.Tensor] | None = None,
    everywhere: bool = False,
) -> Edit:
    """The ``top`` features the circuit's behaviour relies on most (most negative summed
    effect over their positions). Each is switched off where the circuit uses it, as
    positions counted from the end of the prompt (END = -1), or at every position with
    ``everywhere`` (or when the circuit sums over positions)."""
    totals: dict[Latent, float] = {}
    where: dict[Latent, set[int]] = {}
    record = record_of(graph)
    n_pos = record.n_positions
    for n, a in graph.nodes(data=True):
        if n != METRIC and a.get("latent") is not None:
            key = Latent(a["hook"], a["latent"])
            totals[key] = totals.get(key, 0.0) + a["effect"]
            if a.get("position") is not None and n_pos:
                where.setdefault(key, set()).add(a["position"] - n_pos)
    chosen = sorted((k for k, v in totals.items() if v < 0), key=lambda k: totals[k])[:top]
    if action not in CIRCUIT_ACTIONS:
        raise CircuitsError(f"unknown circuit edit action {action!r}: use {', '.join(CIRCUIT_ACTIONS)}")
    if action == "mean" and means is None:
        raise CircuitsError("a mean edit needs the features' mean activations")
    features = [
        FeatureEdit(
            k.hook,
            k.index,
            action,
            None if action == "zero" else float(means[k.hook][k.index]),
            None if everywhere or k not in where else sorted(where[k]),
        )
        for k in chosen
    ]
    scope = "every position" if everywhere or not where else "the circuit's positions"
    return Edit(features, f"top {len(features)} features of the {record.task} circuit, {action} at {scope}")


def circuit_edit(
    graph: nx.DiGraph,
    model: HookedTransformer,
    saes: SAESet,
    top: int,
    action: str = "zero",
    everywhere: bool = False,
) -> Edit:
    """`edit_from_circuit`, with the mean activations a ``mean`` edit sets its features to
    (over 256 sequences of the toy corpus)."""
    means = None
    if action == "mean":
        tokens = corpus_tokens(model.tokenizer, "edit-means", 256, min(64, model.cfg.n_ctx))
        means = mean_activations(model, saes, tokens, list(saes))
    return edit_from_circuit(graph, top, action, means, everywhere=everywhere)


@torch.no_grad()
def greedy(model: HookedTransformer, tokens: torch.Tensor, n_new: int = 4) -> list[str]:
    """Greedy continuations (``n_new`` tokens, no KV cache so position-wise edits hold)."""
    for _ in range(n_new):
        nxt = model(tokens)[:, -1].argmax(-1, keepdim=True)
        tokens = torch.cat([tokens, nxt], dim=1)
    return [" ".join(model.to_str_tokens(row[-n_new:])) for row in tokens]


@dataclass
class TaskChange(Result):
    """One task's score before and after an edit; ``relative_change`` is the change of the
    clean metric as a share of the behaviour's range (clean - corrupt metric, before);
    ``left``: for a metric that is 0 where the model has no preference (logit or probability
    difference), the share of the clean preference left (after / before: 0 = none left; an
    SVA edit that makes the model indifferent moves it -50 % of its range, since its corrupt
    prompts flip the number, but leaves 0 %)."""

    before: TaskScore
    after: TaskScore
    relative_change: float
    left: float | None = None


@dataclass
class Completion(Result):
    prompt: str
    before: str
    after: str


@dataclass
class TextChange(Result):
    """What an edit does to ordinary text: over held-out toy-corpus tokens of one sentence
    family (or ``all``), the next-token loss before and after (nats per token) and the mean
    per-token KL(before || after)."""

    family: str
    n_tokens: int
    loss_before: float
    loss_after: float
    kl: float


@dataclass
class Collateral(Result):
    """An edit's effect beside its aim: the target task's change, the mean |change| of every
    other built-in task, ``tpp`` = intended - unintended (SAEBench's targeted probe perturbation
    read for tasks: intended = -the target's relative change, so removing it all is 1), and the
    corpus text (per sentence family and all)."""

    intended: float
    unintended: float
    tpp: float
    text: list[TextChange]

    def text_of(self, family: str) -> TextChange:
        return next(t for t in self.text if t.family == family)


@dataclass
class EditReport(Result):
    """What `edit_report` measured; ``to_dict()`` is the JSON of ``circuits edit --json``.
    ``collateral``: beside the edit's aim; ``random``: the same for a random edit of the same
    size (same hooks, positions and action, other latents)."""

    edit: Edit
    task: str
    tasks: dict[str, TaskChange]
    completions: list[Completion]
    collateral: Collateral | None = None
    random: EditReport | None = None
    steering: Result | None = None  # a steering edit's success (``edit_search.Steering``)


def edit_report(
    model: HookedTransformer,
    saes: SAESet,
    edit: Edit,
    task_name: str,
    n: int = 256,
    seed: int = 0,
    n_completions: int = 3,
    with_random: bool = True,
) -> EditReport:
    """Metric and accuracy of every built-in task (and ``task_name``) before and after
    ``edit``; greedy completions of a few ``task_name`` prompts before and after; the
    collateral (other tasks, TPP, held-out corpus text per sentence family); and, with
    ``with_random``, the same report of a random edit of the same size."""
    from tasks.builtin import BUILTIN_TASKS, make_task

    names = [task_name] + [t for t in BUILTIN_TASKS if t != Path(task_name).stem]
    rows = {}
    for name in names:
        task = make_task(name, model.tokenizer, n=n, seed=seed)
        before = evaluate_task(model, task)
        with edited(model, saes, edit):
            after = evaluate_task(model, task)
        # the share of the behaviour's range (clean - corrupt metric) that the edit moved
        span = abs(before.clean_metric - before.corrupt_metric) or 1.0
        change = (after.clean_metric - before.clean_metric) / span
        rows[Path(name).stem] = TaskChange(before, after, change, preference_left(task, before, after))
    completions = []
    if n_completions:
        task = make_task(task_name, model.tokenizer, n=n_completions, seed=seed)
        prompts = task.clean[:n_completions]
        before = greedy(model, prompts)
        with edited(model, saes, edit):
            after = greedy(model, prompts)
        completions = [Completion(p, b, a) for p, b, a in zip(task.prompts, before, after, strict=False)]
    target = Path(task_name).stem
    report = EditReport(edit, target, rows, completions, collateral(rows, target, text_change(model, saes, edit)))
    if with_random:
        other = random_edit(edit, saes, random.Random(seed))
        report.random = edit_report(model, saes, other, task_name, n, seed, 0, with_random=False)
    return report


def preference_left(task: Task, before: TaskScore, after: TaskScore) -> float | None:
    """After / before clean metric for a metric that is 0 at no preference, else None."""
    if task.metric not in INDIFFERENT_AT_ZERO or before.clean_metric <= 0:
        return None
    return after.clean_metric / before.clean_metric


INDIFFERENT_AT_ZERO = ("logit_diff", "prob_diff")  # metrics whose 0 means no preference


def collateral(rows: dict[str, TaskChange], target: str, text: list[TextChange]) -> Collateral:
    """Intended (the target task's removal), unintended (the other tasks' mean |change|), TPP."""
    intended = -rows[target].relative_change
    others = [abs(r.relative_change) for name, r in rows.items() if name != target]
    unintended = sum(others) / len(others) if others else 0.0
    return Collateral(intended, unintended, intended - unintended, text)


TEXT_KEY = "edit-collateral/held-out"  # corpus documents no training step draws (training keys: train/...)


@torch.no_grad()
def text_change(
    model: HookedTransformer, saes: SAESet, edit: Edit, n_docs: int = 64, seq_len: int = 64, key: str = TEXT_KEY
) -> list[TextChange]:
    """The edit's effect on held-out toy-corpus text: per sentence family of the predicted
    token and over all, the next-token loss before and after and the mean KL(before || after).
    An edit at positions counted from the end (the circuit's END = -1) is applied as generation
    applies it: each next-token prediction from its own prefix, edited at that prefix's end."""
    tokens, families = labelled_documents(model.tokenizer, key, n_docs, min(seq_len, model.cfg.n_ctx))
    before = model(tokens)[:, :-1].log_softmax(-1)
    with edited(model, saes, edit):
        after = next_token_logprobs(model, tokens, edit)
    target = tokens[:, 1:].unsqueeze(-1)
    loss_b, loss_a = -before.gather(-1, target).squeeze(-1), -after.gather(-1, target).squeeze(-1)
    kl = (before.exp() * (before - after)).sum(-1)
    names = sorted({f for row in families for f in row} - {""})
    codes = torch.tensor([[names.index(f) if f else -1 for f in row] for row in families])[:, 1:]
    out = []
    for i, family in [*enumerate(names), (-1, "all")]:
        mask = codes >= 0 if family == "all" else codes == i
        n = int(mask.sum())
        out.append(
            TextChange(family, n, float(loss_b[mask].mean()), float(loss_a[mask].mean()), float(kl[mask].mean()))
        )
    return out


def next_token_logprobs(model: HookedTransformer, tokens: torch.Tensor, edit: Edit) -> torch.Tensor:
    """Next-token log-probabilities of ``tokens`` under ``edit`` (applied by the caller): one
    pass for an edit at every position; for positions counted from the end of the prompt, each
    prediction from its own prefix, as generation applies it."""
    if all(fe.positions is None for fe in edit.features):
        return model(tokens)[:, :-1].log_softmax(-1)
    return torch.stack([model(tokens[:, :t])[:, -1] for t in range(1, tokens.shape[1])], 1).log_softmax(-1)


def labelled_documents(tokenizer, key: str, n_docs: int, seq_len: int) -> tuple[torch.Tensor, list[list[str]]]:
    """``[n_docs, seq_len]`` tokens of toy-corpus documents (BOS first) and each token's
    sentence family (``""`` for BOS), a pure function of ``key``."""
    rng = random.Random(key)
    vocab = tokenizer.get_vocab()
    rows, labels = [], []
    for _ in range(n_docs):
        words, fams = [], []
        for family, sentence in sentences(rng, seq_len - 1):
            words += sentence
            fams += [family] * len(sentence)
        rows.append([vocab[tokenizer.bos_token]] + [vocab[w] for w in words[: seq_len - 1]])
        labels.append([""] + fams[: seq_len - 1])
    return torch.tensor(rows, dtype=torch.long), labels


def random_edit(edit: Edit, saes: SAESet, rng: random.Random) -> Edit:
    """An edit of the same size: each feature replaced by another latent of its hook (none
    edited twice, none of the edit's own), same positions, action and value."""
    taken = {(fe.hook, fe.latent) for fe in edit.features}
    features = []
    for fe in edit.features:
        pool = [i for i in range(saes[fe.hook].cfg.d_sae) if (fe.hook, i) not in taken]
        latent = rng.choice(pool)
        taken.add((fe.hook, latent))
        features.append(replace(fe, latent=latent))
    return Edit(features, f"random edit of the same size as: {edit.description or f'{len(features)} features'}")
