"""Token batches of toy-language text, for training the model and its SAEs."""

from __future__ import annotations

import random

import torch
from transformers import PreTrainedTokenizerBase

from tasks.language import Mixture, document


def corpus_tokens(
    tokenizer: PreTrainedTokenizerBase, key: str, n_seqs: int, seq_len: int, mixture: Mixture = Mixture()
) -> torch.Tensor:
    """``[n_seqs, seq_len]`` token ids (BOS + documents), a pure function of ``key``."""
    rng = random.Random(key)
    vocab = tokenizer.get_vocab()
    bos = vocab[tokenizer.bos_token]
    rows = [[bos] + [vocab[w] for w in document(rng, seq_len - 1, mixture)] for _ in range(n_seqs)]
    return torch.tensor(rows, dtype=torch.long)
