"""The circuit record: what a circuit graph knows about how it was found.

A circuit is a ``networkx.DiGraph`` of nodes and edges (``circuits.circuit.graph``) plus one
`CircuitRecord`, held in memory at ``graph.graph["record"]`` (`attach`, `record_of`): the
task and its metric values, the model and SAE set, the discovery settings, the first prompt
pair as text (`ExampleRecord`), where the prompts came from (`Sources`), the step times, and
for a hierarchical circuit its two levels with their curves and its held-out prompts
(`HierarchyRecord`); how the graph was pruned. Every reader takes the record, not keys.

In a circuit file the record is the node-link data's ``graph`` object, written by
``to_dict`` and read by ``from_dict`` (one-line errors naming the field). Its keys are the
ones older sae-circuits wrote into ``graph.graph``, so older readers read new files; files
from before a field existed load with it empty (`missing_fields` says which, and
``load_graph`` says so in one line). Changed since: the step times moved from
``hierarchy.times`` to ``times`` (every circuit has them), and ``per_position`` is derived
from the position labels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import networkx as nx

from circuits.core.config import Config
from circuits.core.errors import CircuitsError
from circuits.core.vocab import Site, Submodule, position_label

RECORD = "record"  # the key of ``graph.graph`` that holds the CircuitRecord


def _given(data: dict) -> dict:
    """``data`` without its None values (fields that were not given)."""
    return {k: v for k, v in data.items() if v is not None}


@dataclass
class ModelRecord(Config):
    """The model a circuit was found on."""

    label: ClassVar[str] = "circuit model"

    name: str | None = None
    n_layers: int | None = None
    d_model: int | None = None
    d_vocab: int | None = None


@dataclass
class ExampleRecord(Config):
    """The first prompt pair as text, with the model's probabilities for its first answer and
    wrong answer and its ``top_outputs`` (token, probability) at the last position."""

    label: ClassVar[str] = "circuit example"

    prompt_tokens: list[str] = field(default_factory=list)
    corrupt_tokens: list[str] = field(default_factory=list)
    answer: str | None = None
    answer_prob: float | None = None
    wrong_answer: str | None = None
    wrong_prob: float | None = None
    top_outputs: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Sources(Config):
    """What ``validate`` and ``edit`` rebuild the model, SAE set and prompts from, by the
    names the command line takes."""

    label: ClassVar[str] = "circuit sources"

    task: str
    n: int
    seed: int = 0
    model: str = "toy"
    saes: str = "toy"
    metric: str | None = None
    hooks: str | None = None


@dataclass
class HeldOut(Config):
    """The held-out prompts a hierarchical circuit was validated on: a built-in task's ``n``
    pairs at ``seed``, or ``rows`` [start, stop) of a prompt file."""

    label: ClassVar[str] = "held-out prompts"

    task: str
    n: int | None = None
    seed: int | None = None
    rows: tuple[int, int] | None = None

    def validate(self) -> None:
        if self.rows is None and (self.n is None or self.seed is None):
            raise CircuitsError(f"held-out prompts of {self.task}: give rows, or n and seed")

    def to_dict(self) -> dict:
        return _given(super().to_dict())


@dataclass
class SiteRecord(Config):
    """A site of a hierarchical circuit's skeleton."""

    label: ClassVar[str] = "site"

    id: str
    hook: str
    position: int | None
    position_label: str = ""  # "label" in files

    def validate(self) -> None:
        if self.site.id != self.id:  # parsing the hook: a one-line error for one circuits do not know
            raise CircuitsError(f"site {self.id!r} is at {self.site.id!r} (its hook and label)")

    @property
    def site(self) -> Site:
        return Site(Submodule.parse(self.hook), self.position, self.position_label)

    @classmethod
    def of(cls, site: Site) -> SiteRecord:
        return cls(site.id, site.hook, site.position, site.label)

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["label"] = out.pop("position_label")
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str | None = None) -> SiteRecord:
        if isinstance(data, dict) and "label" in data and "position_label" not in data:
            data = {("position_label" if k == "label" else k): v for k, v in data.items()}
        return super().from_dict(data, where)


@dataclass
class CurvePointRecord(Config):
    """F of a ranking's top nodes of one size, and of random circuits of the same size."""

    label: ClassVar[str] = "curve point"

    n_nodes: int  # latents (or sites)
    n_error_nodes: int
    faithfulness: float
    random_faithfulness: float | None = None  # None: not measured (the family level's curve)

    @property
    def size(self) -> int:
        return self.n_nodes + self.n_error_nodes


