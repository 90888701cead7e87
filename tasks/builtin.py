"""The built-in tasks on the toy language: ioi, sva, greater_than, induction.

Each builder takes the model's tokenizer, a number of prompt pairs, a seed and a split.
``split="eval"`` draws from held-out material (IOI: held-out templates, names from the full
list including names never used in IOI training); ``split="train"`` from training material.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
from transformers import PreTrainedTokenizerBase

from circuits.core.errors import CircuitsError
from tasks import language as L
from tasks.task import Task
from tasks.tokenizer import UnknownWordError


def _ids(tokenizer: PreTrainedTokenizerBase, words: list[str]) -> list[int]:
    vocab = tokenizer.get_vocab()
    missing = [w for w in words if w not in vocab]
    if missing:
        raise UnknownWordError(f"word {missing[0]!r} is not in the model's vocabulary")
    return [vocab[w] for w in words]


def _batch(tokenizer: PreTrainedTokenizerBase, prompts: list[list[str]]) -> torch.Tensor:
    bos = [tokenizer.bos_token]
    return torch.tensor([_ids(tokenizer, bos + p) for p in prompts], dtype=torch.long)


def _task(
    name: str,
    tokenizer: PreTrainedTokenizerBase,
    clean: list[list[str]],
    corrupt: list[list[str]],
    answers: list[list[str]] | torch.Tensor,
    **fields,
) -> Task:
    """A built-in task from its prompts as words (BOS added) and its answer words (or ids); ``fields``
    (``wrong`` ids or ``wrongs`` words, the metric, labels, roles...) go to `Task`."""
    if "wrongs" in fields:
        fields["wrong"] = torch.tensor([_ids(tokenizer, w) for w in fields.pop("wrongs")])
    return Task(
        name=name,
        clean=_batch(tokenizer, clean),
        corrupt=_batch(tokenizer, corrupt),
        answer=answers if isinstance(answers, torch.Tensor) else torch.tensor([_ids(tokenizer, a) for a in answers]),
        prompts=[" ".join(p) for p in clean],
        corrupt_prompts=[" ".join(p) for p in corrupt],
        **fields,
    )


def _rng(task: str, split: str, seed: int) -> random.Random:
    if split not in ("train", "eval"):
        raise CircuitsError(f"unknown split {split!r}: use train or eval")
    return random.Random(f"{task}/{split}/{seed}")


def ioi(tokenizer: PreTrainedTokenizerBase, n: int = 128, seed: int = 0, split: str = "eval") -> Task:
    """Indirect object identification; corrupt = ABC (three fresh names). Metric logit(IO) - logit(S)."""
    rng = _rng("ioi", split, seed)
    clean, corrupt, answers, wrongs, io_pos, s1_pos = [], [], [], [], [], []
    variables: dict[str, list[str]] = {"IO": [], "S": [], "order": [], "place": [], "object": []}
    for _ in range(n):
        ex = L.sample_ioi(rng, split)
        for key, value in zip(variables, (ex["io"], ex["s"], ex["order"], ex["place"], ex["obj"]), strict=True):
            variables[key].append(value)
        clean.append(L.ioi_prompt(ex["template"], ex["io"], ex["s"], ex["place"], ex["obj"], ex["order"]))
        pool = [x for x in (L.TRAIN_NAMES if split == "train" else L.NAMES) if x not in (ex["io"], ex["s"])]
        a, b, c = rng.sample(pool, 3)
        words = list(clean[-1])
        words[1], words[3], words[9] = a, b, c  # word indices of A, B, S2 (token index - 1)
        corrupt.append(words)
        answers.append([ex["io"]])
        wrongs.append([ex["s"]])
        io_pos.append(2 if ex["order"] == "ABBA" else 4)
        s1_pos.append(4 if ex["order"] == "ABBA" else 2)
    return _task(
        "ioi",
        tokenizer,
        clean,
        corrupt,
        answers,
        wrongs=wrongs,
        metric="logit_diff",
        position_labels=L.IOI_POSITION_LABELS,
        roles={
            "IO": torch.tensor(io_pos),
            "S1": torch.tensor(s1_pos),
            "S2": torch.full((n,), 10),
            "END": torch.full((n,), 14),
        },
        vars=variables,
    )


def sva(
    tokenizer: PreTrainedTokenizerBase, n: int = 128, seed: int = 0, split: str = "eval", structure: str = "pp"
) -> Task:
    """Subject-verb agreement across a distractor ("the dog near the cats" -> runs/run);
    corrupt flips the subject's number. Metric logit(agreeing verb) - logit(other form)."""
    rng = _rng(f"sva-{structure}", split, seed)
    clean, corrupt, answers, wrongs = [], [], [], []
    variables: dict[str, list[str]] = {"number": [], "subject": [], "attractor number": []}
    for _ in range(n):
        plural, plural2 = rng.random() < 0.5, rng.random() < 0.5
        words = L.sva_subject(rng, structure, plural, plural2)
        variables["number"].append("plural" if plural else "singular")
        variables["attractor number"].append("plural" if plural2 else "singular")
        flipped = list(words)
        noun = words[1]
        variables["subject"].append(noun if not plural else L.NOUNS_SG[L.NOUNS_PL.index(noun)])
        flipped[1] = L.NOUNS_SG[L.NOUNS_PL.index(noun)] if plural else L.NOUNS_PL[L.NOUNS_SG.index(noun)]
        verb = rng.randrange(len(L.VERBS_SG))
        good, bad = (L.VERBS_PL, L.VERBS_SG) if plural else (L.VERBS_SG, L.VERBS_PL)
        clean.append(words)
        corrupt.append(flipped)
        answers.append([good[verb]])
        wrongs.append([bad[verb]])
    labels = (
        ("BOS", "the", "N1", "PREP", "the2", "N2")
        if structure == "pp"
        else (("BOS", "the", "N1", "that", "the2", "N2", "V2") if structure == "rc" else ("BOS", "the", "N1"))
    )
    return _task(
        "sva",
        tokenizer,
        clean,
        corrupt,
        answers,
        wrongs=wrongs,
        metric="logit_diff",
        position_labels=labels,
        vars=variables,
    )


