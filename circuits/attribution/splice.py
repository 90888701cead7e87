"""Splicing: the model with its SAEs inside, equal to the model, latents and errors as nodes.

At a hook with activation x, SAE encoder E and decoder D, the splice returns

    x + (D(f) + e) - stop_grad(D(f) + e),    f = E(x), e = x - D(E(x)),

where f and e are fresh leaf tensors. Forward, that is x to the bit (z - z == 0), so logits
are the model's. Backward, the gradient reaching x is exactly the model's own (the identity;
no path runs through an SAE encoder), while dm/df and dm/de can be read off the leaves. This
is what sae-lens's ``HookedSAETransformer(use_error_term=True)`` gets wrong for attribution:
its error term is computed under no_grad, so upstream gradients flow through every
downstream SAE (docs/design.md, "Splicing").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from transformer_lens import HookedTransformer

from circuits.core.values import NodeValues
from circuits.core.vocab import on_flat
from sae.saeset import SAESet

# Replaces a hook's nodes by other values: patching, interpolation, ablation, edits.
NodeEdit = Callable[[NodeValues], NodeValues]


def encode(sae, x: torch.Tensor) -> NodeValues:
    """The latents and error term of activation ``x`` (no gradient)."""
    with torch.no_grad():
        f = sae.encode(x)
        return NodeValues(f, x - sae.decode(f))


def decode(sae, v: NodeValues) -> torch.Tensor:
    """The activation the nodes stand for: D(f) + e."""
    return sae.decode(v.latents) + v.error


def splice_hook(sae, hook_name: str, record: dict[str, NodeValues], edit: NodeEdit | None = None):
    """The TransformerLens hook function that splices ``sae`` in at ``hook_name``, records the
    leaves in ``record[hook_name]`` and applies ``edit`` (see ``spliced``)."""

    @on_flat
    def hook(x: torch.Tensor, hook) -> torch.Tensor:  # noqa: ARG001 (TransformerLens passes the HookPoint)
        nodes = encode(sae, x)
        if edit is not None:
            with torch.no_grad():
                new = edit(nodes)
                # x plus the change: positions and examples the edit left alone stay bit-equal
                x = x + (decode(sae, new) - decode(sae, nodes))
                nodes = new
        record[hook_name] = leaves = nodes.leaves()
        z = decode(sae, leaves)
        return x + (z - z.detach())

    return hook


@contextmanager
def spliced(
    model: HookedTransformer, saes: SAESet, hooks: list[str] | None = None, edits: dict[str, NodeEdit] | None = None
) -> Iterator[dict[str, NodeValues]]:
    """Inside the block, every forward pass of ``model`` runs with ``saes`` spliced in at
    ``hooks`` (default: all of the set's) and records its nodes (leaves that require grad)
    by hook in the yielded dict. ``edits[hook](nodes)`` returns the nodes to use there
    instead of the computed ones; the hook's output becomes D(f') + e' and passes no
    gradient upstream (an edited value does not depend on the activations before it).
    The hooks are removed when the block ends, also on error."""
    hooks = list(saes) if hooks is None else hooks
    edits = edits or {}
    saes.check_model(model)
    record: dict[str, NodeValues] = {}
    with model.hooks(fwd_hooks=[(h, splice_hook(saes[h], h, record, edits.get(h))) for h in hooks]):
        yield record