@dataclass
class LevelRecord(Config):
    """One level of a hierarchical circuit on the held-out prompts: its size (sites, or
    latents and error terms), F, completeness, the random same-size baseline, whether it
    reached the target, and F over the ranking's prefixes."""

    label: ClassVar[str] = "level"

    ranking: str  # "attribution" or "optimised"
    n_nodes: int
    n_error_nodes: int
    faithfulness: float
    completeness: float
    random_faithfulness: float
    reached_target: bool
    curve: list[CurvePointRecord] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def size(self) -> int:
        return self.n_nodes + self.n_error_nodes


@dataclass
class FamilyRecord(Config):
    """A feature family (``circuits.circuit.families``): latents of one site that track one
    task variable (None: none) with one sign of effect. ``effect`` is its members' summed
    recorded effect; ``tracking`` their mean epsilon squared with the variable (their best
    one when untracked); ``ablation_ratio`` the metric's change with the members patched
    together to their corrupt values over ``effect``; ``interchange`` the rate at which the
    members, given a donor prompt's values, move the model's answer to the donor's (beside
    ``interchange_random``, random same-site latents of the same number)."""

    label: ClassVar[str] = "family"

    id: str
    name: str
    site: str
    variable: str | None
    members: list[str]
    effect: float
    tracking: float
    ablation_ratio: float | None = None
    interchange: float | None = None
    interchange_random: float | None = None

    @property
    def named(self) -> bool:
        """Whether the family has a concept name (it tracks a variable)."""
        return self.variable is not None


@dataclass
class InterchangeRecord(Config):
    """All the families tracking one variable, given a donor prompt's values together: the
    rate the model's answer moves to the donor's, a control (as many other latents of the same
    sites, outside the families of the variables the donor changes: ``changed``), over
    ``n_prompts`` held-out prompts on which the donor moves the answer."""

    label: ClassVar[str] = "interchange"

    variable: str
    n_families: int
    rate: float
    random_rate: float
    n_prompts: int
    changed: list[str] = field(default_factory=list)
    # steering: the families clamped to their mean values on the discovery prompts with another
    # value of the variable (no donor prompt), the answer becoming that value (None: not a token)
    steer_rate: float | None = None
    steer_random_rate: float | None = None
    steer_prompts: int = 0


# `HierarchyRecord.levels` keys, in order: the site rankings, then the feature rankings
LEVELS = ("sites", "sites_optimised", "attribution", "optimised")
SITE_LEVELS = ("sites", "sites_optimised")


