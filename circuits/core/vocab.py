"""The vocabulary every stage shares: submodules, sites and nodes (docs/design.md, "Vocabulary").

* A **submodule** is a place an SAE reads: ``(layer, kind)``. The residual stream is read at
  ``blocks.L.hook_resid_pre`` (kind ``resid_pre``), ``hook_resid_mid`` (``resid_mid``) and
  ``hook_resid_post`` (``resid``); what blocks write into it at ``hook_attn_out`` (``attn``),
  ``attn.hook_z`` (``z``: every head's output, concatenated; ``attn_out = z W_O + b_O``) and
  ``hook_mlp_out`` (``mlp``). The token embeddings are kind ``embed`` (layer -1, read at
  ``blocks.0.hook_resid_pre``): the graph's inputs, split into latents and an error term when
  a set has an SAE there (as gpt2-small-res-jb does). The TransformerLens hook name is a
  submodule's spelling; this module is the only place that spells or parses hook names, and
  the only place that knows which submodule feeds which (``Submodule.upstream``).
* A **site** is a submodule at a token position (``None``: summed over positions).
* A **node** is a latent, the SAE error term, or the embedding vector, at a site. Its id
  string (``blocks.2.hook_mlp_out/317@S2``, ``blocks.2.hook_mlp_out/err@S2``, ``embed@IO``;
  ``embed/17@IO``: latent 17 of an SAE on the embeddings, whose error term is ``embed@IO``)
  and its graph attributes round-trip through ``Node.attrs`` / ``Node.from_attrs``.
* A **latent** without its position, ``Latent(hook, index)`` (id ``blocks.2.hook_mlp_out/317``),
  is what a feature card describes and an edit switches off: ``Node.feature``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

from circuits.core.errors import CircuitsError

if TYPE_CHECKING:
    import torch

Kind = Literal["embed", "resid_pre", "z", "attn", "resid_mid", "mlp", "resid"]
HookKind = Literal["resid", "mlp", "attn"]  # the kinds `circuits train-saes --hooks` trains
# Every kind an SAE may read inside a block, in forward order.
BLOCK_KINDS: tuple[str, ...] = ("resid_pre", "z", "attn", "resid_mid", "mlp", "resid")
SAE_KINDS: tuple[str, ...] = ("attn", "mlp", "resid")  # the default set's kinds, forward order
_SUFFIX = {
    "resid_pre": "hook_resid_pre",
    "z": "attn.hook_z",
    "attn": "hook_attn_out",
    "resid_mid": "hook_resid_mid",
    "mlp": "hook_mlp_out",
    "resid": "hook_resid_post",
}
_HOOK = re.compile(r"blocks\.(\d+)\.(" + "|".join(re.escape(s) for s in _SUFFIX.values()) + ")")
STREAM_KINDS = ("embed", "resid_pre", "resid_mid", "resid")  # the residual stream itself
EMBED_HOOK = "blocks.0.hook_resid_pre"  # token + position embeddings: the graph's input nodes
METRIC = "metric"  # the graph's output node
_EMBED_ID = "embed"


def resid_pre(layer: int) -> str:
    """The hook holding block ``layer``'s input (the residual stream before it)."""
    return f"blocks.{layer}.hook_resid_pre"


