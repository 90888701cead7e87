"""The vocabulary every stage shares: submodules, sites and nodes (docs/design.md, "Vocabulary").

* A **submodule** is a place an SAE reads: ``(layer, kind)`` with kind ``attn``
  (``blocks.L.hook_attn_out``), ``mlp`` (``blocks.L.hook_mlp_out``) or ``resid``
  (``blocks.L.hook_resid_post``), plus the token embeddings (kind ``embed``, layer -1, read
  at ``blocks.0.hook_resid_pre``). Its TransformerLens hook name is its spelling; this module
  is the only place that spells or parses hook names.
* A **site** is a submodule at a token position (``None``: summed over positions).
* A **node** is a latent, the SAE error term, or the embedding vector, at a site. Its id
  string (``blocks.2.hook_mlp_out/317@S2``, ``blocks.2.hook_mlp_out/err@S2``, ``embed@IO``)
  and its graph attributes round-trip through ``Node.attrs`` / ``Node.from_attrs``.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Literal, get_args

from circuits.errors import CircuitsError

Kind = Literal["embed", "attn", "mlp", "resid"]
HookKind = Literal["resid", "mlp", "attn"]  # the kinds users name (--hooks resid,mlp,attn)
SAE_KINDS: tuple[str, ...] = ("attn", "mlp", "resid")  # forward order inside a block
_SUFFIX = {"attn": "hook_attn_out", "mlp": "hook_mlp_out", "resid": "hook_resid_post"}
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
        parts = hook.split(".")
        kinds = {suffix: kind for kind, suffix in _SUFFIX.items()}
        if len(parts) != 3 or parts[0] != "blocks" or not parts[1].isdigit() or parts[2] not in kinds:
            raise CircuitsError(
                f"hook {hook!r}: circuits are defined on blocks.L.hook_attn_out, "
                f"hook_mlp_out and hook_resid_post (and {EMBED_HOOK}, the embeddings)"
            )
        return cls(int(parts[1]), kinds[parts[2]])

    @property
    def hook(self) -> str:
        return EMBED_HOOK if self.kind == "embed" else f"blocks.{self.layer}.{_SUFFIX[self.kind]}"

    @property
    def is_embed(self) -> bool:
        return self.kind == "embed"

    @property
    def order(self) -> tuple[int, int]:
        """Sort key: forward order (embeddings, then attn, mlp, resid of each block)."""
        return self.layer, -1 if self.is_embed else SAE_KINDS.index(self.kind)

    @property
    def block_input(self) -> str:
        """The hook of the residual stream entering this submodule's block."""
        return resid_pre(max(self.layer, 0))

    def upstream(self, available: Collection[str]) -> list[Submodule]:
        """Submodules with a direct edge into this one (SFC's layout), residual stream first:
        resid_{L-1} (the embeddings for L = 0) -> attn_L, mlp_L, resid_L; attn_L -> mlp_L,
        resid_L; mlp_L -> resid_L. ``available`` are the hooks with an SAE: attn_L / mlp_L
        without one are left out (paths through them then count as direct from the residual
        stream); a missing resid_{L-1} is an error naming it."""
        if self.is_embed:
            return []
        before = Submodule.embed() if self.layer == 0 else Submodule(self.layer - 1, "resid")
        if not before.is_embed and before.hook not in available:
            raise CircuitsError(f"edges into {self.hook} need an SAE at {before.hook} (the set lacks it)")
        inner = SAE_KINDS[: SAE_KINDS.index(self.kind)]  # what runs before it in its block
        return [before] + [s for s in (Submodule(self.layer, k) for k in inner) if s.hook in available]


@functools.lru_cache(maxsize=4096)
def _parse(hook: str) -> Submodule:  # node ids are built by the ten thousand: parse each hook once
    return Submodule._parse(hook)


def submodules(kinds: Iterable[str], layers: Iterable[int]) -> list[Submodule]:
    """Every (layer, kind), in forward order; an unknown kind is one line."""
    kinds = list(kinds)
    unknown = [k for k in kinds if k not in SAE_KINDS]
    if unknown:
        raise CircuitsError(f"unknown hook kind {unknown[0]!r}: use {', '.join(SAE_KINDS)}")
    return [Submodule(layer, k) for layer in layers for k in SAE_KINDS if k in kinds]


def hook_names(kinds: Iterable[str], layers: Iterable[int]) -> list[str]:
    """TransformerLens hook names for every (layer, kind), in forward order."""
    return [s.hook for s in submodules(kinds, layers)]


def activation_width(hook: str, d_model: int, d_mlp: int) -> int:
    """Width of the activation at a hook an SAE may read: d_model on the residual stream
    (resid_pre / resid_mid / resid_post), attn_out and mlp_out; d_mlp inside the MLP."""
    if hook.endswith(("hook_resid_post", "hook_resid_pre", "hook_resid_mid", "hook_mlp_out", "hook_attn_out")):
        return d_model
    if hook.endswith(("mlp.hook_post", "mlp.hook_pre")):
        return d_mlp
    raise CircuitsError(f"hook {hook!r}: SAEs are supported on resid, mlp_out and attn_out hooks")


def in_forward_order(hooks: Iterable[str]) -> list[str]:
    return sorted(hooks, key=lambda h: Submodule.parse(h).order)


def kind_of(hook: str) -> str:
    """``embed``, ``attn``, ``mlp`` or ``resid``."""
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
    def is_error(self) -> bool:
        return self.latent is None and not self.submodule.is_embed

    @property
    def is_embed(self) -> bool:
        return self.submodule.is_embed

    @property
    def id(self) -> str:
        if self.is_embed:
            return self.site.id
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
