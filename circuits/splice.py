"""Splicing: the model with its SAEs inside, equal to the model, latents and errors as nodes.

At a hook with activation x, SAE encoder E and decoder D, the splice returns

    x + (D(f) + e) - stop_grad(D(f) + e),    f = E(x), e = x - D(E(x)),

where f and e are fresh leaf tensors. Forward, that is x to the bit (z - z == 0), so logits
are the model's. Backward, the gradient reaching x is exactly the model's own (the identity;
no path runs through an SAE encoder), while dm/df and dm/de can be read off the leaves. This
is what sae-lens's ``HookedSAETransformer(use_error_term=True)`` gets wrong for attribution:
its error term is computed under no_grad, so upstream gradients flow through every
downstream SAE (shared DESIGN.md section 2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformer_lens import HookedTransformer

from sae.saeset import SAESet


@dataclass
class SpliceNodes:
    """The leaves of the last spliced forward pass, by hook name.

    ``latents[hook]`` is ``[batch, pos, d_sae]`` and ``errors[hook]`` is ``[batch, pos, d_in]``;
    both require grad, so ``torch.autograd.grad(metric, ...)`` gives dm/df and dm/de.
    """

    latents: dict[str, torch.Tensor] = field(default_factory=dict)
    errors: dict[str, torch.Tensor] = field(default_factory=dict)


# Replaces a hook's (latents, error) by other values: patching, interpolation, ablation.
NodeEdit = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _splice_hook(sae, hook_name: str, nodes: SpliceNodes, edit: NodeEdit | None):
    def hook(x: torch.Tensor, hook) -> torch.Tensor:  # noqa: ARG001 (TransformerLens passes the HookPoint)
        with torch.no_grad():
            f = sae.encode(x)
            e = x - sae.decode(f)
            if edit is not None:
                f_new, e_new = edit(f, e)
                # x plus the change: positions and examples the edit left alone stay bit-equal
                x = x + ((sae.decode(f_new) + e_new) - (sae.decode(f) + e))
                f, e = f_new, e_new
        f = f.detach().requires_grad_(True)
        e = e.detach().requires_grad_(True)
        nodes.latents[hook_name], nodes.errors[hook_name] = f, e
        z = sae.decode(f) + e
        return x + (z - z.detach())

    return hook


@contextmanager
def spliced(model: HookedTransformer, saes: SAESet, hooks: list[str] | None = None,
            edits: dict[str, NodeEdit] | None = None) -> Iterator[SpliceNodes]:
    """Inside the block, every forward pass of ``model`` runs with ``saes`` spliced in at
    ``hooks`` (default: all of the set's) and records its nodes in the yielded object.
    ``edits[hook](f, e)`` returns the (latents, error) to use there instead of the computed
    ones; the hook's output becomes D(f') + e' and passes no gradient upstream (an edited
    value does not depend on the activations before it).
    The hooks are removed when the block ends, also on error."""
    hooks = list(saes) if hooks is None else hooks
    edits = edits or {}
    saes.check_model(model)
    nodes = SpliceNodes()
    with model.hooks(fwd_hooks=[(h, _splice_hook(saes[h], h, nodes, edits.get(h))) for h in hooks]):
        yield nodes
