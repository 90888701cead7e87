"""Ground truth from the generator: what each token of toy-language text was generated from,
and concepts (booleans per token position) built from it, by key and value, not by hand.

The toy language (``tasks.language``) knows exactly what it generated: each sentence comes from
one family and a template, so every word has a role there. ``label_sentence`` reads the role
back from a family's words (the templates are fixed, so the parse is exact) and returns one
``dict`` of labels per word:

* ``word``, ``class`` (name, place, object, noun, verb, tverb, preposition, event, number,
  intro, give, motion, function, punctuation), ``family``, ``slot`` (the word's place in its
  template, family-qualified: ``ioi:S2``, ``sva:attractor``, ``years:start``...);
* the sentence's variables from the token where the text reveals them (a causal model cannot
  know them earlier): IOI ``ioi.A`` / ``ioi.B`` (the names in template order), ``ioi.IO``,
  ``ioi.S`` and ``ioi.order`` (from S2, where the repeated name shows which is which); SVA
  ``sva.number`` (the subject's), ``sva.structure``, ``sva.attractor`` (the distractor noun's
  number) and ``sva.match`` (same / different); years ``years.century``, ``years.start``,
  ``years.start_tens``, ``years.start_units``; induction ``induction.half`` and
  ``induction.index``; narrative ``narrative.kind``;
* ``number`` of nouns and verbs (singular / plural).

``label_text`` adds what only the stream shows: ``prev`` and ``next`` (the neighbouring words)
and their classes ``prev_class`` / ``next_class`` (previous-token features; output features
such as "a name comes next", which IOI's END and induction's repeats share) and, for names,
``mention`` (first / repeat in the context so far), and where the next word is a content word
already in the text, ``copy`` (its class) and ``copied`` (the word), and where the template
forces that copy (IOI's END, induction's second half: the sentence so far determines the next
word), ``forced=copy`` and ``forced_word``: what a model that copies from its context can
predict, across families. ``labelled_corpus`` is
``tasks.corpus.corpus_tokens`` with these labels.

``Concepts`` turns labels into booleans: one concept ``key=value`` per label value seen at
least ``min_count`` times, and for each variable (keys with a dot) its conjunction with the
slot (``slot=ioi:END & ioi.IO=Walt``: the IO name is Walt, at END), stored sparse.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from circuits.core.errors import CircuitsError
from tasks import language as L
from tasks.tokenizer import word_level

Labels = dict[str, str]

_CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("name", L.NAMES),
    ("place", L.PLACES),
    ("object", L.OBJECTS),
    ("noun", L.NOUNS_SG + L.NOUNS_PL),
    ("verb", L.VERBS_SG + L.VERBS_PL),
    ("tverb", L.TVERBS_SG + L.TVERBS_PL),
    ("preposition", L.PREPOSITIONS),
    ("event", L.EVENTS),
    ("number", L.CENTURIES + L.TWO_DIGITS),
    ("intro", L.IOI_INTROS),
    ("give", L.IOI_GIVES),
    ("motion", tuple(m[0] for m in L.IOI_MOTIONS)),
    ("punctuation", L.PUNCTUATION),
    ("function", L.FUNCTION_WORDS + L.NARRATIVE_VERBS),
)
WORD_CLASS: dict[str, str] = {}
for _cls, _words in _CLASSES:
    for _w in _words:
        WORD_CLASS.setdefault(_w, _cls)
_PLURAL = set(L.NOUNS_PL + L.VERBS_PL + L.TVERBS_PL)
_SINGULAR = set(L.NOUNS_SG + L.VERBS_SG + L.TVERBS_SG)

IOI_SLOTS = (*L.IOI_POSITION_LABELS[1:], "answer", ".")
YEARS_SLOTS = (
    "the",
    "event",
    "lasted",
    "from",
    "the2",
    "year",
    "century",
    "start",
    "to",
    "the3",
    "year2",
    "century2",
    "end",
    ".",
)
SVA_SLOTS = {
    "pp": ("the", "subject", "preposition", "the2", "attractor", "verb", "."),
    "rc": ("the", "subject", "that", "the2", "attractor", "tverb", "verb", "."),
    "simple": ("the", "subject", "verb", "."),
}


def word_labels(word: str) -> Labels:
    """What a word is on its own: itself, its class, and its number (nouns and verbs)."""
    out = {"word": word, "class": WORD_CLASS.get(word, "other")}
    if word in _PLURAL:
        out["number"] = "plural"
    elif word in _SINGULAR:
        out["number"] = "singular"
    return out


def label_sentence(family: str, words: list[str]) -> list[Labels]:
    """One label dict per word of a sentence (or its prefix: a task prompt) of ``family``."""
    if family not in _PARSERS:
        raise ValueError(f"unknown sentence family {family!r}: use {', '.join(_PARSERS)}")
    slots, variables = _PARSERS[family](words)
    return [
        word_labels(w) | {"family": family, "slot": f"{family}:{slot}"} | extra
        for w, slot, extra in zip(words, slots, variables, strict=True)
    ]


def _revealed(n: int, variables: dict[str, tuple[str, int]]) -> list[Labels]:
    """Per word of an ``n``-word sentence, the variables ``key -> (value, first index)``
    that the words up to it reveal."""
    return [{k: v for k, (v, start) in variables.items() if i >= start} for i in range(n)]


def _ioi(words: list[str]) -> tuple[list[str], list[Labels]]:
    n, out = len(words), {}
    if n > 1:
        out["ioi.A"] = (words[1], 1)
    if n > 3:
        out["ioi.B"] = (words[3], 3)
    if n > 9:  # S2: the repeated name is the subject
        s = words[9]
        io = words[3] if words[1] == s else words[1]
        out |= {"ioi.S": (s, 9), "ioi.IO": (io, 9), "ioi.order": ("ABBA" if words[3] == s else "BABA", 9)}
    return list(IOI_SLOTS[:n]), _revealed(n, out)


def _sva(words: list[str]) -> tuple[list[str], list[Labels]]:
    n = len(words)
    structure = {"that": "rc"}.get(words[2], "pp" if words[2] in L.PREPOSITIONS else "simple") if n > 2 else "simple"
    out = {"sva.number": (word_labels(words[1]).get("number", "?"), 1)} if n > 1 else {}
    if structure != "simple":
        out["sva.structure"] = (structure, 2)
        if n > 4:
            attractor = word_labels(words[4]).get("number", "?")
            out["sva.attractor"] = (attractor, 4)
            out["sva.match"] = ("same" if attractor == out["sva.number"][0] else "different", 4)
    return list(SVA_SLOTS[structure][:n]), _revealed(n, out)


def _years(words: list[str]) -> tuple[list[str], list[Labels]]:
    n, out = len(words), {}
    if n > 6:
        out["years.century"] = (words[6], 6)
    if n > 7:
        yy = words[7]
        out |= {"years.start": (yy, 7), "years.start_tens": (yy[0], 7), "years.start_units": (yy[1], 7)}
    return list(YEARS_SLOTS[:n]), _revealed(n, out)


def _induction(words: list[str]) -> tuple[list[str], list[Labels]]:
    """ "list : A B C list : A B C .": the half (from the first name on) and each name's index."""
    second = next((i for i in range(2, len(words)) if words[i] == "list"), len(words))
    slots, extra = [], []
    for i, w in enumerate(words):
        if i < 2:
            slots.append(("list", ":")[i])
            extra.append({})
        elif i < second:
            slots.append("item")
            extra.append({"induction.half": "first", "induction.index": str(i - 2)})
        elif i < second + 2:
            slots.append(("list2", ":2")[i - second])
            extra.append({"induction.half": "second"})
        elif w == ".":
            slots.append(".")
            extra.append({"induction.half": "second"})
        else:
            slots.append("repeat")
            extra.append({"induction.half": "second", "induction.index": str(i - second - 2)})
    return slots, extra


