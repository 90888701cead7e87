import json

import pytest
import torch

from circuits.errors import CircuitsError
from circuits.model import build_model
from tasks.builtin import make_task
from tasks.jsonl import load_task_jsonl
from tasks.tokenizer import build_tokenizer
from tests.helpers import tiny_config

TOK = build_tokenizer()
GOOD = [
    {
        "clean": "When Mary and John went to the store , John gave a book to",
        "corrupt": "When Alice and Bob went to the store , Carol gave a book to",
        "answer": "Mary",
        "wrong_answer": "John",
    },
    {"clean": "the dog near the cats", "corrupt": "the dogs near the cats", "answer": "runs", "wrong_answer": "run"},
]


def write(tmp_path, rows) -> str:
    path = tmp_path / "task.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_loads_and_pads_prompts_of_different_lengths(tmp_path):
    task = make_task(write(tmp_path, GOOD), TOK)
    assert task.n_examples == 2 and task.lengths.tolist() == [15, 6]
    assert task.clean[1, 6:].eq(TOK.pad_token_id).all()
    # the metric reads each example at its own last real position
    model = build_model(tiny_config())
    logits = model(task.clean)
    expected = torch.stack(
        [
            logits[0, 14, task.answer[0, 0]] - logits[0, 14, task.wrong[0, 0]],
            logits[1, 5, task.answer[1, 0]] - logits[1, 5, task.wrong[1, 0]],
        ]
    )
    assert torch.allclose(task.metric_per_example(logits), expected)
    # right padding does not change the real positions (causal attention)
    alone = model(task.clean[1:, :6])
    assert torch.allclose(alone[0, 5], logits[1, 5], atol=1e-5)


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", r"task.jsonl:2: not JSON"),
        (
            json.dumps({"clean": "Mary", "answer": "Mary", "wrong_answer": "John"}),
            r"task.jsonl:2: missing or empty field 'corrupt'",
        ),
        (json.dumps({**GOOD[0], "answer": "Mary John"}), r"task.jsonl:2: answer 'Mary John' is 2 tokens, not one"),
        (json.dumps({**GOOD[0], "clean": "When Mary and Jonh went"}), r"task.jsonl:2: word 'Jonh'"),
        (
            json.dumps({**GOOD[0], "corrupt": "When Alice and Bob went"}),
            r"task.jsonl:2: clean has 15 tokens and corrupt 6",
        ),
        ("[1, 2]", r"task.jsonl:2: expected a JSON object"),
    ],
)
def test_bad_lines_name_the_line(tmp_path, line, message):
    path = write(tmp_path, [GOOD[0], line])
    with pytest.raises(CircuitsError, match=message):
        load_task_jsonl(path, TOK)


def test_empty_or_missing_file(tmp_path):
    with pytest.raises(CircuitsError, match="no tasks in the file"):
        load_task_jsonl(write(tmp_path, [""]), TOK)
    with pytest.raises(CircuitsError, match="no such task file"):
        load_task_jsonl(tmp_path / "nope.jsonl", TOK)