@dataclass(frozen=True)
class Submodule:
    """(layer, kind); the embeddings are ``Submodule(-1, "embed")``."""

    layer: int
    kind: Kind

    def __post_init__(self) -> None:
        if self.kind not in get_args(Kind):
            raise CircuitsError(f"unknown submodule kind {self.kind!r}: use {', '.join(get_args(Kind))}")
        if (self.kind == "embed") != (self.layer == -1) or self.layer < -1:
            raise CircuitsError(f"submodule ({self.layer}, {self.kind}): embeddings are layer -1, blocks 0 and up")
        if self.kind == "resid_pre" and self.layer == 0:
            raise CircuitsError(f"{EMBED_HOOK} is the embeddings: Submodule.embed(), not (0, resid_pre)")

    @classmethod
    def embed(cls) -> Submodule:
        return cls(-1, "embed")

    @classmethod
    def parse(cls, hook: str) -> Submodule:
        """The submodule a TransformerLens hook name stands for."""
        return _parse(hook)

    @classmethod
    def _parse(cls, hook: str) -> Submodule:
        if hook == EMBED_HOOK:
            return cls.embed()
        match = _HOOK.fullmatch(hook)
        if match is None:
            raise CircuitsError(
                f"hook {hook!r}: circuits are defined on blocks.L.hook_resid_pre, hook_resid_mid, "
                "hook_resid_post, hook_attn_out, attn.hook_z and hook_mlp_out"
            )
        kinds = {suffix: kind for kind, suffix in _SUFFIX.items()}
        return cls(int(match[1]), kinds[match[2]])

    @property
    def hook(self) -> str:
        return EMBED_HOOK if self.kind == "embed" else f"blocks.{self.layer}.{_SUFFIX[self.kind]}"

    @property
    def is_embed(self) -> bool:
        return self.kind == "embed"

    @property
    def order(self) -> tuple[int, int]:
        """Sort key: forward order (the embeddings, then each block's kinds, BLOCK_KINDS)."""
        return (-1, 0) if self.is_embed else (self.layer, BLOCK_KINDS.index(self.kind))

    @property
    def is_stream(self) -> bool:
        """Whether it reads the residual stream itself (which holds everything before it)."""
        return self.kind in STREAM_KINDS

    @property
    def block_input(self) -> str:
        """The hook of the residual stream entering this submodule's block."""
        return resid_pre(max(self.layer, 0))

    def stream(self, parallel: bool = False) -> int:
        """Where on the residual stream it reads (2L: block L's input, 2L + 1: its middle, 2L
        + 2: its output); for a block's attention or MLP, the stream its block feeds it."""
        if self.is_embed:
            return 0
        base = 2 * self.layer
        return (
            base
            + {"resid_pre": 0, "z": 0, "attn": 0, "resid_mid": 1, "mlp": 0 if parallel else 1, "resid": 2}[self.kind]
        )

    def writes(self, parallel: bool = False) -> int:
        """Where its output joins the residual stream (attention and MLP outputs only)."""
        if self.kind in ("z", "attn"):
            return 2 * self.layer + (2 if parallel else 1)
        if self.kind == "mlp":
            return 2 * self.layer + 2
        raise CircuitsError(f"{self.hook} reads the residual stream; it does not write to it")

    @property
    def start_block(self) -> int:
        """The block a forward pass continuing from this submodule's activation starts at:
        the block it is in, or the next one for a block's output (resid_post, mlp_out)."""
        return self.layer + 1 if self.kind in ("resid", "mlp") else max(self.layer, 0)

    def upstream(self, available: Collection[str], parallel: bool = False) -> list[Submodule]:
        """Submodules with a direct edge into this one (docs/design.md, "Edges"), the residual
        stream first: the nearest submodule before it that reads the residual stream (the
        embeddings if none), then every attention / MLP output with an SAE that joins the
        stream after that point and before this one reads it. An ``attn`` submodule whose
        heads (``z``) have an SAE gets that alone. ``available`` are the hooks with an SAE;
        paths through submodules without one count as direct. ``parallel``: attention and
        MLP both read the block's input (GPT-J, GPT-NeoX)."""
        if self.is_embed:
            return []
        subs = [Submodule.parse(h) for h in available]
        if self.kind == "attn" and Submodule(self.layer, "z") in subs:
            return [Submodule(self.layer, "z")]
        return _inputs(self.stream(parallel), self.order, subs, parallel)