def _narrative(words: list[str]) -> tuple[list[str], list[Labels]]:
    n = len(words)
    return [str(i) for i in range(n)], _revealed(n, {"narrative.kind": (_narrative_kind(words), 1)})


def _narrative_kind(words: list[str]) -> str:
    """Which of the narrative templates (``language.narrative_sentence``) a sentence is."""
    second = words[1] if len(words) > 1 else ""
    named = {
        "saw": "saw",
        "has": "has",
        "said": "hello",
        "is": "state",
        "and": "liked",
        "found": "found",
        "lost": "found",
    }
    if second in named:
        return named[second]
    if second == "went" and len(words) > 2 and words[2] == "home":
        return "home"
    return "motion"


_PARSERS = {"ioi": _ioi, "sva": _sva, "years": _years, "induction": _induction, "narrative": _narrative}


# Classes too frequent for "the next word is one already in the text" to say anything.
_NOT_COPIED = frozenset({"function", "punctuation", "bos", "preposition"})


# Slots whose next word the sentence so far determines, as a copy of an earlier word: IOI's
# END (the IO name) and induction's second half (the next item of the repeated list).
_FORCED_COPY = frozenset({"ioi:END", "induction::2", "induction:repeat"})


def label_text(sentences: Iterable[tuple[str, list[str]]], bos: bool = True) -> list[Labels]:
    """Labels of a stream of (family, words) sentences as one text (BOS first when ``bos``):
    each sentence's labels, then ``prev``, ``next``, a name's ``mention`` and ``copy`` /
    ``copied`` across the text."""
    out: list[Labels] = [{"word": "<bos>", "class": "bos", "slot": "bos"}] if bos else []
    for family, words in sentences:
        out += label_sentence(family, words)
    seen: set[str] = set()
    for i, lab in enumerate(out):
        if i > 0:
            lab["prev"], lab["prev_class"] = out[i - 1]["word"], out[i - 1]["class"]
        if lab["class"] == "name":
            lab["mention"] = "repeat" if lab["word"] in seen else "first"
        seen.add(lab["word"])
        if i + 1 < len(out):
            nxt = out[i + 1]
            lab["next"], lab["next_class"] = nxt["word"], nxt["class"]
            if nxt["word"] in seen and nxt["class"] not in _NOT_COPIED:
                lab["copy"], lab["copied"] = nxt["class"], nxt["word"]
                if lab["slot"] in _FORCED_COPY:
                    lab["forced"], lab["forced_word"] = "copy", nxt["word"]
    return out


