"""The embedded model's architecture and training recipe, as plain data.

No torch here: the command line reads its defaults (``--steps``, ``--seed``) before any model
library is imported (``circuits/toy/model.py`` builds, trains, saves and loads the model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

from circuits.core.config import Config
from circuits.core.errors import CircuitsError
from circuits.core.precision import Autocast, as_setting
from tasks.language import Mixture

if TYPE_CHECKING:
    from transformer_lens import HookedTransformerConfig

ActFn = Literal["gelu", "gelu_new", "gelu_fast", "relu", "silu", "solu_ln"]
Normalization = Literal["LN", "LNPre", "RMS", "RMSPre"]


@dataclass
class ToyModelConfig(Config):
    """Architecture and training recipe of a toy-language model."""

    label: ClassVar[str] = "model config"

    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    n_ctx: int = 64
    act_fn: ActFn = "gelu"
    normalization_type: Normalization | None = "LN"
    seed: int = 0
    steps: int = 850
    batch_size: int = 64
    seq_len: int = 64
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.01
    checkpoint_every: int = 100
    # bf16 weight products in training steps (circuits/core/fused.py): "auto" where the hardware
    # multiplies bf16 natively (~1.5-2x faster there; 17x slower where it does not), "on", "off"
    autocast: Autocast = "auto"
    mixture: Mixture = field(default_factory=Mixture)

    def __post_init__(self) -> None:
        self.autocast = as_setting(self.autocast)  # configs saved when it was a bool
        super().__post_init__()

    def validate(self) -> None:
        """A `CircuitsError` naming the first setting that cannot work."""
        for name in ("n_layers", "d_model", "n_heads", "d_mlp", "n_ctx", "steps", "batch_size", "seq_len"):
            if getattr(self, name) <= 0:
                raise CircuitsError(f"model config: {name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise CircuitsError(f"model config: d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.seq_len > self.n_ctx:
            raise CircuitsError(f"model config: seq_len {self.seq_len} is longer than n_ctx {self.n_ctx}")
        if self.seq_len < 20:
            raise CircuitsError(
                f"model config: seq_len {self.seq_len} is shorter than the toy language's sentences (need >= 20)"
            )

    def hooked_config(self, d_vocab: int) -> HookedTransformerConfig:
        from transformer_lens import HookedTransformerConfig

        return HookedTransformerConfig(
            n_layers=self.n_layers,
            d_model=self.d_model,
            n_heads=self.n_heads,
            d_head=self.d_model // self.n_heads,
            d_mlp=self.d_mlp,
            n_ctx=self.n_ctx,
            d_vocab=d_vocab,
            act_fn=self.act_fn,
            normalization_type=self.normalization_type,
            seed=self.seed,
            model_name="toy",
        )
