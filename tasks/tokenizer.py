"""Word-level tokenizer for the toy language, usable by TransformerLens (`to_tokens`,
`to_str_tokens`): a `tokenizers` WordLevel model wrapped in `PreTrainedTokenizerFast`.

One word is one token; punctuation is split off ("store," -> "store", ","); a BOS token is
prepended to every encoded text, as TransformerLens expects.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from tokenizers import Tokenizer, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from circuits.core.errors import CircuitsError
from tasks.language import vocabulary

BOS, PAD, UNK = "<bos>", "<pad>", "<unk>"
SPECIAL_TOKENS = (BOS, PAD, UNK)


class UnknownWordError(CircuitsError):
    """A prompt contains a word that is not in the model's vocabulary."""


def build_tokenizer(words: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A tokenizer over the special tokens followed by ``words`` (default: the toy vocabulary)."""
    words = vocabulary() if words is None else words
    vocab = {w: i for i, w in enumerate([*SPECIAL_TOKENS, *words])}
    core = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return _prepends_bos(
        PreTrainedTokenizerFast(
            tokenizer_object=core,
            bos_token=BOS,
            eos_token=BOS,
            pad_token=PAD,
            unk_token=UNK,
            padding_side="right",
        )
    )


def _prepends_bos(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    # TransformerLens re-loads a tokenizer from its name_or_path unless it declares that it
    # already prepends BOS; ours does (post-processor), so say so and keep this object.
    tokenizer.init_kwargs["add_bos_token"] = True
    tokenizer.init_kwargs.setdefault("name_or_path", tokenizer.name_or_path)
    return tokenizer


def load_tokenizer(folder: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved with ``tokenizer.save_pretrained(folder)``."""
    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise CircuitsError(f"{folder}: no tokenizer.json (not a saved toy model folder?)")
    return _prepends_bos(PreTrainedTokenizerFast.from_pretrained(str(folder)))


def split_words(tokenizer: PreTrainedTokenizerFast, text: str) -> list[str]:
    """The words ``text`` tokenizes into, before they are looked up in the vocabulary."""
    return [w for w, _ in tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)]


def word_level(tokenizer: PreTrainedTokenizerFast) -> bool:
    """Whether ``tokenizer`` maps whole words to ids (the toy language's), or spells words in
    subword pieces."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and isinstance(backend.model, WordLevel)


def check_words(tokenizer: PreTrainedTokenizerFast, text: str) -> None:
    """Raise `UnknownWordError` naming the first word of ``text`` not in the vocabulary. A
    subword tokenizer (GPT-2's byte-level BPE, …) spells any word in pieces, so for it only
    text it can encode solely as its unknown token is refused."""
    if not word_level(tokenizer):
        unk = tokenizer.unk_token_id
        if unk is not None and unk in tokenizer.encode(text, add_special_tokens=False):
            raise UnknownWordError(f"{text!r} holds text the tokenizer can only encode as {tokenizer.unk_token!r}")
        return
    vocab = tokenizer.get_vocab()
    for word in split_words(tokenizer, text):
        if word not in vocab:
            close = difflib.get_close_matches(word, [w for w in vocab if w not in SPECIAL_TOKENS])
            hint = f" (close: {', '.join(close)})" if close else ""
            raise UnknownWordError(f"word {word!r} in {text!r} is not in the vocabulary{hint}")


def encode(tokenizer: PreTrainedTokenizerFast, text: str, prepend_bos: bool = True) -> list[int]:
    """Token ids of ``text``, refusing unknown words instead of mapping them to <unk>."""
    check_words(tokenizer, text)
    return tokenizer.encode(text, add_special_tokens=prepend_bos)


def value_token(tokenizer, value: str, prompt: list[int]) -> int | None:
    """The token id of a prompt variable's value in ``prompt`` (the value as written, or after
    a space, as GPT-2-style tokenizers write words); None when it is not one token there."""
    for text in (value, " " + value):
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) == 1 and ids[0] in prompt:
            return ids[0]
    return None
