"""The circuit stage's settings, as plain data: how a circuit is found (`DiscoverConfig`),
held to a faithfulness target (`HierarchyConfig`) and its mask trained (`MaskConfig`); the
ablation conventions (`Ablation`), how nodes are ablated (`AblationSpec`) and the edit
actions (`Action`).

No torch here: the command line builds its flags from these fields (defaults and choices)
before any model library is imported; the modules that use them (``discover``,
``hierarchy``, ``optimise``, ``ablation``, ``edit``) do the work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

from circuits.core.config import Config, field_default
from circuits.core.errors import CircuitsError
from circuits.core.vocab import Submodule

Ablation = Literal["mean", "mean_corrupt", "counterfactual", "zero", "resample"]
ABLATIONS: tuple[str, ...] = get_args(Ablation)
PER_EXAMPLE: tuple[str, ...] = ("counterfactual", "resample")  # reference values per example, not per position
BATCH_SIZE = 32  # prompt pairs per batch of discovery's streamed passes and of validation

Action = Literal["zero", "mean", "clamp", "scale"]
ACTIONS: tuple[str, ...] = get_args(Action)
CIRCUIT_ACTIONS = ("zero", "mean")  # what `edit_from_circuit` can do (clamp / scale need a value)


# Prompt pairs: of a threshold circuit; a hierarchical circuit's discovery and held-out pairs.
# Discovery needs the task's vocabulary: 128 greater-than prompts hold 74 start years and 26 of
# 128 held-out prompts use another (IOI: 63 IO names, 26 prompts), whose latents then rank last;
# 512 hold every one used. Greater-than's feature level: 443 latents -> 147 (docs/design.md).
THRESHOLD_PAIRS = 128
HIERARCHY_PAIRS = 512
HELD_OUT_PAIRS = 128

# F1 at which one latent detects one value of a task variable on held-out prompts (the
# corpus concept match's threshold, ``sae.interpret.MATCH``): ``families.detect``.
DETECTS = 0.8


@dataclass
class MaskConfig(Config):
    """How the node mask is trained."""

    label: ClassVar[str] = "mask optimiser setting"

    steps: int = 300  # Adam steps over the discovery prompts
    # the same optimiser over whole sites, before the features (0: sites by attribution only)
    site_steps: int = 200
    lr: float = 0.1
    sparsity: float = 3.0  # weight of the mean keep probability in the loss (at the end, for a ramp)
    schedule: Literal["constant", "ramp"] = "ramp"  # ramp: sparsity grows from 0 over the steps
    aim: float = 1.0  # faithfulness aimed at on the training prompts: no reward above it
    init_nodes: int = 1000  # nodes switched on at the start: the attribution top list
    # prompt pairs per step of the feature mask, drawn at random (None: all, full batch)
    batch_size: int | None = 128
    # ... of the site mask: a step costs the same on 512 discovery pairs as on 128 (with all
    # 512, IOI's site mask kept 113 sites)
    site_batch_size: int | None = 128
    seed: int = 0

    def validate(self) -> None:
        if self.steps < 0:
            raise CircuitsError(f"mask steps must be >= 0, got {self.steps}")
        if self.site_steps < 0:
            raise CircuitsError(f"site mask steps must be >= 0, got {self.site_steps}")
        if self.lr <= 0:
            raise CircuitsError(f"mask lr must be > 0, got {self.lr}")
        if self.sparsity < 0:
            raise CircuitsError(f"mask sparsity must be >= 0, got {self.sparsity}")
        if not 0 < self.aim <= 1.5:
            raise CircuitsError(f"mask aim must be in (0, 1.5], got {self.aim}")
        for name in ("batch_size", "site_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise CircuitsError(f"mask {name} must be >= 1, got {getattr(self, name)}")
        if self.init_nodes < 1:
            raise CircuitsError(f"mask init_nodes must be >= 1, got {self.init_nodes}")


@dataclass(frozen=True)
class AblationSpec(Config):
    """How nodes are ablated: the convention, the first layer ablated (layers below it are
    given for free) and the seed of ``resample``'s fixed derangement of the examples (and of
    the random baseline circuits drawn under this spec)."""

    label: ClassVar[str] = "ablation setting"
    field_labels: ClassVar[dict[str, str]] = {"kind": "ablation"}

    kind: Ablation = "mean"
    start_layer: int = 0
    seed: int = 0

    def validate(self) -> None:
        if self.start_layer < 0:
            raise CircuitsError(f"start_layer must be >= 0, got {self.start_layer}")

    @property
    def per_example(self) -> bool:
        return self.kind in PER_EXAMPLE

    def ablatable(self, hook: str) -> bool:
        """Whether nodes at ``hook`` are ever ablated: not the embeddings (the circuit's
        inputs), not below ``start_layer``."""
        sub = Submodule.parse(hook)
        return not sub.is_embed and sub.layer >= self.start_layer


@dataclass
class HierarchyConfig(Config):
    """The faithfulness target and the ablation both levels are held to, the random
    baseline, and the held-out prompt pairs per streamed batch of validation."""

    label: ClassVar[str] = "hierarchy setting"

    target: float = 0.9
    ablation: AblationSpec = AblationSpec()
    n_random: int = 3  # random same-size circuits per baseline
    batch_size: int = BATCH_SIZE

    def validate(self) -> None:
        if not 0 < self.target <= 1:
            raise CircuitsError(f"target faithfulness must be in (0, 1], got {self.target}")
        if self.n_random < 1:
            raise CircuitsError(f"n_random must be >= 1, got {self.n_random}")
        if self.batch_size < 1:
            raise CircuitsError(f"batch_size must be >= 1, got {self.batch_size}")


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
    batch_size: int = BATCH_SIZE
    max_exact_nodes: int = 5000
    edges: bool = True  # False: nodes only (no edges, no path pruning), e.g. for long ranked lists
    # a hierarchical circuit held to this faithfulness on held-out prompts (None: thresholds)
    target_faithfulness: float | None = None
    ablation: Ablation = "mean"
    start_layer: int = 0
    mask_steps: int = field_default(MaskConfig, "steps")
    mask_sparsity: float = field_default(MaskConfig, "sparsity")
    site_mask_steps: int = field_default(MaskConfig, "site_steps")
    # prompt pairs per step of the feature mask (0: all discovery pairs)
    mask_batch: int = field_default(MaskConfig, "batch_size") or 0
    families: bool = True  # with a target faithfulness: group the features into validated families

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
        if self.mask_batch < 0:
            raise CircuitsError(f"mask batch must be >= 0 prompt pairs (0: all), got {self.mask_batch}")
        if self.target_faithfulness is not None:
            self.hierarchy()  # validates the target, ablation and mask settings
            self.mask()

    def hierarchy(self) -> HierarchyConfig:
        target = (
            field_default(HierarchyConfig, "target") if self.target_faithfulness is None else self.target_faithfulness
        )
        return HierarchyConfig(target, AblationSpec(self.ablation, self.start_layer), batch_size=self.batch_size)

    def mask(self) -> MaskConfig:
        return MaskConfig(
            steps=self.mask_steps,
            sparsity=self.mask_sparsity,
            site_steps=self.site_mask_steps,
            batch_size=self.mask_batch or None,
        )