def labelled_document(rng: random.Random, n_words: int, mixture: L.Mixture = L.Mixture()) -> list[Labels]:
    """``language.document(rng, n_words, mixture)``, labelled (BOS first): the same words from
    the same generator calls, cut at ``n_words`` words."""
    sentences = list(L.sentences(rng, n_words, mixture))
    return label_text(sentences)[: n_words + 1]


def labelled_corpus(
    tokenizer: PreTrainedTokenizerBase, key: str, n_seqs: int, seq_len: int, mixture: L.Mixture = L.Mixture()
) -> tuple[torch.Tensor, list[Labels]]:
    """``corpus_tokens(tokenizer, key, n_seqs, seq_len, mixture)`` and every token's labels
    (row-major: sequence by sequence). The labels are the generator's, one per word, so the
    tokenizer must be the toy language's (one token per word): anything else is refused."""
    check_toy_tokenizer(tokenizer)
    rng = random.Random(key)
    vocab = tokenizer.get_vocab()
    rows, labels = [], []
    for _ in range(n_seqs):
        doc = labelled_document(rng, seq_len - 1, mixture)
        rows.append([vocab[tokenizer.bos_token]] + [vocab[lab["word"]] for lab in doc[1:]])
        labels += doc
    return torch.tensor(rows, dtype=torch.long), labels


def check_toy_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """Raise a one-line `CircuitsError` unless ``tokenizer`` maps each of the toy language's
    words to one token: ground-truth concepts exist only for text the generator made."""
    need = (
        "concept labels come from the toy language's generator, so they need a model with its "
        "one-token-per-word vocabulary (the embedded model, or one trained with `circuits train-model`)"
    )
    if not word_level(tokenizer):
        raise CircuitsError(f"{need}; this model's tokenizer splits words into subword pieces")
    vocab = tokenizer.get_vocab()
    missing = [w for w in L.vocabulary() if w not in vocab]
    if missing:
        raise CircuitsError(f"{need}; this model's vocabulary lacks {missing[0]!r} ({len(missing)} words missing)")


def is_variable(key: str) -> bool:
    """A sentence variable (``ioi.IO``...) rather than a property of the word itself."""
    return "." in key


@dataclass
class Concepts:
    """Boolean concepts over a list of token positions: ``names[j]`` holds at the positions
    ``index[1][index[0] == j]`` (a sparse ``[n_concepts, n_tokens]`` incidence)."""

    names: list[str]
    n_tokens: int
    matrix: torch.Tensor  # sparse COO float [n_concepts, n_tokens], 1 where the concept holds

    @classmethod
    def of(cls, labels: list[Labels], min_count: int = 5, conjunctions: bool = True) -> Concepts:
        """Every ``key=value`` of ``labels`` that holds at ``min_count`` positions or more, and
        (``conjunctions``) each variable's conjunction with the slot."""
        per_token = [[f"{k}={v}" for k, v in lab.items()] for lab in labels]
        if conjunctions:
            for names, lab in zip(per_token, labels, strict=True):
                names += [f"slot={lab['slot']} & {k}={v}" for k, v in lab.items() if is_variable(k)]
        counts = Counter(n for names in per_token for n in names)
        kept = sorted(n for n, c in counts.items() if c >= min_count)
        column = {n: j for j, n in enumerate(kept)}
        rows, cols = [], []
        for t, names in enumerate(per_token):
            for n in names:
                if n in column:
                    rows.append(column[n])
                    cols.append(t)
        index = torch.tensor([rows, cols], dtype=torch.long).reshape(2, -1)
        matrix = torch.sparse_coo_tensor(
            index, torch.ones(index.shape[1]), (len(kept), len(labels)), check_invariants=False
        ).coalesce()
        return cls(kept, len(labels), matrix)

    def holds(self, name: str) -> torch.Tensor:
        """``[n_tokens]`` bool: where concept ``name`` holds."""
        j = self.names.index(name)
        index = self.matrix.indices()
        out = torch.zeros(self.n_tokens, dtype=torch.bool)
        out[index[1][index[0] == j]] = True
        return out

    @property
    def counts(self) -> torch.Tensor:
        """``[n_concepts]``: positions where each concept holds."""
        return torch.sparse.sum(self.matrix, dim=1).to_dense()
