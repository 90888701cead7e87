"""Feature cards: what a latent fires on in the toy corpus and which tokens it promotes
(analysis: runs the model with the SAEs spliced in)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from circuits.core.vocab import Latent, Node, Submodule
from sae.saeset import SAESet


@dataclass
class FeatureCard:
    """What a latent responds to on the toy corpus, and what it writes."""

    hook: str
    latent: int
    contexts: list[dict]  # {"tokens": [...], "index": i (the activating token), "activation": a}
    histogram: list[int]  # counts of non-zero activations in ``bins`` equal bins up to ``max_activation``
    max_activation: float
    frequency: float  # share of corpus tokens where it is active
    promoted: list[tuple[str, float]]  # decoder direction through the unembedding: top tokens
    suppressed: list[tuple[str, float]]

    @property
    def feature(self) -> Latent:
        """The latent the card describes: its key in a dict of cards."""
        return Latent(self.hook, self.latent)

    @property
    def description(self) -> str:
        """A short automatic label: the tokens it fires on most."""
        seen: list[str] = []
        for c in self.contexts:
            tok = c["tokens"][c["index"]]
            if tok not in seen:
                seen.append(tok)
        return " · ".join(seen[:3]) if seen else "(never active)"


def latent_keys(graph) -> list[Latent]:
    """Every latent in a circuit graph (``Node.feature``), sorted: the cards its report's
    viewer can open."""
    return sorted({Node.from_attrs(a).feature for _, a in graph.nodes(data=True) if a.get("latent") is not None})


@torch.no_grad()
def residual_direction(model: HookedTransformer, hook: str, row: torch.Tensor) -> torch.Tensor:
    """What a decoder row at ``hook`` writes into the residual stream: the row itself, or at
    attn.hook_z (the heads concatenated) the heads' rows through their output matrices W_O."""
    sub = Submodule.parse(hook)
    if sub.kind != "z":
        return row
    w_o = model.blocks[sub.layer].attn.W_O.detach()  # [n_heads, d_head, d_model]
    return torch.einsum("hd,hdm->m", row.view(w_o.shape[0], w_o.shape[1]), w_o)


def feature_cards(
    model: HookedTransformer,
    saes: SAESet,
    keys: list[Latent],
    n_seqs: int = 256,
    seq_len: int = 64,
    top: int = 8,
    bins: int = 20,
    window: int = 6,
    batch_size: int = 32,
) -> dict[Latent, FeatureCard]:
    """Cards for latents from a fixed sample of the toy corpus (BOS skipped), keyed by them."""
    from circuits.attribution.splice import spliced
    from tasks.corpus import corpus_tokens

    if not keys:
        return {}
    tokens = corpus_tokens(model.tokenizer, "feature-cards", n_seqs, min(seq_len, model.cfg.n_ctx))
    hooks = sorted({k.hook for k in keys})
    index = {h: torch.tensor([k.index for k in keys if k.hook == h]) for h in hooks}
    acts = {h: [] for h in hooks}
    for lo in range(0, n_seqs, batch_size):
        with spliced(model, saes, hooks=hooks) as nodes:
            model(tokens[lo : lo + batch_size])
        for h in hooks:
            acts[h].append(nodes[h].latents[:, 1:, index[h]].detach().float())
    cards = {}
    w_u = model.W_U.detach()
    for h in hooks:
        a = torch.cat(acts[h])  # [n_seqs, seq_len - 1, k]
        for j, latent in enumerate(index[h].tolist()):
            col = a[..., j]
            flat = col.flatten()
            best = flat.topk(min(top, flat.numel())).indices.tolist()
            contexts = []
            for i in best:
                if flat[i] <= 0:
                    break
                s, p = divmod(i, col.shape[1])
                p += 1  # BOS was skipped
                lo = max(1, p - window)
                contexts.append(
                    {
                        "tokens": model.to_str_tokens(tokens[s, lo : p + 2]),
                        "index": p - lo,
                        "activation": float(flat[i]),
                    }
                )
            live = flat[flat > 0]
            peak = float(live.max()) if len(live) else 0.0
            hist = torch.histc(live, bins=bins, min=0, max=peak).int().tolist() if len(live) else [0] * bins
            logits = residual_direction(model, h, saes[h].W_dec[latent].detach()) @ w_u
            up, down = logits.topk(5), (-logits).topk(5)
            cards[Latent(h, latent)] = FeatureCard(
                h,
                latent,
                contexts,
                hist,
                peak,
                float(len(live)) / max(flat.numel(), 1),
                [(model.to_single_str_token(int(t)), float(v)) for v, t in zip(up.values, up.indices, strict=False)],
                [
                    (model.to_single_str_token(int(t)), -float(v))
                    for v, t in zip(down.values, down.indices, strict=False)
                ],
            )
    return cards
