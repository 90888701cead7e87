"""User tasks from a JSONL file: one object per line,
``{"clean": …, "corrupt": …, "answer": …, "wrong_answer": …}``.

Every error names the file and line. Prompts may differ in length between lines (they are
right-padded into one batch); a line's clean and corrupt prompts must have the same number
of tokens so that positions align for patching.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from circuits.errors import CircuitsError
from tasks.task import Task
from tasks.tokenizer import UnknownWordError, check_words

FIELDS = ("clean", "corrupt", "answer", "wrong_answer")


def _tokens(tokenizer: PreTrainedTokenizerBase, text: str, where: str, bos: bool) -> list[int]:
    try:
        check_words(tokenizer, text)
    except UnknownWordError as err:
        raise CircuitsError(f"{where}: {err}") from None
    return tokenizer.encode(text, add_special_tokens=bos)


def load_task_jsonl(path: str | Path, tokenizer: PreTrainedTokenizerBase, name: str | None = None) -> Task:
    """A logit-difference `Task` from a JSONL file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise CircuitsError(f"{path}: no such task file")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise CircuitsError(f"{where}: not JSON ({err.msg})") from None
        if not isinstance(obj, dict):
            raise CircuitsError(f"{where}: expected a JSON object with {', '.join(FIELDS)}")
        for key in FIELDS:
            if not isinstance(obj.get(key), str) or not obj[key].strip():
                raise CircuitsError(f"{where}: missing or empty field {key!r}")
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
        rows.append((clean, corrupt, *answers, obj["clean"], obj["corrupt"]))
    if not rows:
        raise CircuitsError(f"{path}: no tasks in the file")
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
        prompts=[r[4] for r in rows],
        corrupt_prompts=[r[5] for r in rows],
    )