@dataclass
class HierarchyRecord(Config):
    """A hierarchical circuit (``circuits.circuit.hierarchy.HierarchicalCircuit`` without the
    rankings, which are rebuilt): the ablation convention and target both levels are held
    to, the held-out reference metrics, the skeleton's sites and the site level, the
    circuit's features (node ids) and the feature level (the cut of the chosen ranking),
    both feature rankings' levels, the mask optimiser's history ``(step, loss, kept)``, the
    site graph's edges ``(site, site, weight)`` and which prompts were held out."""

    label: ClassVar[str] = "hierarchy"

    ablation: str
    start_layer: int
    target: float
    m_model: float  # held-out prompts, plain model
    m_empty: float  # held-out prompts, every node ablated
    n_held_out: int
    sites: list[SiteRecord]
    site_level: LevelRecord
    features: list[str]
    feature_level: LevelRecord
    attribution: LevelRecord
    optimised: LevelRecord | None = None  # None: no mask steps
    mask_history: list[tuple[int, float, int]] = field(default_factory=list)
    site_edges: list[tuple[str, str, float]] = field(default_factory=list)
    held_out: HeldOut | None = None
    families: list[FamilyRecord] = field(default_factory=list)  # ranked (``families.rank``)
    family_level: LevelRecord | None = None  # n_nodes counts families
    interchange: list[InterchangeRecord] = field(default_factory=list)
    feature_named_share: float | None = None  # the feature level's |effect| in named families
    # the site rankings' cuts (site_level is the chosen one); None in files written before the
    # site mask (their site level is the attribution prefix) or run without it
    site_attribution: LevelRecord | None = None
    site_optimised: LevelRecord | None = None
    site_mask_history: list[tuple[int, float, int]] = field(default_factory=list)
    other_feature_level: LevelRecord | None = None  # inside the other site cut, where they differ
    # the feature level's |effect| (error terms included) in latents that each detect one value
    # of a task variable on the held-out prompts (``families.detect``); None before detection
    feature_detector_share: float | None = None
    # what the families hold (``families.FamilyLevel.scope``): "sites" (every latent of the
    # sites that tracks their variable) or "features" (the feature level's latents only)
    family_scope: str | None = None

    @property
    def skeleton(self) -> list[Site]:
        """The sites, in the skeleton's order."""
        return [s.site for s in self.sites]

    @property
    def reached_target(self) -> bool:
        return self.site_level.reached_target and self.feature_level.reached_target

    def named_share(self) -> float | None:
        """The share of the families' summed |effect| (every latent of the skeleton's sites
        with an effect) in families with a concept name (None: no families)."""
        total = sum(abs(f.effect) for f in self.families)
        return sum(abs(f.effect) for f in self.families if f.named) / total if total else None

    def family(self, family_id: str) -> FamilyRecord:
        """The family with this id; a one-line error naming the ids there are."""
        for f in self.families:
            if f.id == family_id:
                return f
        known = ", ".join(f.id for f in self.families[:5]) + (", ..." if len(self.families) > 5 else "")
        raise CircuitsError(f"the circuit has no family {family_id!r} (its families: {known or 'none'})")

    def to_dict(self) -> dict:
        """The file's ``hierarchy`` object; a circuit without families leaves their fields
        out, as sae-circuits wrote it before families."""
        out = super().to_dict()
        for key in (
            "families",
            "family_level",
            "interchange",
            "feature_named_share",
            "site_attribution",
            "site_optimised",
            "site_mask_history",
            "other_feature_level",
            "feature_detector_share",
            "family_scope",
        ):
            if out.get(key) in (None, []):
                del out[key]
        return out

    def levels(self) -> list[tuple[str, LevelRecord]]:
        """``("sites", the attribution prefix's site cut)``, with a site mask
        ``("sites_optimised", ...)``, ``("attribution", ...)`` and, with mask steps,
        ``("optimised", ...)``: every level measured, in the order tables show them (``LEVELS``)."""
        out = [("sites", self.site_attribution or self.site_level)]
        out += [("sites_optimised", self.site_optimised)] if self.site_optimised is not None else []
        out += [("attribution", self.attribution)]
        return out + ([("optimised", self.optimised)] if self.optimised is not None else [])


@dataclass
class Pruning(Config):
    """The thresholds ``graph.prune`` applied (metric units; None: not applied)."""

    label: ClassVar[str] = "pruning"

    node_threshold: float | None = None
    edge_threshold: float | None = None
    top_n: int | None = None
    cumulative: float | None = None

    def to_dict(self) -> dict:
        return _given(super().to_dict())


@dataclass
class AblationPruning(Config):
    """``prune_by_ablation``'s cut: the smallest top-|effect| prefix (``nodes`` long) reaching
    ``target`` faithfulness."""

    label: ClassVar[str] = "ablation pruning"

    target: float
    faithfulness: float
    ablation: str
    start_layer: int
    nodes: int


# Written by discovery since these fields exist; a file without one is from before it.
_DISCOVERED = (
    "task",
    "metric",
    "n_examples",
    "clean_metric",
    "corrupt_metric",
    "total_effect",
    "position_labels",
    "model",
    "saes",
    "discover",
    "node_threshold_abs",
    "edge_threshold_abs",
    "n_candidate_nodes",
    "example",
    "times",
)
_OMITTED_WHEN_NONE = ("hierarchy", "sources", "pruning", "pruned_by_ablation")


