"""How well a model does each built-in task: accuracy and mean clean / corrupt metric."""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformer

from tasks.builtin import BUILTIN_TASKS, make_task
from tasks.task import Task


@torch.no_grad()
def evaluate_task(model: HookedTransformer, task: Task, batch_size: int = 256) -> dict[str, float]:
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
    return {
        "accuracy": torch.cat(correct).mean().item(),
        "clean_metric": torch.cat(clean).mean().item(),
        "corrupt_metric": torch.cat(corrupt).mean().item(),
    }


def evaluate_model(model: HookedTransformer, tasks: list[str] | None = None, n: int = 256,
                   seed: int = 0, split: str = "eval") -> dict:
    """``{"tasks": {name: {"accuracy", "clean_metric", "corrupt_metric"}}}`` on held-out prompts."""
    names = list(BUILTIN_TASKS) if tasks is None else tasks
    return {"tasks": {name: evaluate_task(model, make_task(name, model.tokenizer, n, seed, split))
                      for name in names}}


METRIC_NAMES = {"ioi": "logit diff", "sva": "logit diff", "greater_than": "prob diff",
                "induction": "log-prob"}


def format_table(result: dict) -> str:
    """The behaviour table as aligned text."""
    lines = [f"{'task':<14}{'metric':<12}{'accuracy':>10}{'clean':>10}{'corrupt':>10}"]
    for name, row in result["tasks"].items():
        lines.append(f"{name:<14}{METRIC_NAMES.get(name, ''):<12}{row['accuracy']:>10.3f}"
                     f"{row['clean_metric']:>10.3f}{row['corrupt_metric']:>10.3f}")
    return "\n".join(lines)
