"""One submodule's latents and error term as one value (docs/design.md, "Vocabulary").

``NodeValues(latents, error)`` is what a spliced hook exposes: latents ``[..., d_sae]`` and
the error ``[..., d_in]``. The same type holds their gradients, per-node effects (the error's
feature axis summed: ``[...]``), masks (booleans) and reference values, so attribution reads
as in the paper: ``effect = delta @ grad`` for every submodule. The embeddings are a
submodule with no latents (width 0) whose "error" is the embedding vector.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass
class NodeValues:
    latents: Tensor
    error: Tensor

    def map(self, fn: Callable[[Tensor], Tensor]) -> NodeValues:
        return NodeValues(fn(self.latents), fn(self.error))

    def _zip(self, other: NodeValues | float, op) -> NodeValues:
        if isinstance(other, NodeValues):
            return NodeValues(op(self.latents, other.latents), op(self.error, other.error))
        return NodeValues(op(self.latents, other), op(self.error, other))

    def __add__(self, other: NodeValues | float) -> NodeValues:
        return self._zip(other, torch.add)

    def __sub__(self, other: NodeValues | float) -> NodeValues:
        return self._zip(other, torch.sub)

    def __mul__(self, other: NodeValues | float) -> NodeValues:
        return self._zip(other, torch.mul)

    def __truediv__(self, other: float) -> NodeValues:
        return self._zip(other, torch.div)

    def __matmul__(self, grad: NodeValues) -> NodeValues:
        """Per-node effect of this change given the metric's gradient: latents elementwise,
        the error node's dot product over its feature axis."""
        return NodeValues(self.latents * grad.latents, (self.error * grad.error).sum(-1))

    def sum(self, dim: int | tuple[int, ...]) -> NodeValues:
        """Summed over leading axes (``dim`` must not include the last one)."""
        return NodeValues(self.latents.sum(dim), self.error.sum(dim))

    def detach(self) -> NodeValues:
        return self.map(Tensor.detach)

    def cpu(self) -> NodeValues:
        return self.map(lambda t: t.detach().float().cpu())

    def leaves(self) -> NodeValues:
        """Detached copies that require grad (for reading dm/d(latents), dm/d(error))."""
        return self.map(lambda t: t.detach().requires_grad_(True))

    @classmethod
    def zeros(
        cls, lead: tuple[int, ...], d_sae: int, d_error: int | None = None, dtype: torch.dtype = torch.float32
    ) -> NodeValues:
        """Zeros with ``lead`` leading axes; error ``[*lead, d_error]``, or ``[*lead]`` for
        effects and masks (``d_error`` None)."""
        error = lead if d_error is None else (*lead, d_error)
        return cls(torch.zeros(*lead, d_sae, dtype=dtype), torch.zeros(*error, dtype=dtype))

    def complement(self) -> NodeValues:
        """The other nodes of a mask."""
        return self.map(torch.logical_not)

    def count(self) -> tuple[int, int]:
        """(latent nodes, error nodes) set in a mask."""
        return int(self.latents.sum()), int(self.error.sum())


def add_into(sums: dict[str, NodeValues], values: dict[str, NodeValues]) -> None:
    """``sums[h] += values[h]`` for every hook of ``values``, in place."""
    for h, v in values.items():
        sums[h].latents += v.latents
        sums[h].error += v.error


def flat(values: dict[str, NodeValues]) -> list[Tensor]:
    """Every tensor, for an all-reduce."""
    return [t for v in values.values() for t in (v.latents, v.error)]