def metric_inputs(available: Collection[str], n_layers: int, parallel: bool = False) -> list[Submodule]:
    """The submodules with a direct edge into the metric (which reads the last block's output)."""
    subs = [Submodule.parse(h) for h in available]
    return _inputs(2 * n_layers, (n_layers, 0), subs, parallel)


def _inputs(reads: int, before: tuple[int, int], subs: list[Submodule], parallel: bool) -> list[Submodule]:
    """The nearest stream submodule at or before stream point ``reads`` (and before ``before``
    in forward order), then the attention / MLP outputs that join the stream after it and by
    ``reads`` (``z`` only where its block's attn_out has no SAE)."""
    stream = [s for s in subs if s.is_stream and s.stream(parallel) <= reads and s.order < before]
    base = max(stream, key=lambda s: (s.stream(parallel), s.order), default=Submodule.embed())
    start = base.stream(parallel) if not base.is_embed else 0
    writers = [
        s
        for s in subs
        if not s.is_stream
        and start < s.writes(parallel) <= reads
        and s.order < before
        and not (s.kind == "z" and Submodule(s.layer, "attn") in subs)
    ]
    return [base] + sorted(writers, key=lambda s: s.order)


@functools.lru_cache(maxsize=4096)
def _parse(hook: str) -> Submodule:  # node ids are built by the ten thousand: parse each hook once
    return Submodule._parse(hook)


def submodules(kinds: Iterable[str], layers: Iterable[int]) -> list[Submodule]:
    """Every (layer, kind), in forward order (resid_pre of block 0: the embeddings); an
    unknown kind is one line."""
    kinds = list(kinds)
    unknown = [k for k in kinds if k not in BLOCK_KINDS]
    if unknown:
        raise CircuitsError(f"unknown hook kind {unknown[0]!r}: use {', '.join(BLOCK_KINDS)}")
    return [
        Submodule.embed() if (layer, k) == (0, "resid_pre") else Submodule(layer, k)
        for layer in layers
        for k in BLOCK_KINDS
        if k in kinds
    ]


def hook_names(kinds: Iterable[str], layers: Iterable[int]) -> list[str]:
    """TransformerLens hook names for every (layer, kind), in forward order."""
    return [s.hook for s in submodules(kinds, layers)]


def activation_width(hook: str, d_model: int, d_mlp: int, d_heads: int) -> int:
    """Width of the activation at a hook an SAE may read: d_model on the residual stream
    (resid_pre / resid_mid / resid_post), attn_out and mlp_out; n_heads x d_head at
    attn.hook_z (the heads concatenated); d_mlp inside the MLP."""
    if hook.endswith(("hook_resid_post", "hook_resid_pre", "hook_resid_mid", "hook_mlp_out", "hook_attn_out")):
        return d_model
    if hook.endswith("attn.hook_z"):
        return d_heads
    if hook.endswith(("mlp.hook_post", "mlp.hook_pre")):
        return d_mlp
    raise CircuitsError(f"hook {hook!r}: SAEs are supported on resid, mlp_out, attn_out and attn.hook_z hooks")


def in_forward_order(hooks: Iterable[str]) -> list[str]:
    return sorted(hooks, key=lambda h: Submodule.parse(h).order)


def kind_of(hook: str) -> str:
    """``embed`` or one of BLOCK_KINDS."""
    return Submodule.parse(hook).kind


def layer_of(hook: str) -> int:
    return Submodule.parse(hook).layer


def position_label(position: int | None, labels: list[str] | None) -> str:
    """The label of a position: the task's (templated prompts), ``p<i>``, or ``*`` (summed)."""
    if position is None:
        return "*"
    return labels[position] if labels else f"p{position}"


