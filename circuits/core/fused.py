"""A HookedTransformer's forward pass written with fused torch ops, for training.

`HookedTransformer.forward` is built to be hooked: every activation passes a HookPoint, and
LayerNorm and attention are written out op by op (mean, subtract, square, divide; einsum,
mask, softmax). On 2 CPU cores that costs ~40 % of a training step beyond the matrix
products. Training hooks nothing, so the toy model's training loss and the activations its
SAEs train on are computed here from the model's own parameters with `F.layer_norm`, one QKV
product per layer and `F.scaled_dot_product_attention`. It is the same function (loss,
gradients and activations equal TransformerLens's to float rounding; tested per
normalisation and activation function), and the model that comes out is an ordinary
HookedTransformer. Architectures outside `fused_supported` (rotary, parallel blocks,
``solu_ln``…) go through TransformerLens as before.

``bf16``: the four weight products of each block (QKV, O, MLP in and out) run in bfloat16
with float32 accumulation, like autocast; the residual stream, norms, attention, activation
function and unembedding stay float32. It is used only where the hardware multiplies bf16
natively (circuits/core/precision.py): there a training step of the default model was ~2x faster
than TransformerLens's float32 forward; on an AVX2-only CPU bf16 was 17x slower, and the
fused float32 step 1.4-2x faster than TransformerLens's (benchmarks/train_model.py --compare).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

_NORMS = {"LN", "LNPre", "RMS", "RMSPre", None}
# The hooks `block_activations` computes, by their name inside a block.
BLOCK_HOOKS = ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post")


class BlockValues(NamedTuple):
    """What one block reads and writes, named as its TransformerLens hooks are."""

    hook_resid_pre: torch.Tensor
    hook_attn_out: torch.Tensor
    hook_resid_mid: torch.Tensor
    hook_mlp_out: torch.Tensor
    hook_resid_post: torch.Tensor


def fused_supported(model: HookedTransformer) -> bool:
    """Whether this module computes ``model``'s function: a standard pre-norm GPT block
    (learned positions, causal attention, no extra norms) — every architecture a
    `ToyModelConfig` describes except ``solu_ln``, and GPT-2-style pretrained models."""
    c = model.cfg
    return (
        c.normalization_type in _NORMS
        and c.act_fn not in ("solu_ln", None)
        and c.positional_embedding_type == "standard"
        and c.attention_dir == "causal"
        and not (c.attn_only or c.parallel_attn_mlp or c.gated_mlp or c.use_local_attn)
        and not (c.use_qk_norm or c.use_normalization_before_and_after or c.final_rms)
        and c.use_attn_scale
        and c.attn_scale == c.d_head**0.5
        and c.n_key_value_heads in (None, c.n_heads)
        # TransformerLens masks pad tokens and shifts positions for left-padded tokenizers
        and getattr(model.tokenizer, "padding_side", "right") != "left"
    )


def training_loss(model: HookedTransformer, tokens: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """Mean next-token cross-entropy of ``model`` on ``tokens`` [batch, pos] — what
    ``model(tokens, return_type="loss")`` returns, for a model `fused_supported` accepts."""
    c = model.cfg
    x = None
    for values in _blocks(model, tokens, bf16, model.cfg.n_layers):
        x = values.hook_resid_post
    logits = _norm(getattr(model, "ln_final", None), x, c) @ model.unembed.W_U + model.unembed.b_U
    return F.cross_entropy(logits[:, :-1].reshape(-1, c.d_vocab_out), tokens[:, 1:].reshape(-1))


@torch.no_grad()
def block_activations(model: HookedTransformer, tokens: torch.Tensor, hooks: list[str]) -> dict[str, torch.Tensor]:
    """The values of ``hooks`` (each ``blocks.L.<one of BLOCK_HOOKS>``) on ``tokens``, as
    ``model.run_with_cache`` gives them, for a model `fused_supported` accepts; the forward
    pass stops after the last layer asked for."""
    wanted: dict[int, list[str]] = {}
    for hook in hooks:
        _, layer, name = hook.split(".")
        wanted.setdefault(int(layer), []).append(name)
    out = {}
    for layer, values in enumerate(_blocks(model, tokens, False, max(wanted) + 1)):
        for name in wanted.get(layer, []):
            out[f"blocks.{layer}.{name}"] = getattr(values, name)
    return out


def fused_hook(hook: str) -> bool:
    """Whether `block_activations` computes ``hook``."""
    parts = hook.split(".")
    return len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit() and parts[2] in BLOCK_HOOKS


def _blocks(model: HookedTransformer, tokens: torch.Tensor, bf16: bool, n_layers: int) -> Iterator[BlockValues]:
    c = model.cfg
    x = model.embed.W_E[tokens] + model.pos_embed.W_pos[: tokens.shape[1]]
    for block in model.blocks[:n_layers]:
        attn_out = _attention(block.attn, _norm(block.ln1, x, c), bf16)
        mid = x + attn_out
        mlp = block.mlp
        hidden = mlp.act_fn(_matmul(_norm(block.ln2, mid, c), mlp.W_in, bf16) + mlp.b_in)
        mlp_out = _matmul(hidden, mlp.W_out, bf16) + mlp.b_out
        yield BlockValues(x, attn_out, mid, mlp_out, mid + mlp_out)
        x = mid + mlp_out


def _norm(module: torch.nn.Module | None, x: torch.Tensor, cfg) -> torch.Tensor:
    kind, shape = cfg.normalization_type, (cfg.d_model,)
    if kind == "LN":
        return F.layer_norm(x, shape, module.w, module.b, cfg.eps)
    if kind == "LNPre":
        return F.layer_norm(x, shape, None, None, cfg.eps)
    if kind == "RMS":
        return F.rms_norm(x, shape, module.w, cfg.eps)
    if kind == "RMSPre":
        return F.rms_norm(x, shape, None, cfg.eps)
    return x


def _attention(attn: torch.nn.Module, x: torch.Tensor, bf16: bool) -> torch.Tensor:
    """Causal multi-head attention of one TransformerLens attention module, its output summed
    over heads (hook_attn_out's value)."""
    batch, pos, d_model = x.shape
    n_heads, _, d_head = attn.W_Q.shape
    # [3 * n_heads, d_model, d_head] -> [d_model, (3, n_heads, d_head)]: one product for Q, K, V
    w_qkv = torch.cat([attn.W_Q, attn.W_K, attn.W_V]).permute(1, 0, 2).reshape(d_model, 3 * n_heads * d_head)
    b_qkv = torch.cat([attn.b_Q, attn.b_K, attn.b_V]).reshape(-1)
    qkv = (_matmul(x, w_qkv, bf16) + b_qkv).view(batch, pos, 3, n_heads, d_head).permute(2, 0, 3, 1, 4)
    z = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)
    z = z.transpose(1, 2).reshape(batch, pos, n_heads * d_head)
    return _matmul(z, attn.W_O.reshape(n_heads * d_head, d_model), bf16) + attn.b_O


def _matmul(x: torch.Tensor, w: torch.Tensor, bf16: bool) -> torch.Tensor:
    if not bf16:
        return x @ w
    return (x.to(torch.bfloat16) @ w.to(torch.bfloat16)).float()
