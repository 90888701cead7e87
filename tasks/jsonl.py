"""User tasks from a JSONL file: one object per line,
``{"clean": …, "corrupt": …, "answer": …, "wrong_answer": …}``, optionally with
``"vars": {"IO": "Mary", "S": "John"}``: the variables the clean prompt was made from, the
same keys on every line (what feature families are named by). A variable whose value is a
token of the clean prompt on the first line must be one on every line (a misspelt name would
otherwise silently stop it naming families).

Every error names the file and line. Prompts may differ in length between lines (they are
right-padded into one batch, and their sites are whole submodules); a line's clean and corrupt
prompts must have the same number of tokens so that positions align for patching. When every
prompt has the same number of tokens, positions line up across prompts and are labelled
``p0``, ``p1``, … (one site per submodule and position, as for the built-in templates).
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from circuits.core.errors import CircuitsError
from tasks.task import Task
from tasks.tokenizer import UnknownWordError, check_words, value_token

FIELDS = ("clean", "corrupt", "answer", "wrong_answer")


def _tokens(tokenizer: PreTrainedTokenizerBase, text: str, where: str, bos: bool) -> list[int]:
    try:
        check_words(tokenizer, text)
    except UnknownWordError as err:
        raise CircuitsError(f"{where}: {err}") from None
    return tokenizer.encode(text, add_special_tokens=bos)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """The file's lines, numbered from 1, read as they are needed (a huge file streams). UTF-8
    with or without a byte-order mark, Unix or Windows (CRLF) line ends. Each line is decoded
    on its own, so text that is not UTF-8 is one error naming the file and that line."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                yield number, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                raise CircuitsError(
                    f"{path}:{number}: not UTF-8 text (byte {raw[err.start]:#04x}); save the file as UTF-8"
                ) from None


def load_task_jsonl(path: str | Path, tokenizer: PreTrainedTokenizerBase, name: str | None = None) -> Task:
    """A logit-difference `Task` from a JSONL file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise CircuitsError(f"{path}: no such task file")
    rows = []
    first_keys: list[str] | None = None
    for number, line in _lines(path):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        if "\x00" in line:
            raise CircuitsError(f"{where}: a NUL byte: this is a binary file, not UTF-8 JSONL text")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise CircuitsError(f"{where}: not JSON ({err.msg})") from None
        if not isinstance(obj, dict):
            raise CircuitsError(f"{where}: expected a JSON object with {', '.join(FIELDS)}")
        for key in FIELDS:
            value = obj.get(key)
            if value is None:
                raise CircuitsError(f"{where}: missing field {key!r}")
            if not isinstance(value, str):
                raise CircuitsError(
                    f"{where}: field {key!r} must be a string, not {type(value).__name__} ({value!r:.40})"
                )
            if not value.strip():
                raise CircuitsError(f"{where}: field {key!r} is empty")
        clean = _tokens(tokenizer, obj["clean"], where, bos=True)
        corrupt = _tokens(tokenizer, obj["corrupt"], where, bos=True)
        if len(clean) != len(corrupt):
            raise CircuitsError(f"{where}: clean has {len(clean)} tokens and corrupt {len(corrupt)}; they must align")
        answers = []
        for key in ("answer", "wrong_answer"):
            ids = _tokens(tokenizer, obj[key], where, bos=False)
            if len(ids) != 1:
                raise CircuitsError(f"{where}: {key} {obj[key]!r} is {len(ids)} tokens, not one")
            answers.append(ids[0])
        rows.append(
            (clean, corrupt, *answers, obj["clean"], obj["corrupt"], _vars(obj, where, rows, first_keys), number)
        )
        first_keys = first_keys if first_keys is not None else list(rows[-1][6])
    if not rows:
        raise CircuitsError(f"{path}: no tasks in the file")
    variables = {k: [r[6][k] for r in rows] for k in first_keys or []}
    _check_tokens(tokenizer, path, [(r[7], r[0]) for r in rows], variables)
    lengths = torch.tensor([len(r[0]) for r in rows])
    width = int(lengths.max())
    pad = tokenizer.pad_token_id

    def batch(i: int) -> torch.Tensor:
        return torch.tensor([r[i] + [pad] * (width - len(r[i])) for r in rows])

    same_length = bool((lengths == width).all())
    return Task(
        name=name or path.stem,
        clean=batch(0),
        corrupt=batch(1),
        answer=torch.tensor([[r[2]] for r in rows]),
        wrong=torch.tensor([[r[3]] for r in rows]),
        metric="logit_diff",
        lengths=None if same_length else lengths,
        # prompts of one length line up position by position: one site per submodule and position
        position_labels=tuple(f"p{i}" for i in range(width)) if same_length else None,
        prompts=[r[4] for r in rows],
        corrupt_prompts=[r[5] for r in rows],
        vars=variables,
    )


def _vars(obj: dict, where: str, rows: list, first_keys: list[str] | None) -> dict[str, str]:
    """A line's ``vars`` as strings (numbers allowed), with the first line's keys."""
    given = obj.get("vars", {})
    if not isinstance(given, dict):
        raise CircuitsError(f"{where}: field 'vars' must be an object of variable -> value, not {type(given).__name__}")
    out = {}
    for key, value in given.items():
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise CircuitsError(f"{where}: vars.{key} must be a string or a number, not {type(value).__name__}")
        out[key] = str(value)
    keys = list(out) if first_keys is None and not rows else (first_keys or [])
    if sorted(out) != sorted(keys):
        raise CircuitsError(
            f"{where}: vars has keys {sorted(out) or 'none'}, but the first line has {sorted(keys) or 'none'}; "
            "every line must give the same variables"
        )
    return out


def _check_tokens(tokenizer, path: Path, prompts: list[tuple[int, list[int]]], variables: dict[str, list[str]]) -> None:
    """A variable whose value is a token of the first clean prompt is one on every line
    (``prompts``: line number, clean token ids)."""
    for key, values in variables.items():
        if value_token(tokenizer, values[0], prompts[0][1]) is None:
            continue
        for value, (number, prompt) in zip(values, prompts, strict=True):
            if value_token(tokenizer, value, prompt) is None:
                raise CircuitsError(
                    f"{path}:{number}: vars.{key} {value!r} is not a token of the clean prompt "
                    f"(it is on line {prompts[0][0]}, the first)"
                )
