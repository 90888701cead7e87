"""Hugging Face-format models built here, with no hub: random `transformers` models and a small
byte-level BPE tokenizer, saved as ``save_pretrained`` writes them, in a plain folder or laid out
in a Hugging Face hub cache exactly as ``huggingface_hub`` leaves a download (blobs named by
their hash, snapshot entries linking to them, ``refs/main`` naming the commit).

transformers is imported inside the builders: importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tasks.language import vocabulary

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

COMMIT = "4d2a2e1b0c9f8e7d6c5b4a39281706f5e4d3c2b1"  # the snapshot's (made-up) commit
EOT, NEOX_PAD = "<|endoftext|>", "<|padding|>"
LFS_SUFFIXES = (".safetensors", ".bin", ".pt")  # stored with Git LFS on the hub: blob = sha256


@cache
def bpe(specials: tuple[str, ...] = (EOT,)) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges of a byte-level BPE trained on the toy words, with and without a
    leading space, so that every toy word is one token either way; ``specials`` come first."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=10_000,  # more than the words need: training stops when every word is one token
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    words = vocabulary()
    core.train_from_iterator([f" {w}" for w in words] + words, trainer)
    model = json.loads(core.to_str())["model"]
    return model["vocab"], [tuple(m) for m in model["merges"]]


def gpt2_tokenizer() -> PreTrainedTokenizerBase:
    """A GPT-2 tokenizer (byte-level BPE, ``<|endoftext|>`` as BOS, EOS and unknown) over the toy words."""
    from transformers import GPT2Tokenizer

    vocab, merges = bpe((EOT,))
    return GPT2Tokenizer(vocab=dict(vocab), merges=list(merges))


def neox_tokenizer() -> PreTrainedTokenizerBase:
    """A Pythia (GPT-NeoX) tokenizer: ``<|endoftext|>`` = 0 (BOS, EOS), ``<|padding|>`` = 1."""
    from transformers import GPTNeoXTokenizer

    vocab, merges = bpe((EOT, NEOX_PAD))
    return GPTNeoXTokenizer(vocab=dict(vocab), merges=list(merges))


def gpt2_model(
    vocab_size: int, n_layer: int = 2, n_embd: int = 64, n_head: int = 4, n_positions: int = 64, seed: int = 0
) -> PreTrainedModel:
    """A randomly initialised GPT2LMHeadModel (eval mode). Its config carries ``n_ctx`` as the
    hub's gpt2 config.json does."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_ctx=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(cfg).eval()


def neox_model(
    vocab_size: int, n_layer: int = 2, d_model: int = 64, n_head: int = 4, n_positions: int = 64, seed: int = 0
) -> PreTrainedModel:
    """A randomly initialised Pythia-shaped GPTNeoXForCausalLM (eval mode): rotary embeddings on
    a quarter of each head, attention and MLP in parallel, untied unembedding."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=d_model,
        num_hidden_layers=n_layer,
        num_attention_heads=n_head,
        intermediate_size=4 * d_model,
        max_position_embeddings=n_positions,
        rotary_pct=0.25,
        rope_theta=10_000,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPTNeoXForCausalLM(cfg).eval()
    with torch.no_grad():  # biases start at 0: make them count
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
    return model


def save_folder(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: str | Path) -> Path:
    """``save_pretrained`` of the model (safetensors) and the tokenizer into ``folder``."""
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _blob_name(path: Path) -> str:
    """The name huggingface_hub gives a downloaded file's blob: its ETag, which is the sha256
    of an LFS file and the git blob hash (sha1 of ``blob <size>\\0`` + content) of any other."""
    data = path.read_bytes()
    if path.name.endswith(LFS_SUFFIXES):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def put_in_hub_cache(
    cache_dir: str | Path, repo_id: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> Path:
    """Save ``model`` and ``tokenizer`` into the hub cache ``cache_dir`` as if ``repo_id`` had
    been downloaded at commit `COMMIT`:
    ``models--<org>--<name>/{blobs/<hash>, snapshots/<COMMIT>/<file> -> ../../blobs/<hash>,
    refs/main}``. Returns the snapshot folder."""
    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snapshot, blobs = repo / "snapshots" / COMMIT, repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_folder(model, tokenizer, tmp)
        for f in sorted(Path(tmp).iterdir()):
            blob = blobs / _blob_name(f)
            shutil.move(f, blob)
            os.symlink(Path("..", "..", "blobs", blob.name), snapshot / f.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot
