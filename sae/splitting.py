"""Feature splitting across dictionary widths: which latents of a wider SAE refine which latent
of a narrower one at the same hook, and the split tree of a circuit's features.

A wide latent's **parent** in a narrower SAE is the narrow latent whose decoder direction is
closest (cosine of decoder rows), kept only where the two also fire together: the co-activation
``|both active| / |wide active|`` (the share of the child's firings inside its parent's) on the
same tokens is at least ``min_coactivation``. Decoder cosine alone pairs directions; the
co-activation check makes the child a refinement of its parent, not a neighbour. Chained over
widths (256 → 1,024 → 4,096), parents give a forest: one coarse feature, its children in the
wider set, theirs in the next.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from sae.interpret import LatentMatches


@dataclass
class Split:
    """One latent of one width and its children in the next wider set (recursively)."""

    width: int
    latent: int
    cosine: float = 1.0  # decoder cosine to its parent (1.0 at the root)
    coactivation: float = 1.0  # share of its firings inside its parent's (1.0 at the root)
    children: list[Split] = field(default_factory=list)
    concept: str = ""  # its best ground-truth concept at its width (`label_tree`), and that F1
    f1: float = 0.0

    def to_dict(self) -> dict:
        return {
            "width": self.width,
            "latent": self.latent,
            "cosine": round(self.cosine, 4),
            "coactivation": round(self.coactivation, 4),
            "concept": self.concept,
            "f1": round(self.f1, 4),
            "children": [c.to_dict() for c in self.children],
        }

    def walk(self) -> list[Split]:
        """This node and every node below it, depth first."""
        return [self, *(n for c in self.children for n in c.walk())]

    def size(self) -> int:
        return 1 + sum(c.size() for c in self.children)


@dataclass
class Parents:
    """For each latent of the wide SAE: its parent in the narrow one (-1: none), the decoder
    cosine and the co-activation with it."""

    parent: torch.Tensor  # [d_wide] long
    cosine: torch.Tensor  # [d_wide]
    coactivation: torch.Tensor  # [d_wide]

    def children(self, latent: int) -> list[int]:
        return (self.parent == latent).nonzero().flatten().tolist()


def parents(
    narrow_dec: torch.Tensor,
    wide_dec: torch.Tensor,
    narrow_active: torch.Tensor,
    wide_active: torch.Tensor,
    min_coactivation: float = 0.5,
) -> Parents:
    """Each wide latent's parent among the narrow ones: decoder rows ``[d, d_in]``, activity
    ``[n_tokens, d]`` (bool) on the same tokens."""
    a = torch.nn.functional.normalize(narrow_dec.float(), dim=-1)
    b = torch.nn.functional.normalize(wide_dec.float(), dim=-1)
    cos, best = (b @ a.T).max(-1)
    both = wide_active.float().T @ narrow_active.float()  # [d_wide, d_narrow]
    fired = wide_active.float().sum(0).clamp(min=1)
    co = both.gather(1, best[:, None]).squeeze(1) / fired
    parent = torch.where(co >= min_coactivation, best, torch.full_like(best, -1))
    return Parents(parent, cos, co)


def link_sets(
    model, sets: list, hook: str, n_seqs: int = 128, seq_len: int = 64, key: str = "splitting/held-out"
) -> list[Parents]:
    """Parents of each set's latents at ``hook`` in the previous (narrower) set, on
    ``n_seqs`` held-out corpus sequences; ``sets`` are SAE sets, narrowest first."""
    from sae.interpret import active_latents
    from sae.saeset import SAESet
    from tasks.corpus import corpus_tokens

    tokens = corpus_tokens(model.tokenizer, key, n_seqs, min(seq_len, model.cfg.n_ctx))
    active = [active_latents(model, SAESet({hook: s[hook]}), tokens)[hook].to_dense().bool() for s in sets]
    decoders = [s[hook].W_dec.detach() for s in sets]
    return [parents(decoders[i], decoders[i + 1], active[i], active[i + 1]) for i in range(len(sets) - 1)]


def split_tree(latent: int, widths: list[int], links: list[Parents]) -> Split:
    """The split tree of ``latent`` of the narrowest set: ``links[i]`` are the parents of set
    ``i + 1``'s latents in set ``i`` (widths in order)."""
    root = Split(widths[0], latent)
    frontier = [root]
    for level, link in enumerate(links):
        nxt = []
        for node in frontier:
            for child in link.children(node.latent):
                kid = Split(widths[level + 1], child, float(link.cosine[child]), float(link.coactivation[child]))
                node.children.append(kid)
                nxt.append(kid)
        frontier = nxt
    return root


def label_tree(tree: Split, matches: dict[int, LatentMatches]) -> Split:
    """Give every node of ``tree`` its best concept and F1 from ``matches`` (width -> the
    `sae.interpret.LatentMatches` of that width's SAE at the tree's hook); returns the tree."""
    for node in tree.walk():
        m = matches.get(node.width)
        if m is not None:
            node.concept, node.f1 = m.concept[node.latent], float(m.f1[node.latent])
    return tree


def circuit_split_tree(
    model, sets: list, nodes: list[tuple[str, int | None, float]], n_seqs: int = 128
) -> tuple[str, Split] | None:
    """The split tree of a circuit's strongest latent across ``sets`` (SAE sets at widths
    increasing, the narrowest first; the circuit's ``nodes`` ``(hook, latent or None,
    effect)`` come from the narrowest, or from a Matryoshka set whose inner prefixes are the
    narrower sets), each node labelled with its best concept; None when no latent of the
    circuit is in the narrowest set."""
    from sae.interpret import interpretability
    from sae.saeset import SAESet

    inner = [(h, lat, e) for h, lat, e in nodes if lat is not None and lat < sets[0][h].cfg.d_sae]
    if not inner:
        return None
    hook, latent, _ = max(inner, key=lambda n: abs(n[2]))
    at_hook = [SAESet({hook: s[hook]}) for s in sets]
    widths = [s[hook].cfg.d_sae for s in at_hook]
    tree = split_tree(latent, widths, link_sets(model, at_hook, hook, n_seqs))
    matches = {w: interpretability(model, s, progress=False).hooks[hook] for w, s in zip(widths, at_hook, strict=True)}
    return hook, label_tree(tree, matches)
