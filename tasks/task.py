"""A behavioural task: clean and corrupt prompts, the answers, and the metric that scores them.

Sign convention, used everywhere in this project: the metric is larger when the model does
the task better (e.g. logit(answer) - logit(wrong answer)), so a node effect
m(patched) - m(clean) is negative for nodes the behaviour relies on.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, get_args

import torch

from circuits.core.errors import CircuitsError

Metric = Literal["logit_diff", "prob_diff", "logprob", "kl"]
METRICS: tuple[str, ...] = get_args(Metric)
# the fields that hold one entry per example, cut by `Task.subset`
PER_EXAMPLE = ("clean", "corrupt", "answer", "wrong", "lengths", "prompts", "corrupt_prompts", "reference")


@dataclass
class Task:
    """Token batches and answers for one behaviour.

    ``clean`` and ``corrupt`` are ``[batch, pos]`` token ids (BOS first, equal lengths).
    ``answer`` / ``wrong`` are ``[batch, k]`` token ids padded with -1:

    * ``logit_diff``: logit(answer[:, 0]) - logit(wrong[:, 0]) at the last position;
    * ``prob_diff``: sum of p(answer ids) - sum of p(wrong ids) at the last position;
    * ``logprob``: mean over k of log p(answer[:, k]) at position ``score_pos[k]``;
    * ``kl``: -KL(p_clean || p) at the last position, summed over the vocabulary, where
      ``reference`` holds the clean model's log-probabilities there (``with_reference``).
      It is 0 on the clean run and its gradient there is 0, so AtP scores nothing under it:
      use IG or exact patching.
    ``position_labels`` names each position when all prompts share one template; ``roles``
    maps a role (e.g. "IO", "S1") to its per-example position when roles move between
    templates (BABA vs ABBA). ``lengths`` holds each prompt's token count when prompts of
    different lengths are right-padded into one batch (then the "last position" is
    ``lengths - 1``, the same for an example's clean and corrupt prompt); None = unpadded.
    ``vars`` holds the variables each clean prompt was made from (e.g. ``{"IO": [...], "S":
    [...]}``, one string per example): what feature families are named by (``circuits.circuit.
    families``).
    """

    name: str
    clean: torch.Tensor
    corrupt: torch.Tensor
    answer: torch.Tensor
    wrong: torch.Tensor
    metric: Metric = "logit_diff"
    score_pos: torch.Tensor | None = None
    position_labels: tuple[str, ...] | None = None
    roles: dict[str, torch.Tensor] = field(default_factory=dict)
    lengths: torch.Tensor | None = None
    prompts: list[str] = field(default_factory=list)
    corrupt_prompts: list[str] = field(default_factory=list)
    reference: torch.Tensor | None = None
    vars: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise CircuitsError(f"task {self.name}: unknown metric {self.metric!r} (use {', '.join(METRICS)})")
        if self.clean.shape != self.corrupt.shape:
            raise CircuitsError(
                f"task {self.name}: clean {tuple(self.clean.shape)} and corrupt "
                f"{tuple(self.corrupt.shape)} token batches differ in shape"
            )
        if self.position_labels is not None and len(self.position_labels) != self.n_pos:
            raise CircuitsError(
                f"task {self.name}: {len(self.position_labels)} position labels for {self.n_pos} positions"
            )
        for key, values in self.vars.items():
            if len(values) != self.n_examples:
                raise CircuitsError(
                    f"task {self.name}: variable {key!r} has {len(values)} values for {self.n_examples} prompts"
                )

    @property
    def n_examples(self) -> int:
        return self.clean.shape[0]

    @property
    def n_pos(self) -> int:
        return self.clean.shape[1]

    def check_fits(self, n_ctx: int) -> None:
        """Raise if the prompts are longer than a model's context."""
        if self.n_pos > n_ctx:
            raise CircuitsError(f"task {self.name}: prompts are {self.n_pos} tokens but the model's n_ctx is {n_ctx}")

    def subset(self, index: slice | torch.Tensor) -> Task:
        """The same task restricted to some examples (for batching)."""
        cut = {name: _take(getattr(self, name), index) for name in PER_EXAMPLE}
        roles = {k: v[index] for k, v in self.roles.items()}
        return replace(self, **cut, roles=roles, vars={k: _take(v, index) for k, v in self.vars.items()})

    def with_metric(self, metric: str) -> Task:
        """The same prompts scored by another metric (e.g. ``kl``)."""
        return replace(self, metric=metric, reference=None)

    def with_reference(self, clean_logits: torch.Tensor) -> Task:
        """For the ``kl`` metric: the same task holding the clean run's last-position
        log-probabilities (a no-op for other metrics or when already set)."""
        if self.metric != "kl" or self.reference is not None:
            return self
        return replace(self, reference=self._last(clean_logits).detach().log_softmax(-1))

    def metric_per_example(self, logits: torch.Tensor) -> torch.Tensor:
        """The metric of each example, from logits ``[batch, pos, vocab]``: ``[batch]``."""
        answer, wrong = self.answer.to(logits.device), self.wrong.to(logits.device)
        if self.metric == "logit_diff":
            last = self._last(logits)
            return (last.gather(-1, answer[:, :1]) - last.gather(-1, wrong[:, :1])).squeeze(-1)
        if self.metric == "prob_diff":
            probs = self._last(logits).softmax(-1)
            return _sum_ids(probs, answer) - _sum_ids(probs, wrong)
        if self.metric == "kl":
            if self.reference is None:
                raise CircuitsError(
                    f"task {self.name}: the kl metric needs the clean run's log-probabilities (Task.with_reference)"
                )
            ref = self.reference.to(logits.device)
            return -(ref.exp() * (ref - self._last(logits).log_softmax(-1))).sum(-1)
        logprobs = logits[:, self.score_pos.to(logits.device)].log_softmax(-1)  # [batch, k, vocab]
        return logprobs.gather(-1, answer.unsqueeze(-1)).squeeze(-1).mean(-1)

    def _last(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits at each example's last real position: ``[batch, vocab]``."""
        if self.lengths is None:
            return logits[:, -1]
        return logits[torch.arange(logits.shape[0]), self.lengths.to(logits.device) - 1]

    def correct_per_example(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-example accuracy in [0, 1]: the metric favours the answer (logit/prob diff > 0),
        or, for ``logprob``, the fraction of scored positions whose top token is the answer."""
        if self.metric == "kl":  # top-1 token agrees with the clean run's
            return (self._last(logits).argmax(-1) == self.reference.to(logits.device).argmax(-1)).float()
        if self.metric == "logprob":
            top = logits[:, self.score_pos.to(logits.device)].argmax(-1)
            return (top == self.answer.to(logits.device)).float().mean(-1)
        return (self.metric_per_example(logits) > 0).float()


def _sum_ids(probs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Sum of ``probs[b, ids[b, j]]`` over the non-padding (>= 0) ids of each row."""
    valid = ids >= 0
    return (probs.gather(-1, ids.clamp(min=0)) * valid).sum(-1)


def _take(items: list | torch.Tensor | None, index: slice | torch.Tensor) -> list | torch.Tensor | None:
    """``items`` (a tensor, a list, or None / empty for a field the task does not use) at ``index``."""
    if items is None or isinstance(items, torch.Tensor):
        return None if items is None else items[index]
    if not items or isinstance(index, slice):
        return items[index] if items else items
    if index.dtype == torch.bool:  # a mask picks the rows where it is True
        index = index.nonzero().flatten()
    return [items[i] for i in index.tolist()]
