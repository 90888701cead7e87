"""The circuit stage's settings, as plain data: how a circuit is found (`DiscoverConfig`),
held to a faithfulness target (`HierarchyConfig`) and its mask trained (`MaskConfig`); the
ablation conventions (`Ablation`) and the edit actions (`Action`).

No torch here: the command line builds its flags from these fields (defaults and choices)
before any model library is imported; the modules that use them (``discover``,
``hierarchy``, ``optimise``, ``ablation``, ``edit``) do the work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

from circuits.core.config import Config, field_default
from circuits.core.errors import CircuitsError

Ablation = Literal["mean", "mean_corrupt", "counterfactual", "zero", "resample"]
ABLATIONS: tuple[str, ...] = get_args(Ablation)

Action = Literal["zero", "mean", "clamp", "scale"]
ACTIONS: tuple[str, ...] = get_args(Action)
CIRCUIT_ACTIONS = ("zero", "mean")  # what `edit_from_circuit` can do (clamp / scale need a value)


@dataclass
class MaskConfig(Config):
    """How the node mask is trained."""

    label: ClassVar[str] = "mask optimiser setting"

    steps: int = 300  # Adam steps over the discovery prompts (full batch)
    lr: float = 0.1
    sparsity: float = 3.0  # weight of the mean keep probability in the loss (at the end, for a ramp)
    schedule: Literal["constant", "ramp"] = "ramp"  # ramp: sparsity grows from 0 over the steps
    aim: float = 1.0  # faithfulness aimed at on the training prompts: no reward above it
    init_nodes: int = 1000  # nodes switched on at the start: the attribution top list
    batch_size: int | None = None  # prompt pairs per step, drawn at random (None: all, full batch)
    seed: int = 0

    def validate(self) -> None:
        if self.steps < 0:
            raise CircuitsError(f"mask steps must be >= 0, got {self.steps}")
        if self.lr <= 0:
            raise CircuitsError(f"mask lr must be > 0, got {self.lr}")
        if self.sparsity < 0:
            raise CircuitsError(f"mask sparsity must be >= 0, got {self.sparsity}")
        if not 0 < self.aim <= 1.5:
            raise CircuitsError(f"mask aim must be in (0, 1.5], got {self.aim}")
        if self.batch_size is not None and self.batch_size < 1:
            raise CircuitsError(f"mask batch_size must be >= 1, got {self.batch_size}")
        if self.init_nodes < 1:
            raise CircuitsError(f"mask init_nodes must be >= 1, got {self.init_nodes}")


@dataclass
class HierarchyConfig(Config):
    """The faithfulness target and the ablation convention both levels are held to."""

    label: ClassVar[str] = "hierarchy setting"
    field_labels: ClassVar[dict[str, str]] = {"ablation": "ablation"}

    target: float = 0.9
    ablation: Ablation = "mean"
    start_layer: int = 0
    n_random: int = 3  # random same-size circuits per baseline
    seed: int = 0

    def validate(self) -> None:
        if not 0 < self.target <= 1:
            raise CircuitsError(f"target faithfulness must be in (0, 1], got {self.target}")
        if self.start_layer < 0:
            raise CircuitsError(f"start_layer must be >= 0, got {self.start_layer}")
        if self.n_random < 1:
            raise CircuitsError(f"n_random must be >= 1, got {self.n_random}")


DiscoverMethod = Literal["atp", "ig", "exact"]


@dataclass
class DiscoverConfig(Config):
    """How to find a circuit. Thresholds are fractions of |total effect|."""

    label: ClassVar[str] = "discover setting"
    field_labels: ClassVar[dict[str, str]] = {"method": "method"}

    method: DiscoverMethod = "ig"  # exact: one forward pass per node
    steps: int = 10  # IG steps (midpoint rule)
    node_threshold: float = 0.01
    edge_threshold: float = 0.002
    top_n: int | None = None
    batch_size: int = 32
    max_exact_nodes: int = 5000
    edges: bool = True  # False: nodes only (no edges, no path pruning), e.g. for long ranked lists
    # a hierarchical circuit held to this faithfulness on held-out prompts (None: thresholds)
    target_faithfulness: float | None = None
    ablation: Ablation = "mean"
    start_layer: int = 0
    mask_steps: int = field_default(MaskConfig, "steps")
    mask_sparsity: float = field_default(MaskConfig, "sparsity")

    def validate(self) -> None:
        for name in ("node_threshold", "edge_threshold"):
            if getattr(self, name) < 0:
                raise CircuitsError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.top_n is not None and self.top_n < 1:
            raise CircuitsError(f"top_n must be >= 1, got {self.top_n}")
        if self.steps < 1:
            raise CircuitsError(f"IG needs at least one step, got steps={self.steps}")
        if self.batch_size < 1:
            raise CircuitsError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.target_faithfulness is not None:
            self.hierarchy()  # validates the target, ablation and mask settings
            self.mask()

    def hierarchy(self) -> HierarchyConfig:
        target = 0.9 if self.target_faithfulness is None else self.target_faithfulness
        return HierarchyConfig(target, self.ablation, self.start_layer)

    def mask(self) -> MaskConfig:
        return MaskConfig(steps=self.mask_steps, sparsity=self.mask_sparsity)
