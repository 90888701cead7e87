"""The embedded default model: a small HookedTransformer trained here on the toy language.

`load_model("toy")` loads it from the cache (training it on first use); a folder path loads a
saved toy-style model, or a model in Hugging Face format (what ``save_pretrained`` writes);
any other name goes to `HookedTransformer.from_pretrained`, which reads the local Hugging Face
cache alone when the hub cannot be reached, failing fast with one line when the model is not
there. Pretrained models keep the Hugging Face model's logits: LayerNorm is folded and the
writing weights centred (the activations sae-lens's released SAEs were trained on), the
unembedding is not centred.

A saved model folder holds ``config.json`` (a `ToyModelConfig`), ``model.safetensors`` and the
tokenizer files. Training writes an atomic checkpoint every ``checkpoint_every`` steps into
``<folder>.training/`` and resumes from it; batches are a pure function of (seed, step), so a
resumed run gives the same weights as an uninterrupted one.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PreTrainedTokenizerBase

from circuits.core.config import Config
from circuits.core.determinism import deterministic
from circuits.core.errors import CircuitsError
from circuits.core.fused import fused_supported, training_loss
from circuits.core.hub import cached_snapshot, hub_reachable, in_hf_cache, offline
from circuits.core.precision import Autocast, as_setting, use_bf16
from tasks.corpus import corpus_tokens
from tasks.language import Mixture
from tasks.tokenizer import build_tokenizer, load_tokenizer

if TYPE_CHECKING:
    from sae.saeset import SAESet

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
# {"default": trained with the default recipe of its day, "bf16": its products were bf16}
RECORD_FILE = "training.json"
TOY_NAME = "toy"


def default_cache_dir() -> Path:
    """Where trained artefacts live: $SAE_CIRCUITS_CACHE, else ``outputs/cache`` in a source
    checkout, else ``~/.cache/sae-circuits``."""
    if os.environ.get("SAE_CIRCUITS_CACHE"):
        return Path(os.environ["SAE_CIRCUITS_CACHE"])
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file():
        return repo / "outputs" / "cache"
    return Path.home() / ".cache" / "sae-circuits"


ActFn = Literal["gelu", "gelu_new", "gelu_fast", "relu", "silu", "solu_ln"]
Normalization = Literal["LN", "LNPre", "RMS", "RMSPre"]


@dataclass
class ToyModelConfig(Config):
    """Architecture and training recipe of a toy-language model."""

    label: ClassVar[str] = "model config"

    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    n_ctx: int = 64
    act_fn: ActFn = "gelu"
    normalization_type: Normalization | None = "LN"
    seed: int = 0
    steps: int = 850
    batch_size: int = 64
    seq_len: int = 64
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.01
    checkpoint_every: int = 100
    # bf16 weight products in training steps (circuits/fused.py): "auto" where the hardware
    # multiplies bf16 natively (~1.5-2x faster there; 17x slower where it does not), "on", "off"
    autocast: Autocast = "auto"
    mixture: Mixture = field(default_factory=Mixture)

    def __post_init__(self) -> None:
        self.autocast = as_setting(self.autocast)  # configs saved when it was a bool
        super().__post_init__()

    def validate(self) -> None:
        """A `CircuitsError` naming the first setting that cannot work."""
        for name in ("n_layers", "d_model", "n_heads", "d_mlp", "n_ctx", "steps", "batch_size", "seq_len"):
            if getattr(self, name) <= 0:
                raise CircuitsError(f"model config: {name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise CircuitsError(f"model config: d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.seq_len > self.n_ctx:
            raise CircuitsError(f"model config: seq_len {self.seq_len} is longer than n_ctx {self.n_ctx}")
        if self.seq_len < 20:
            raise CircuitsError(
                f"model config: seq_len {self.seq_len} is shorter than the toy language's sentences (need >= 20)"
            )

    def hooked_config(self, d_vocab: int) -> HookedTransformerConfig:
        return HookedTransformerConfig(
            n_layers=self.n_layers,
            d_model=self.d_model,
            n_heads=self.n_heads,
            d_head=self.d_model // self.n_heads,
            d_mlp=self.d_mlp,
            n_ctx=self.n_ctx,
            d_vocab=d_vocab,
            act_fn=self.act_fn,
            normalization_type=self.normalization_type,
            seed=self.seed,
            model_name="toy",
        )


def build_model(cfg: ToyModelConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> HookedTransformer:
    """A freshly initialised (seeded) model for ``cfg`` with the toy tokenizer."""
    tokenizer = tokenizer or build_tokenizer()
    return HookedTransformer(cfg.hooked_config(len(tokenizer)), tokenizer=tokenizer)


# ------------------------------------------------------------------------------ training
def training_batch(tokenizer: PreTrainedTokenizerBase, cfg: ToyModelConfig, step: int) -> torch.Tensor:
    """The token batch of training step ``step``: a pure function of (cfg.seed, step)."""
    return corpus_tokens(tokenizer, f"train/{cfg.seed}/{step}", cfg.batch_size, cfg.seq_len, cfg.mixture)


def learning_rate(cfg: ToyModelConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 10% of ``cfg.lr``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_model(
    cfg: ToyModelConfig,
    folder: str | Path,
    progress: bool = True,
    stop_after: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> HookedTransformer | None:
    """Train ``cfg`` and save the model to ``folder``, resuming from ``<folder>.training/``.

    ``stop_after`` stops (checkpointed) after that many steps of this call without saving the
    final model — used to test resumption; the function then returns None.
    """
    folder = Path(folder)
    ckpt_dir = folder.with_name(folder.name + ".training")
    tokenizer = build_tokenizer()
    model = build_model(cfg, tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = _resume(ckpt_dir, cfg, model, optimizer)
    fused, bf16 = fused_supported(model), use_bf16(cfg.autocast)
    model.train()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train model", disable=not progress)
    for i, step in enumerate(bar):
        if stop_after is not None and i >= stop_after:
            _checkpoint(ckpt_dir, cfg, model, optimizer, step)
            return None
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        with deterministic():  # same seed, same weights
            tokens = training_batch(tokenizer, cfg, step)
            if fused:
                loss = training_loss(model, tokens, bf16=bf16)
            else:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = model(tokens, return_type="loss")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if on_step:
            on_step(step, loss.item())
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            _checkpoint(ckpt_dir, cfg, model, optimizer, step + 1)
    model.eval()
    save_model(model, cfg, folder)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return model


def _checkpoint(
    ckpt_dir: Path, cfg: ToyModelConfig, model: HookedTransformer, optimizer: torch.optim.Optimizer, step: int
) -> None:
    """Write a checkpoint atomically: a new folder renamed over the old one."""
    tmp = ckpt_dir.with_name(ckpt_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_contiguous(model.state_dict()), str(tmp / WEIGHTS_FILE))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "config": cfg.to_dict()}))
    old = ckpt_dir.with_name(ckpt_dir.name + ".old")
    if ckpt_dir.exists():
        shutil.rmtree(old, ignore_errors=True)
        ckpt_dir.rename(old)
    tmp.rename(ckpt_dir)
    shutil.rmtree(old, ignore_errors=True)


def _resume(ckpt_dir: Path, cfg: ToyModelConfig, model: HookedTransformer, optimizer: torch.optim.Optimizer) -> int:
    """Load the last good checkpoint into model and optimizer; return its step (0 if none)."""
    old = ckpt_dir.with_name(ckpt_dir.name + ".old")
    source = ckpt_dir if (ckpt_dir / "state.json").is_file() else old
    if not (source / "state.json").is_file():
        return 0
    state = json.loads((source / "state.json").read_text())
    if state["config"] != cfg.to_dict():
        raise CircuitsError(f"{source}: checkpoint was made with a different model config; delete it to start over")
    _load_weights(model, source / WEIGHTS_FILE)
    optimizer.load_state_dict(torch.load(source / "optimizer.pt", weights_only=True))
    return int(state["step"])


# ------------------------------------------------------------------------------ save / load
def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in state.items()}


def save_model(model: HookedTransformer, cfg: ToyModelConfig, folder: str | Path) -> None:
    """Save weights, config and tokenizer into ``folder``, atomically (tmp folder + rename)."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".saving")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_contiguous(model.state_dict()), str(tmp / WEIGHTS_FILE))
    (tmp / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2))
    record = {"default": cfg == ToyModelConfig(), "bf16": use_bf16(cfg.autocast)}
    (tmp / RECORD_FILE).write_text(json.dumps(record))
    model.tokenizer.save_pretrained(str(tmp))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def _load_weights(model: HookedTransformer, path: Path) -> None:
    if not path.is_file():
        raise CircuitsError(f"{path}: weights file is missing")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CircuitsError(f"{path}: corrupt weights file ({err})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CircuitsError(f"{path}: weights are missing {missing[0]} (and {len(missing) - 1} more)")
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape:
            raise CircuitsError(
                f"{path}: {name} has shape {tuple(state[name].shape)}, config needs {tuple(tensor.shape)}"
            )
    model.load_state_dict(state, strict=False)


def load_saved_model(folder: str | Path, device: str = "cpu") -> HookedTransformer:
    """Load a model folder written by `save_model`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CircuitsError(f"{folder}: no such model folder")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise CircuitsError(f"{folder}: no {CONFIG_FILE} (not a saved model folder, or a partial one)")
    try:
        cfg = ToyModelConfig.from_dict(json.loads(config_path.read_text()), where=str(config_path))
    except (json.JSONDecodeError, TypeError) as err:
        raise CircuitsError(f"{config_path}: not a valid model config ({err})") from None
    model = build_model(cfg, load_tokenizer(folder))
    _load_weights(model, folder / WEIGHTS_FILE)
    model.eval()
    return model.to(device, print_details=False)


def load_model(
    name: str = TOY_NAME, device: str = "cpu", cache_dir: str | Path | None = None, progress: bool = True
) -> HookedTransformer:
    """The embedded toy model ("toy": cached, trained on first use), a saved model folder (toy
    or Hugging Face format), or a TransformerLens pretrained model by name (needs the Hugging
    Face hub or its local cache)."""
    if name == TOY_NAME:
        folder = Path(cache_dir or default_cache_dir()) / TOY_NAME
        reason = _stale_reason(folder)
        if reason:
            if (folder / CONFIG_FILE).is_file():
                print(f"{folder}: {reason}; training the default model again", file=sys.stderr)
            train_model(ToyModelConfig(), folder, progress=progress)
        return load_saved_model(folder, device)
    if Path(name).is_dir():
        return load_hf_folder(name, device) if is_hf_folder(name) else load_saved_model(name, device)
    return load_pretrained(name, device)


def _stale_reason(folder: Path) -> str | None:
    """Why the cached toy model in ``folder`` must be trained (again), or None to use it: it is
    missing, predates training records, or was trained with an earlier default recipe. A
    model trained there with other settings (`circuits train-model --seed 3`) is kept."""
    if not (folder / CONFIG_FILE).is_file():
        return "no model"
    try:
        default = json.loads((folder / RECORD_FILE).read_text())["default"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return f"no readable {RECORD_FILE} (trained before training records)"
    try:
        saved = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None  # load_saved_model says what is wrong with it
    if default and saved != json.loads(json.dumps(ToyModelConfig().to_dict())):
        return "trained with an earlier default recipe"
    return None


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


# ------------------------------------------------------------------------------ placement
DType = Literal["fp32", "bf16", "fp16"]
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_placement(device: str = "cpu", dtype: DType = "fp32") -> torch.dtype:
    """The torch dtype named by ``dtype``; a one-line `CircuitsError` for an unknown dtype or
    a CUDA device when no GPU is visible (checked before anything is loaded)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CircuitsError(
            f"--device {device}: no GPU is visible here (torch.cuda.is_available() is False); use --device cpu"
        )
    if dtype not in DTYPES:
        raise CircuitsError(f"--dtype {dtype}: use {', '.join(DTYPES)}")
    return DTYPES[dtype]


def place(
    model: HookedTransformer, saes: SAESet | None = None, device: str = "cpu", dtype: DType = "fp32"
) -> tuple[HookedTransformer, SAESet | None]:
    """Move ``model`` and ``saes`` (in place) to ``device`` and ``dtype`` (fp32, bf16, fp16);
    returns them. Sums in the library are kept in float32 whatever the dtype."""
    torch_dtype = check_placement(device, dtype)
    if str(model.cfg.device) != device:
        model.to(device, print_details=False)
    if saes is not None:
        saes.to(device=device)
    if torch_dtype != torch.float32:
        model.cfg.dtype = torch_dtype
        model.to(torch_dtype)
        if saes is not None:
            saes.to(dtype=torch_dtype)
    return model, saes