@dataclass(frozen=True)
class Site:
    """A submodule at a token position (``None``: every position, summed); ``label`` is how
    the position is shown (the task's label for templated prompts)."""

    submodule: Submodule
    position: int | None
    label: str = field(default="", compare=False)

    @classmethod
    def at(cls, hook: str, position: int | None, labels: list[str] | None = None) -> Site:
        return cls(Submodule.parse(hook), position, position_label(position, labels))

    @property
    def hook(self) -> str:
        return self.submodule.hook

    @property
    def id(self) -> str:
        """``hook@label`` (``embed@label`` for the embeddings)."""
        return f"{_EMBED_ID if self.submodule.is_embed else self.hook}@{self.label}"


@dataclass(frozen=True, order=True)
class Latent:
    """One SAE latent, wherever it fires: the SAE's hook and the latent's index. Sorts by
    hook, then index."""

    hook: str
    index: int

    @property
    def id(self) -> str:
        """``hook/index`` (``blocks.2.hook_mlp_out/317``)."""
        return f"{self.hook}/{self.index}"


@dataclass(frozen=True)
class Node:
    """A latent (``latent`` set), the error term (``latent`` None) or, at the embeddings
    site, the embedding vector."""

    site: Site
    latent: int | None = None

    @classmethod
    def at(cls, hook: str, position: int | None, latent: int | None = None, labels: list[str] | None = None) -> Node:
        return cls(Site.at(hook, position, labels), latent)

    @property
    def hook(self) -> str:
        return self.site.hook

    @property
    def submodule(self) -> Submodule:
        return self.site.submodule

    @property
    def position(self) -> int | None:
        return self.site.position

    @property
    def feature(self) -> Latent | None:
        """The latent this node is at some position (None: an error term or the embedding)."""
        return None if self.latent is None else Latent(self.hook, self.latent)

    @property
    def is_error(self) -> bool:
        return self.latent is None and not self.submodule.is_embed

    @property
    def is_embed(self) -> bool:
        return self.submodule.is_embed

    @property
    def id(self) -> str:
        if self.is_embed:  # the embedding vector (or, with an SAE there, its error), or a latent of that SAE
            return self.site.id if self.latent is None else f"{_EMBED_ID}/{self.latent}@{self.site.label}"
        return f"{self.hook}/{'err' if self.latent is None else self.latent}@{self.site.label}"

    def attrs(self, effect: float, activation: float) -> dict:
        """The attributes the node carries in a circuit graph."""
        return {
            "hook": self.hook,
            "layer": self.submodule.layer,
            "kind": self.submodule.kind,
            "latent": self.latent,
            "is_error": self.is_error,
            "position": self.position,
            "pos_label": self.site.label,
            "effect": float(effect),
            "activation": float(activation),
        }

    @classmethod
    def from_attrs(cls, attrs: dict) -> Node:
        """The node a graph's attributes describe (circuit files from before embeddings
        carried their hook have ``hook: null, kind: "embed"``)."""
        hook = EMBED_HOOK if attrs.get("kind") == "embed" else attrs.get("hook")
        if hook is None:
            raise CircuitsError(f"graph node {attrs!r} is not a latent, error or embedding node")
        return cls(Site(Submodule.parse(hook), attrs.get("position"), attrs.get("pos_label", "")), attrs.get("latent"))


def flat_act(x: torch.Tensor) -> torch.Tensor:
    """An activation as SAEs read it, ``[batch, pos, width]``: attn.hook_z's
    ``[batch, pos, n_heads, d_head]`` with the heads concatenated (a view where it can be)."""
    return x.flatten(2) if x.ndim == 4 else x


def on_flat(fn: Callable) -> Callable:
    """A TransformerLens hook function that lets ``fn(x, hook)`` see and return activations
    as ``flat_act`` gives them; whatever ``fn`` returns (or the flat view, when it returns
    None, so gradients taken at what it recorded reach the model) goes on in the hook's own
    shape."""

    def hook(x: torch.Tensor, hook):
        if x.ndim != 4:
            return fn(x, hook)
        rows = x.flatten(2)
        out = fn(rows, hook)
        return (rows if out is None else out).unflatten(2, x.shape[2:])

    return hook
