"""Every "name -> object" resolver: what the command line's names mean, for the library too.

* `load_model`: ``"toy"`` (the embedded model, cached, trained on first use), a model folder
  (toy or Hugging Face format), or a TransformerLens name (the hub, or its local cache);
* `load_saes`: ``"toy"`` (the default SAE set, cached, trained on first use), an SAE-set
  folder, or a sae-lens release (``RELEASE`` for all its SAEs, ``RELEASE:ID,ID`` for some);
* `check_placement` / `place`: a model and SAE set on a device in a dtype; `load` does all of
  it, with the SAEs restricted to some hook kinds (`restrict`);
* `TaskSpec`: a task by name (built-in or a ``.jsonl`` file) and its prompts, with its
  held-out split (`TaskSpec.split`) and the record a circuit keeps of that split;
* `open_circuit`: a circuit file with the model, SAE set and held-out prompts it was found
  with, each overridable.

Trained artefacts live in `default_cache_dir()`: ``toy/`` and ``saes-toy/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, NamedTuple

import networkx as nx
import torch
from transformer_lens import HookedTransformer
from transformers import PreTrainedTokenizerBase

from circuits.circuit.ablation import check_graph
from circuits.circuit.graph import load_graph
from circuits.circuit.record import HeldOut, Sources, record_of
from circuits.core.config import field_default, param_default
from circuits.core.errors import CircuitsError
from circuits.loaders.pretrained import is_hf_folder, load_hf_folder, load_pretrained
from circuits.toy.model import TOY_NAME, load_default_model, load_saved_model
from sae.saeset import SAESet, release_entry
from sae.train import load_default_set
from tasks.builtin import make_task
from tasks.task import Task

TOY_SAES = "saes-toy"  # the default SAE set's folder in the cache


def default_cache_dir() -> Path:
    """Where trained artefacts live: $SAE_CIRCUITS_CACHE, else ``outputs/cache`` in a source
    checkout, else ``~/.cache/sae-circuits``."""
    if os.environ.get("SAE_CIRCUITS_CACHE"):
        return Path(os.environ["SAE_CIRCUITS_CACHE"])
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file():
        return repo / "outputs" / "cache"
    return Path.home() / ".cache" / "sae-circuits"


# ------------------------------------------------------------------------------ model
def load_model(
    name: str = TOY_NAME, device: str = "cpu", cache_dir: str | Path | None = None, progress: bool = True
) -> HookedTransformer:
    """The embedded toy model ("toy": cached, trained on first use), a saved model folder (toy
    or Hugging Face format), or a TransformerLens pretrained model by name (needs the Hugging
    Face hub or its local cache)."""
    if name == TOY_NAME:
        return load_default_model(Path(cache_dir or default_cache_dir()) / TOY_NAME, device, progress)
    if Path(name).is_dir():
        return load_hf_folder(name, device) if is_hf_folder(name) else load_saved_model(name, device)
    return load_pretrained(name, device)


# ------------------------------------------------------------------------------ SAE set
def load_saes(
    name: str = TOY_NAME,
    model: HookedTransformer | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> SAESet:
    """The embedded model's default SAE set ("toy": cached, trained on first use), a saved set
    folder (``FOLDER@WIDTH``: its SAEs' first WIDTH latents, a Matryoshka set's prefix), or a
    sae-lens release (``RELEASE``: all its SAEs, ``RELEASE:ID,ID``: those ids;
    from the Hugging Face hub or its local cache); checked against ``model`` when given
    (``model`` defaults to the toy model)."""
    if name != TOY_NAME:
        device = str(model.cfg.device) if model else "cpu"
        if Path(name).is_dir():
            return SAESet.load(name, model, device=device)
        folder, at, width = name.rpartition("@")
        if at and Path(folder).is_dir():  # FOLDER@WIDTH: a Matryoshka set's inner prefix
            if not width.isdigit():
                raise CircuitsError(f"{name}: the prefix width after '@' must be a whole number, got {width!r}")
            return SAESet.load(folder, model, device=device).prefix(int(width))
        release, _, ids = name.partition(":")
        if "/" in release or not release:
            raise CircuitsError(f"{name}: no such SAE-set folder (or use 'toy', or a sae-lens release)")
        try:
            release_entry(release)
        except CircuitsError as err:
            raise CircuitsError(f"{name}: no such SAE-set folder, and {err}") from None
        return SAESet.from_release(release, [i for i in ids.split(",") if i] or None, model, device)
    model = model or load_model(TOY_NAME, progress=progress)
    return load_default_set(Path(cache_dir or default_cache_dir()) / TOY_SAES, model, progress)


def hook_kinds(text: str) -> tuple[str, ...]:
    """``"resid,mlp"`` -> ("resid", "mlp")."""
    return tuple(k.strip() for k in text.split(",") if k.strip())


def restrict(saes: SAESet, kinds: str | None) -> SAESet:
    """``saes`` restricted to the comma-separated hook kinds (all when empty)."""
    if not kinds:
        return saes
    try:
        return saes.restrict(hook_kinds(kinds))
    except CircuitsError as err:
        raise CircuitsError(f"--hooks: {err}") from None


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


def load(
    model: str = TOY_NAME,
    saes: str = TOY_NAME,
    hooks: str | None = None,
    device: str = "cpu",
    dtype: DType = "fp32",
    progress: bool = True,
) -> tuple[HookedTransformer, SAESet]:
    """The model and SAE set these names give (`load_model`, `load_saes`), the set restricted
    to the comma-separated ``hooks`` kinds, both on ``device`` in ``dtype`` (checked before
    anything is loaded)."""
    check_placement(device, dtype)
    m = load_model(model, device=device, progress=progress)
    s = restrict(load_saes(saes, m, progress=progress), hooks)
    return place(m, s, device, dtype)


# ------------------------------------------------------------------------------ task and held-out split
MIN_HELD_OUT = 4  # prompt pairs on each side of a held-out split


class HeldOutSplit(NamedTuple):
    discovery: Task
    held_out: Task
    record: HeldOut  # which prompts were held out, as the circuit records it


@dataclass(frozen=True)
class TaskSpec:
    """A task by name, a built-in one (ioi, sva, greater_than, induction) or a ``.jsonl`` prompt
    file, and which of its prompts: ``n`` pairs of seed ``seed`` (a file: its first ``n`` rows);
    ``metric`` replaces the task's own."""

    name: str
    n: int = param_default(make_task, "n")
    seed: int = 0
    metric: str | None = None
    held_out_n: int | None = None  # a built-in task's held-out pairs (None: n)

    @property
    def is_file(self) -> bool:
        return self.name.endswith(".jsonl")

    def build(self, tokenizer: PreTrainedTokenizerBase) -> Task:
        return make_task(self.name, tokenizer, n=self.n, seed=self.seed, metric=self.metric)

    def split(self, tokenizer: PreTrainedTokenizerBase, task: Task | None = None) -> HeldOutSplit:
        """Discovery prompts and held-out prompts: a built-in task's next seed (``held_out_n``
        pairs, or as many as discovery), or the two halves of a prompt file (at least
        `MIN_HELD_OUT` pairs each); ``task`` is this spec's task when already built."""
        task = self.build(tokenizer) if task is None else task
        if not self.is_file:
            held = replace(self, seed=self.seed + 1, n=self.held_out_n or self.n)
            return HeldOutSplit(task, held.build(tokenizer), HeldOut(self.name, n=held.n, seed=held.seed))
        if task.n_examples < MIN_HELD_OUT * 2:
            raise CircuitsError(
                f"{self.name}: {task.n_examples} prompt pairs are too few to hold out half for validation "
                f"(--target-faithfulness needs at least {2 * MIN_HELD_OUT})"
            )
        half = task.n_examples // 2
        return HeldOutSplit(
            task.subset(slice(0, half)),
            task.subset(slice(half, task.n_examples)),
            HeldOut(self.name, rows=(half, task.n_examples)),
        )


