"""What an SAE set is trained on and how, as plain data.

No torch here: the command line reads its defaults and choices (``--arch``, ``--hooks``,
``--width``, ...) before any model library is imported (``sae/train.py`` trains).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal, get_args

from circuits.core.config import Config
from circuits.core.errors import CircuitsError
from circuits.core.precision import Autocast, as_setting
from circuits.core.vocab import HookKind, hook_names

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

# matryoshka: sae-lens's Matryoshka BatchTopK (nested prefixes of the latents each trained to
# reconstruct on their own; saved as JumpReLU, so every prefix is itself an SAE: `SAESet.prefix`)
Architecture = Literal["topk", "batchtopk", "jumprelu", "standard", "gated", "matryoshka"]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)


@dataclass
class SAETrainConfig(Config):
    """What to train (hooks, architecture, width) and how (tokens, lr, seed)."""

    label: ClassVar[str] = "SAE training config"
    field_labels: ClassVar[dict[str, str]] = {"arch": "SAE architecture", "kinds": "hook kind"}

    arch: Architecture = "topk"
    kinds: tuple[HookKind, ...] = ("resid", "mlp", "attn")
    layers: tuple[int, ...] | None = None  # None: every layer
    # The default dictionary was picked by benchmarks/dictionaries.py's rule (the smallest IOI
    # feature circuit among sets with CE recovered >= 0.95 at every hook, >= 0.90 all spliced,
    # dead <= 5 %): width 256 = 2 x d_model, k 16 (IOI 342 latents at F 0.9 where width 1,024 /
    # k 32 needed 877), trained on twice the tokens (one pass: CE recovered 0.946 at its worst hook).
    width: int = 256
    k: int = 16  # topk / batchtopk / matryoshka: active latents per token (batchtopk: on average)
    # matryoshka: the widths of the inner prefixes, increasing, below ``width`` (empty: width / 16
    # and width / 4)
    prefixes: tuple[int, ...] = ()
    # topk / batchtopk: weight of sae-lens's dead-latent auxiliary loss (0: off). Off by default:
    # resampling alone left fewer dead latents on the toy model and each step ~30% cheaper.
    aux_coefficient: float = 0.0
    # matryoshka: the same loss, sae-lens's per-level version; a Matryoshka set trains without
    # resampling (re-initialised latents broke it: FVU 1.16 and CE recovered -0.75 at
    # blocks.3.hook_mlp_out, width 1,024; with this loss instead, FVU 0.003, CE recovered 0.99)
    matryoshka_aux_coefficient: float = 1.0
    l1_coefficient: float = 2.0  # standard / gated
    l0_coefficient: float = 0.5  # jumprelu
    lr: float = 4e-3
    n_tokens: int = 1_149_120  # 760 steps
    seqs_per_batch: int = 24  # one forward pass: seqs_per_batch * (seq_len - 1) tokens
    seq_len: int = 64
    seed: int = 0
    n_checkpoints: int = 4
    # Steps without firing before a latent counts as dead (aux loss, resampling). 10 steps
    # (15 k tokens) and a round every 10 steps: seeds 0-2 left <= 4.6 % dead at their worst hook
    # where 25 / 15 left up to 6 % in the old, twice as large batches (docs/design.md, "SAE quality").
    dead_window: int = 10
    resample_every: int = 10  # topk / batchtopk: re-initialise dead latents every N steps (0: never)
    # ... during this fraction of training. The last 20 % (the lr decay) runs without: a round
    # at 90 % sent one SAE's batch FVU to 2.5 and it ended at 0.11 (docs/design.md).
    resample_until: float = 0.8
    # bf16 autocast for SAE training steps: "auto" where the device multiplies bf16 natively
    # (GPUs; CPUs with AVX-512 BF16, AMX or Arm BF16), "on", "off" (circuits/core/precision.py)
    autocast: Autocast = "auto"

    def __post_init__(self) -> None:
        self.autocast = as_setting(self.autocast)  # configs saved when it was a bool
        super().__post_init__()

    def validate(self) -> None:
        for name in ("width", "k", "n_tokens", "seqs_per_batch", "seq_len"):
            if getattr(self, name) <= 0:
                raise CircuitsError(f"SAE config: {name} must be positive, got {getattr(self, name)}")
        if self.n_tokens < self.batch_tokens:
            raise CircuitsError(
                f"SAE config: {self.n_tokens} training tokens is less than one batch ({self.batch_tokens} tokens)"
            )
        if self.k > self.width:
            raise CircuitsError(f"SAE config: k {self.k} is larger than the width {self.width}")
        if self.prefixes and self.arch != "matryoshka":
            raise CircuitsError(f"SAE config: prefixes are for the matryoshka architecture, not {self.arch}")
        widths = (*self.prefixes, self.width)
        if any(not 0 < a < b for a, b in zip(widths, widths[1:], strict=False)):
            raise CircuitsError(
                f"SAE config: matryoshka prefixes must increase and stay below the width {self.width}, "
                f"got {list(self.prefixes)}"
            )

    @property
    def matryoshka_widths(self) -> list[int]:
        """The nested widths a matryoshka SAE trains, the full width last."""
        inner = self.prefixes or tuple(w for w in (self.width // 16, self.width // 4) if w > 0)
        return [*inner, self.width]

    @property
    def batch_tokens(self) -> int:
        return self.seqs_per_batch * (self.seq_len - 1)

    def hooks(self, model: HookedTransformer) -> list[str]:
        layers = range(model.cfg.n_layers) if self.layers is None else self.layers
        bad = [layer for layer in layers if not 0 <= layer < model.cfg.n_layers]
        if bad:
            raise CircuitsError(f"layer {bad[0]} does not exist: the model has {model.cfg.n_layers} layers")
        from sae.saeset import check_hooks

        hooks = hook_names(self.kinds, layers)
        check_hooks(model, hooks)
        return hooks
