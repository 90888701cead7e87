"""Pretrained language models as HookedTransformers: by TransformerLens name (from the Hugging
Face hub, or its local cache alone when the hub cannot be reached, failing fast with one line
when the model is not there), or from a folder in Hugging Face format (what
``save_pretrained`` writes), converted as ``from_pretrained`` converts a download.

Pretrained models keep the Hugging Face model's logits: LayerNorm is folded and the writing
weights centred (the activations sae-lens's released SAEs were trained on), the unembedding
is not centred. `circuits.loaders.load_model` resolves a name to one of these, or to the toy model.
"""

from __future__ import annotations

import difflib
import json
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import torch
from transformer_lens import HookedTransformer

from circuits.core.errors import CircuitsError
from circuits.core.hub import cached_snapshot, hub_reachable, in_hf_cache, offline

CONFIG_FILE = "config.json"  # a Hugging Face model's config

# TransformerLens names of models the hub has since moved into an organisation: a download
# made under the new id sits in the cache under it (models--openai-community--gpt2).
MOVED_ON_HUB = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}


def load_pretrained(name: str, device: str = "cpu") -> HookedTransformer:
    """`HookedTransformer.from_pretrained` (unembedding not centred: the logits are the Hugging
    Face model's). With the hub unreachable it reads only the local cache — under
    TransformerLens's id, or the id the hub moved the model to — and fails fast in one line
    when the model is not there."""
    from transformer_lens import loading_from_pretrained as loading

    try:
        official = loading.get_official_model_name(name)
    except ValueError:
        known = list(loading.OFFICIAL_MODEL_NAMES)
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; close: {', '.join(close)}" if close else ""
        raise CircuitsError(
            f"unknown model {name!r}: not 'toy', a model folder, or a TransformerLens model{hint}"
        ) from None
    if hub_reachable():
        return _from_pretrained(official, device)
    if in_hf_cache(official):
        with offline():
            try:
                return _from_pretrained(official, device)
            except OSError as err:  # e.g. config.json there, the weights not (an interrupted download)
                raise CircuitsError(
                    f"cannot load {official!r} from the local Hugging Face cache: {_one_line(err)}"
                ) from None
    moved = MOVED_ON_HUB.get(official)
    if moved is not None and in_hf_cache(moved):
        return load_hf_folder(cached_snapshot(moved), device, name=official)
    looked = ", ".join(filter(None, [official, moved]))
    raise CircuitsError(
        f"cannot download {official!r}: the Hugging Face hub is unreachable and the model is "
        f"not in the local cache (looked for {looked} in {_hub_cache()}; use load_model('toy') offline)"
    )


def _from_pretrained(official: str, device: str) -> HookedTransformer:
    # TransformerLens prints "Loaded pretrained model ..." and warns that from_pretrained is
    # deprecated (in favour of its TransformerBridge, which has no HookedTransformer hooks)
    with redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "HookedTransformer.from_pretrained is deprecated", DeprecationWarning)
        return HookedTransformer.from_pretrained(official, device=device, center_unembed=False)


def _hub_cache() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


# ------------------------------------------------------------------------------ Hugging Face folders
CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel", "LMHeadCustomModel")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "vocab.txt")  # transformers builds one from any


def is_hf_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a Hugging Face config (a config.json naming a ``model_type``)."""
    try:
        config = json.loads((Path(folder) / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "model_type" in config


def load_hf_folder(folder: str | Path, device: str = "cpu", name: str | None = None) -> HookedTransformer:
    """A causal language model in Hugging Face format (config.json naming a ``model_type`` and
    its architecture, safetensors weights, tokenizer files) converted by TransformerLens's
    pretrained-model loaders as ``from_pretrained`` converts a download; only local files are
    read. ``name`` names the model (default: the folder's name)."""
    from transformer_lens import loading_from_pretrained as loading
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file():
        raise CircuitsError(f"{folder}: no {CONFIG_FILE} (not a model folder, or a partial one)")
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError) as err:
        raise CircuitsError(f"{folder / CONFIG_FILE}: not a valid model config ({err})") from None
    if not isinstance(config, dict) or not config.get("architectures"):
        raise CircuitsError(f"{folder}: {CONFIG_FILE} names no architecture (its 'architectures' list)")
    architecture = str(config["architectures"][0])
    if not architecture.endswith(CAUSAL_LM_SUFFIXES):
        raise CircuitsError(
            f"{folder}: architecture {architecture} is not a causal language model that TransformerLens converts"
        )
    fold = architecture not in POST_NORM_ARCHITECTURES  # as from_pretrained decides
    with offline(), redirect_stdout(sys.stderr):
        try:
            with _config_for_transformer_lens(folder, config) as config_folder:
                cfg = loading.get_pretrained_model_config(str(config_folder), fold_ln=fold, device=device)
        except NotImplementedError:
            raise CircuitsError(f"{folder}: TransformerLens cannot convert architecture {architecture}") from None
        except (OSError, ValueError, KeyError, AttributeError) as err:
            raise CircuitsError(f"{folder}: cannot read the {architecture} config ({_one_line(err)})") from None
        if not any((folder / f).is_file() for f in TOKENIZER_FILES):
            raise CircuitsError(f"{folder}: no tokenizer files (one of {', '.join(TOKENIZER_FILES)})")
        try:
            hf_model = AutoModelForCausalLM.from_pretrained(
                folder, local_files_only=True, use_safetensors=True, dtype=torch.float32
            )
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as err:
            raise CircuitsError(f"{folder}: {_one_line(err)}") from None
        n_vocab = hf_model.config.vocab_size
        if len(tokenizer) > n_vocab:
            raise CircuitsError(
                f"{folder}: the tokenizer has {len(tokenizer)} tokens, the model's vocabulary {n_vocab}"
            )
        hf_model.requires_grad_(False)
        state = loading.get_pretrained_state_dict(str(folder), cfg, hf_model)
        cfg.model_name, cfg.tokenizer_name = name or folder.name, str(folder)
        model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state, fold_ln=fold, center_writing_weights=fold, center_unembed=False, fold_value_biases=True
    )
    model.move_model_modules_to_device()
    return model.eval()


@contextmanager
def _config_for_transformer_lens(folder: Path, config: dict) -> Iterator[Path]:
    """``folder``, or a temporary copy of its config.json that TransformerLens can read:
    TransformerLens reads a GPT-2 config's ``n_ctx``, which transformers >= 5 no longer writes
    (it is ``n_positions``)."""
    if config.get("model_type") != "gpt2" or "n_ctx" in config:
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="sae-circuits-config-") as tmp:
        patched = {**config, "n_ctx": config.get("n_positions", 1024)}
        (Path(tmp) / CONFIG_FILE).write_text(json.dumps(patched))
        yield Path(tmp)