@dataclass
class CircuitRecord(Config):
    """Everything a circuit graph records besides its nodes and edges (see the module
    docstring). Metric values are on the discovery prompts: ``total_effect`` = corrupt -
    clean; ``*_threshold_abs`` are discovery's thresholds in metric units; ``discover`` is
    the ``DiscoverConfig`` as data; ``times`` the seconds per step, in order."""

    label: ClassVar[str] = "circuit record"

    task: str | None = None
    metric: str | None = None
    n_examples: int | None = None
    clean_metric: float | None = None
    corrupt_metric: float | None = None
    total_effect: float | None = None
    position_labels: list[str] | None = None  # templated prompts: one label per position
    model: ModelRecord = field(default_factory=ModelRecord)
    saes: dict[str, int] = field(default_factory=dict)  # hook -> d_sae of the set used
    discover: dict[str, Any] = field(default_factory=dict)
    node_threshold_abs: float | None = None
    edge_threshold_abs: float | None = None
    n_candidate_nodes: int | None = None
    example: ExampleRecord | None = None
    times: dict[str, float] = field(default_factory=dict)
    hierarchy: HierarchyRecord | None = None
    sources: Sources | None = None
    pruning: Pruning | None = None
    pruned_by_ablation: AblationPruning | None = None

    # --- derived -------------------------------------------------------------------------
    @property
    def per_position(self) -> bool:
        """Whether nodes are per position (templated prompts), not summed over positions."""
        return self.position_labels is not None

    @property
    def n_positions(self) -> int:
        """The prompts' length when templated, else 0."""
        return len(self.position_labels or [])

    @property
    def method(self) -> str | None:
        """The discovery method (``atp``, ``ig``, ``exact``)."""
        return self.discover.get("method")

    def position_label(self, position: int | None) -> str:
        """How a position is shown: its template label, ``p<i>``, or ``*`` (summed)."""
        return position_label(position, self.position_labels)

    def token(self, position: int | None) -> str | None:
        """The example prompt's token at ``position`` (None: summed, unknown or no example)."""
        tokens = self.example.prompt_tokens if self.example is not None else []
        return tokens[position] if position is not None and 0 <= position < len(tokens) else None

    def tokens(self) -> list[str]:
        """A name per prompt position: the example prompt's tokens, else the position labels."""
        return [str(t) for t in ((self.example.prompt_tokens if self.example else None) or self.position_labels or [])]

    def answer_label(self, quote: Callable[[str], str] = str) -> str | None:
        """``answer vs wrong answer`` of the example (each through ``quote``), the answer
        alone without a wrong one; None without an example."""
        ex = self.example
        if ex is None or ex.answer is None:
            return None
        return quote(ex.answer) + (f" vs {quote(ex.wrong_answer)}" if ex.wrong_answer is not None else "")

    # --- JSON ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The circuit file's ``graph`` object; absent parts (no hierarchy, sources, pruning)
        are left out, as older sae-circuits did."""
        out = super().to_dict()
        for key in _OMITTED_WHEN_NONE:
            if out[key] is None:
                del out[key]
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str | None = None) -> CircuitRecord:
        """The record ``data`` describes, also as older sae-circuits wrote it (``per_position``,
        ``hierarchy.times``); fields it lacks are left empty (see `missing_fields`)."""
        if isinstance(data, dict):
            data = dict(data)
            data.pop("per_position", None)  # derived from the position labels
            h = data.get("hierarchy")
            if isinstance(h, dict) and "times" in h:  # before every circuit had its times
                h = dict(h)
                data.setdefault("times", h.pop("times"))
                data["hierarchy"] = h
        return super().from_dict(data, where)

    @staticmethod
    def missing_fields(data: dict) -> list[str]:
        """The fields discovery writes that ``data`` (a file's ``graph`` object) lacks:
        written before those fields existed."""
        h = data.get("hierarchy")
        moved = {"times"} if isinstance(h, dict) and "times" in h else set()  # hierarchy.times
        missing = [k for k in _DISCOVERED if k not in data and k not in moved]
        model = data.get("model")
        if isinstance(model, dict):
            missing += [f"model.{f.name}" for f in dataclasses.fields(ModelRecord) if f.name not in model]
        if isinstance(h, dict):
            missing += [f"hierarchy.{k}" for k in ("site_edges", "held_out") if k not in h]
        return missing


def record_of(graph: nx.DiGraph) -> CircuitRecord:
    """The record attached to ``graph`` (an empty one for a graph that carries none).
    Metadata in the old flat layout (``graph.graph["task"]``, ...) is an error: such graphs
    come from files, which ``load_graph`` reads into a record."""
    record = graph.graph.get(RECORD)
    if record is None:
        old = [k for k in graph.graph if k in _FIELDS]
        if old:
            raise CircuitsError(
                f"the graph's metadata is not a circuit record (graph.graph has {', '.join(map(repr, old[:3]))}): "
                "attach one with circuits.circuit.record.attach(graph, CircuitRecord.from_dict(...))"
            )
        return CircuitRecord()
    if not isinstance(record, CircuitRecord):
        raise CircuitsError(f'graph.graph["{RECORD}"] is a {type(record).__name__}, not a CircuitRecord')
    return record


def attach(graph: nx.DiGraph, record: CircuitRecord) -> nx.DiGraph:
    """Make ``record`` the record of ``graph`` (replacing any); returns ``graph``. Records are
    values: change one with ``dataclasses.replace`` and attach the result."""
    if not isinstance(record, CircuitRecord):
        raise CircuitsError(f"a circuit record must be a CircuitRecord, got a {type(record).__name__}")
    graph.graph[RECORD] = record
    return graph


_FIELDS = frozenset(f.name for f in dataclasses.fields(CircuitRecord)) | {"per_position"}
