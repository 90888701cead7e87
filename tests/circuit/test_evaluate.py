"""circuits.circuit.evaluate: task scores equal a direct computation; the JSON shape the README documents."""

import json
import re
from pathlib import Path

import pytest
import torch

from circuits.circuit import evaluate as behaviour
from circuits.circuit.evaluate import ModelEvaluation, TaskScore, evaluate_model, evaluate_task, format_table
from tasks.builtin import BUILTIN_TASKS, make_task
from tests.helpers import TOK, tiny_hooked_model

README = Path(__file__).resolve().parents[2] / "README.md"
N = 8


@pytest.fixture(scope="module")
def model():
    return tiny_hooked_model()


@pytest.fixture(scope="module")
def ioi():
    return make_task("ioi", TOK, n=N, split="train")


@pytest.fixture(scope="module")
def direct(model, ioi) -> dict[str, float]:
    """The scores of ``ioi`` computed here, in one batch, without circuits.circuit.evaluate."""
    with torch.no_grad():
        clean = model(ioi.clean).float()
        corrupt = model(ioi.corrupt).float()
    return {
        "accuracy": ioi.correct_per_example(clean).float().mean().item(),
        "clean_metric": ioi.metric_per_example(clean).mean().item(),
        "corrupt_metric": ioi.metric_per_example(corrupt).mean().item(),
    }


def _assert_matches(score: dict[str, float], direct: dict[str, float]) -> None:
    assert set(score) == set(direct)
    assert score["accuracy"] == pytest.approx(direct["accuracy"], abs=1e-6)
    assert score["clean_metric"] == pytest.approx(direct["clean_metric"], rel=1e-4, abs=1e-5)
    assert score["corrupt_metric"] == pytest.approx(direct["corrupt_metric"], rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("batch_size", [256, 5])  # one batch, and batches that do not divide n
def test_evaluate_task_equals_direct_computation(model, ioi, direct, batch_size):
    score = evaluate_task(model, ioi, batch_size=batch_size)
    assert isinstance(score, TaskScore)
    _assert_matches(score.to_dict(), direct)
    assert 0.0 <= score.accuracy <= 1.0


def _documented_eval_model_keys() -> tuple[str, set[str]]:
    """The top-level key and the per-task keys of `circuits eval-model --json` in README.md."""
    match = re.search(r"`circuits eval-model --json` prints\s*`(\{.*?\})`", README.read_text(), re.S)
    assert match, "README.md no longer documents `circuits eval-model --json`"
    shape = match.group(1)
    top = re.match(r'\{"(\w+)"', shape).group(1)
    inner = re.search(r'\{"\w+": \{([^{}]*)\}', shape).group(1)
    return top, set(re.findall(r'"(\w+)"', inner))


def test_evaluate_model_to_dict_has_readme_keys(model, direct):
    top, per_task = _documented_eval_model_keys()
    assert top == "tasks" and per_task == {"accuracy", "clean_metric", "corrupt_metric"}
    result = evaluate_model(model, ["ioi"], n=N, split="train")
    assert isinstance(result, ModelEvaluation)
    out = json.loads(json.dumps(result.to_dict()))  # JSON data, as the CLI prints it
    assert set(out) == {top}
    assert list(out[top]) == ["ioi"]
    assert set(out[top]["ioi"]) == per_task
    _assert_matches(out[top]["ioi"], direct)


def test_evaluate_model_passes_its_arguments_and_defaults_to_every_builtin_task(model, monkeypatch):
    seen = []

    def fake_evaluate_task(m, task):
        assert m is model
        seen.append(task)
        return TaskScore(accuracy=len(seen) / 10, clean_metric=1.0, corrupt_metric=0.0)

    monkeypatch.setattr(behaviour, "evaluate_task", fake_evaluate_task)
    result = evaluate_model(model, n=3, seed=1, split="train")
    assert list(result.tasks) == list(BUILTIN_TASKS)
    assert [t.n_examples for t in seen] == [3] * len(BUILTIN_TASKS)
    for name, task in zip(BUILTIN_TASKS, seen, strict=True):
        assert torch.equal(task.clean, make_task(name, TOK, 3, 1, "train").clean)
    assert [s.accuracy for s in result.tasks.values()] == pytest.approx([(i + 1) / 10 for i in range(len(seen))])


def test_format_table_mentions_every_task():
    scores = {
        name: TaskScore(accuracy=0.1 * i, clean_metric=1.0 + i, corrupt_metric=-1.0 - i)
        for i, name in enumerate(BUILTIN_TASKS)
    }
    table = format_table(ModelEvaluation(scores))
    lines = table.splitlines()
    assert len(lines) == 2 + len(scores)
    for name, line in zip(scores, lines[2:], strict=True):
        assert line.startswith(f"| {name} |")
        assert f"{scores[name].clean_metric:.3f}" in line