# ------------------------------------------------------------------------------ circuit file
class OpenCircuit(NamedTuple):
    graph: nx.DiGraph
    model: HookedTransformer
    saes: SAESet
    task: Task


def open_circuit(
    circuit: str | Path | nx.DiGraph,
    model: str | None = None,
    saes: str | None = None,
    task: str | None = None,
    n: int | None = None,
    seed: int | None = None,
    progress: bool = True,
) -> OpenCircuit:
    """A circuit (its file, or the graph read from it) with the model, SAE set and task it was
    found with (its record's sources; each name overridable), checked against each other. The
    prompts default to held-out ones: discovery's seed + 1, or the rows of a file that were
    held out."""
    graph = circuit if isinstance(circuit, nx.DiGraph) else load_graph(circuit)
    record = record_of(graph)
    src = record.sources or Sources(task=record.task, n=field_default(TaskSpec, "n"))
    m = load_model(model or src.model, progress=progress)
    s = restrict(load_saes(saes or src.saes, m, progress=progress), src.hooks)
    check_graph(graph, m, s)
    seed = seed if seed is not None else src.seed + 1
    held_out = record.hierarchy.held_out if record.hierarchy is not None else None
    if n is None and held_out is not None and held_out.n is not None and task is None and held_out.seed == seed:
        n = held_out.n  # the held-out prompts themselves (discovery may have used more)
    spec = TaskSpec(task or src.task, n or src.n, seed, src.metric)
    prompts = spec.build(m.tokenizer)
    if held_out is not None and held_out.rows and spec.is_file and n is None:  # the file's held-out half
        prompts = prompts.subset(slice(*held_out.rows))
    return OpenCircuit(graph, m, s, prompts)
