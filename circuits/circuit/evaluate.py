"""How well a model does each built-in task: accuracy and mean clean / corrupt metric."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from circuits.core.config import Result
from circuits.core.tables import markdown_table
from tasks.builtin import BUILTIN_TASKS, make_task
from tasks.task import Task


@dataclass
class TaskScore(Result):
    """Accuracy and mean metric on the clean prompts, mean metric on the corrupt prompts."""

    accuracy: float
    clean_metric: float
    corrupt_metric: float


@dataclass
class ModelEvaluation(Result):
    """``to_dict()``: ``{"tasks": {name: {"accuracy", "clean_metric", "corrupt_metric"}}}``."""

    tasks: dict[str, TaskScore]


@torch.no_grad()
def evaluate_task(model: HookedTransformer, task: Task, batch_size: int = 256) -> TaskScore:
    """Accuracy and mean metric on the clean prompts, mean metric on the corrupt prompts."""
    task.check_fits(model.cfg.n_ctx)
    device = model.cfg.device
    correct, clean, corrupt = [], [], []
    for start in range(0, task.n_examples, batch_size):
        part = task.subset(slice(start, start + batch_size))
        logits = model(part.clean.to(device)).float().cpu()
        clean.append(part.metric_per_example(logits))
        correct.append(part.correct_per_example(logits))
        corrupt.append(part.metric_per_example(model(part.corrupt.to(device)).float().cpu()))
    return TaskScore(
        accuracy=torch.cat(correct).mean().item(),
        clean_metric=torch.cat(clean).mean().item(),
        corrupt_metric=torch.cat(corrupt).mean().item(),
    )


def evaluate_model(
    model: HookedTransformer, tasks: list[str] | None = None, n: int = 256, seed: int = 0, split: str = "eval"
) -> ModelEvaluation:
    """Every task in ``tasks`` (default: the built-in ones) on held-out prompts."""
    names = list(BUILTIN_TASKS) if tasks is None else tasks
    return ModelEvaluation(
        {name: evaluate_task(model, make_task(name, model.tokenizer, n, seed, split)) for name in names}
    )


METRIC_NAMES = {"ioi": "logit diff", "sva": "logit diff", "greater_than": "prob diff", "induction": "log-prob"}


def format_table(result: ModelEvaluation) -> str:
    """The behaviour table (markdown)."""
    return markdown_table(
        ["task", "metric", "accuracy", "clean", "corrupt"],
        [
            [name, METRIC_NAMES.get(name, ""), s.accuracy, s.clean_metric, s.corrupt_metric]
            for name, s in result.tasks.items()
        ],
    )
