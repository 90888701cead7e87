import json

import pytest
import torch

from circuits.core.errors import CircuitsError
from circuits.toy.model import build_model
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
            r"task.jsonl:2: missing field 'corrupt'",
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


def test_byte_order_mark_and_windows_line_ends_are_accepted(tmp_path):
    plain = load_task_jsonl(write(tmp_path, GOOD), TOK)
    path = tmp_path / "windows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(json.dumps(g) for g in GOOD).encode() + b"\r\n")
    task = load_task_jsonl(path, TOK)
    assert torch.equal(task.clean, plain.clean) and task.prompts == plain.prompts


def test_text_that_is_not_utf8_names_the_file_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    lines = [json.dumps(GOOD[0]), json.dumps({**GOOD[0], "clean": "Café"}, ensure_ascii=False)]
    path.write_bytes("\n".join(lines).encode("latin-1"))
    with pytest.raises(CircuitsError, match=r"latin1.jsonl:2: not UTF-8 text \(byte 0xe9\)"):
        load_task_jsonl(path, TOK)
    binary = tmp_path / "picture.jsonl"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(CircuitsError, match=r"picture.jsonl:1: not UTF-8 text"):
        load_task_jsonl(binary, TOK)
    nul = tmp_path / "nul.jsonl"
    nul.write_bytes(b'{"clean": "a\x00"}\n')
    with pytest.raises(CircuitsError, match=r"nul.jsonl:1: a NUL byte: this is a binary file"):
        load_task_jsonl(nul, TOK)


@pytest.mark.parametrize(
    "value,message",
    [
        (7, "field 'answer' must be a string, not int"),
        ([], "field 'answer' must be a string, not list"),
        ("  ", "field 'answer' is empty"),
    ],
)
def test_a_field_of_the_wrong_type_says_so(tmp_path, value, message):
    with pytest.raises(CircuitsError, match=rf"task.jsonl:2: {message}"):
        load_task_jsonl(write(tmp_path, [GOOD[0], json.dumps({**GOOD[0], "answer": value})]), TOK)


def test_a_huge_file_streams_and_names_the_right_line(tmp_path, monkeypatch):
    path = tmp_path / "huge.jsonl"
    good = json.dumps(GOOD[0])
    path.write_text("\n".join([good] * 3000 + ["", good, "{oops"]) + "\n")
    monkeypatch.setattr(type(path), "read_text", lambda *a, **k: pytest.fail("the whole file was read at once"))
    with pytest.raises(CircuitsError, match=r"huge.jsonl:3003: not JSON"):
        load_task_jsonl(path, TOK)


def test_a_subword_tokenizer_spells_unknown_words_in_pieces(tmp_path):
    # GPT-2-style byte-level BPE: a word outside its vocabulary is several tokens, not an error
    from tests.hf_builders import gpt2_tokenizer

    bpe = gpt2_tokenizer()
    row = {k: v.replace("store", "Marylandish store") for k, v in GOOD[0].items()}
    assert len(bpe.tokenize(" Marylandish")) > 1
    task = load_task_jsonl(write(tmp_path, [row]), bpe)
    assert task.n_examples == 1 and task.clean.shape[1] > len(TOK.tokenize(GOOD[0]["clean"]))
    # the toy language's word-level tokenizer still refuses it, naming the word
    with pytest.raises(CircuitsError, match="word 'Marylandish'"):
        load_task_jsonl(write(tmp_path, [row]), TOK)


def test_vars_are_read_per_line_and_checked(tmp_path):
    rows = [
        {**GOOD[0], "vars": {"IO": "Mary", "S": "John", "order": "ABBA", "n": 2}},
        {
            **GOOD[0],
            "clean": GOOD[0]["clean"].replace("Mary", "Emma"),
            "answer": "Emma",
            "vars": {"S": "John", "IO": "Emma", "order": "ABBA", "n": 3},
        },
    ]
    task = load_task_jsonl(write(tmp_path, rows), TOK)
    assert task.vars == {"IO": ["Mary", "Emma"], "S": ["John", "John"], "order": ["ABBA", "ABBA"], "n": ["2", "3"]}
    assert load_task_jsonl(write(tmp_path, GOOD), TOK).vars == {}  # no vars: none


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ({"IO": "Alice"}, r"task.jsonl:2: vars has keys \['IO'\], but the first line has \['IO', 'S'\]"),
        ({"IO": "Alice", "S": "Bob", "x": 1}, r"task.jsonl:2: vars has keys \['IO', 'S', 'x'\]"),
        ({"IO": "Marry", "S": "John"}, r"task.jsonl:2: vars.IO 'Marry' is not a token of the clean prompt"),
        ({"IO": ["Mary"], "S": "John"}, r"task.jsonl:2: vars.IO must be a string or a number, not list"),
    ],
)
def test_bad_vars_name_the_line_and_the_variable(tmp_path, second, message):
    first = {**GOOD[0], "vars": {"IO": "Mary", "S": "John"}}
    path = write(tmp_path, [first, {**GOOD[0], "vars": second}])
    with pytest.raises(CircuitsError, match=message):
        load_task_jsonl(path, TOK)
    bare = write(tmp_path, [first, GOOD[0]])  # a line without vars when the first has them
    with pytest.raises(CircuitsError, match=r"task.jsonl:2: vars has keys none, but the first line has"):
        load_task_jsonl(bare, TOK)
