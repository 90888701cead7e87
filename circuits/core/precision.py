"""Whether training steps multiply in bfloat16: only where the hardware does it natively.

bf16 weight products halve the memory traffic of a matrix product and, on a CPU with bf16
instructions (AVX-512 BF16, AMX, Arm's BF16 extension) or a GPU, run ~1.5-2x faster than
float32. On a CPU without them oneDNN has no bf16 kernel and torch falls back to a scalar
loop: on a 2-core AMD EPYC with AVX2 only, a [4096, 128] x [128, 512] product took 418 ms in
bf16 against 4.9 ms in float32, a model training step 5.0 s against 0.29 s and an SAE step
16.8 s against ~1 s. ``"auto"`` (the default of the training configs) therefore picks bf16
only where it is native; ``"on"`` and ``"off"`` force it. The choice depends on the machine,
like the last bits of any float sum (docs/design.md, "SAE quality"); the training records
say which one was used.
"""

from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

Autocast = Literal["auto", "on", "off"]
NATIVE_BF16_ENV = "SAE_CIRCUITS_NATIVE_BF16"


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware. ``$SAE_CIRCUITS_NATIVE_BF16``
    (``1`` / ``0``) overrides the answer for the CPU, so a machine without bf16 instructions can
    reproduce what "auto" trains on one with them (slowly), and the other way round."""
    import torch  # here: the configs that name an `Autocast` are read without torch (the CLI)

    device = torch.device(device)
    forced = os.environ.get(NATIVE_BF16_ENV)
    if device.type == "cpu" and forced in ("0", "1"):
        return forced == "1"
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    if platform.machine().lower() in ("aarch64", "arm64"):
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # Arm: the BF16 extension
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def use_bf16(setting: Autocast, device: str | torch.device = "cpu") -> bool:
    """Whether a training step with autocast ``setting`` runs its products in bfloat16."""
    return setting == "on" or (setting == "auto" and native_bf16(device))


def as_setting(value: object) -> object:
    """A legacy boolean autocast (configs saved before ``"auto"``) as its setting; any other
    value unchanged, for the config's choice check."""
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value