def greater_than(tokenizer: PreTrainedTokenizerBase, n: int = 128, seed: int = 0, split: str = "eval") -> Task:
    """Years: "the war lasted from the year 17 32 to the year 17" -> YY' > 32; corrupt YY = 01.
    Metric: sum p(YY' > YY) - sum p(YY' <= YY) over the two-digit tokens."""
    rng = _rng("greater_than", split, seed)
    clean, corrupt, answers, wrongs = [], [], [], []
    variables: dict[str, list[str]] = {"YY": [], "tens digit": [], "century": []}
    for _ in range(n):
        event, century, yy = rng.choice(L.EVENTS), rng.choice(L.CENTURIES), rng.randint(2, 98)
        for key, value in zip(variables, (f"{yy:02d}", str(yy // 10), str(century)), strict=True):
            variables[key].append(value)
        clean.append(L.years_prompt(event, century, yy))
        corrupt.append(L.years_prompt(event, century, 1))
        later = list(L.TWO_DIGITS[yy + 1 :])
        answers.append(later + ["<pad>"] * (100 - len(later)))
        earlier = list(L.TWO_DIGITS[: yy + 1])
        wrongs.append(earlier + ["<pad>"] * (100 - len(earlier)))
    pad = tokenizer.get_vocab()["<pad>"]

    def ids(rows: list[list[str]]) -> torch.Tensor:
        t = torch.tensor([_ids(tokenizer, r) for r in rows])
        return t.masked_fill(t == pad, -1)

    return _task(
        "greater_than",
        tokenizer,
        clean,
        corrupt,
        ids(answers),
        wrong=ids(wrongs),
        metric="prob_diff",
        position_labels=(
            "BOS",
            "the",
            "EVENT",
            "lasted",
            "from",
            "the2",
            "year",
            "CC",
            "YY",
            "to",
            "the3",
            "year2",
            "CC2",
        ),
        vars=variables,
    )


def induction(
    tokenizer: PreTrainedTokenizerBase, n: int = 128, seed: int = 0, split: str = "eval", length: int = 8
) -> Task:
    """A random list of names, repeated ("list : A B C list : A B"); corrupt replaces the first
    copy with other names. Metric: mean log-prob of the repeated names."""
    rng = _rng("induction", split, seed)
    clean, corrupt, answers = [], [], []
    for _ in range(n):
        names = rng.sample(L.NAMES, 2 * length)
        first, other = names[:length], names[length:]
        clean.append(["list", ":", *first, "list", ":", *first[:-1]])
        corrupt.append(["list", ":", *other, "list", ":", *first[:-1]])
        answers.append(first)
    # Token index of the second ":" is length + 4; it predicts first[0], and so on.
    score_pos = torch.arange(length + 4, 2 * length + 4)
    labels = (
        "BOS",
        "list",
        ":",
        *[f"x{i}" for i in range(length)],
        "list2",
        ":2",
        *[f"y{i}" for i in range(length - 1)],
    )
    return _task(
        "induction",
        tokenizer,
        clean,
        corrupt,
        answers,
        wrong=torch.empty((n, 0), dtype=torch.long),
        metric="logprob",
        score_pos=score_pos,
        position_labels=labels,
    )


BUILTIN_TASKS: dict[str, Callable[..., Task]] = {
    "ioi": ioi,
    "sva": sva,
    "greater_than": greater_than,
    "induction": induction,
}


def make_task(
    name: str,
    tokenizer: PreTrainedTokenizerBase,
    n: int = 128,
    seed: int = 0,
    split: str = "eval",
    metric: str | None = None,
) -> Task:
    """Build a built-in task by name, or load a user task from a ``.jsonl`` file; ``metric``
    replaces the task's own (e.g. ``"kl"``)."""
    if name.endswith(".jsonl"):
        from tasks.jsonl import load_task_jsonl

        task = load_task_jsonl(name, tokenizer)
        task = task.subset(slice(0, n)) if n < task.n_examples else task
    elif name not in BUILTIN_TASKS:
        raise CircuitsError(f"unknown task {name!r}: built-in tasks are {', '.join(BUILTIN_TASKS)} (or a .jsonl file)")
    else:
        task = BUILTIN_TASKS[name](tokenizer, n=n, seed=seed, split=split)
    return task if metric is None else task.with_metric(metric)
