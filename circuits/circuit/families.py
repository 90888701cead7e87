"""Feature families: a circuit's latents grouped by the task variable they track and what they do.

A feature circuit of a few hundred latents is a list; researchers read it by grouping latents
into "supernodes" by hand. Here the grouping is automatic and each group is checked causally
(docs/design.md, "Feature families"):

1. **What a latent tracks.** Each prompt of a task carries the variables it was made from
   (``Task.vars``: the IO and S names of IOI, the subject's number of SVA, the start year of
   greater-than; a JSONL line's ``"vars"``) and, for templated prompts, the token at every
   position whose token varies (``token@S2``). A latent tracks the variable that explains the
   most of its activation at its site over the discovery prompts: epsilon squared, the share
   of variance between the variable's values, corrected for the number of values (a variable
   with as many values as prompts explains everything by chance; epsilon squared is then ~0).
   A latent tracks nothing when no variable reaches ``TRACKS`` or it fires on fewer than
   ``MIN_ACTIVE`` prompts.
2. **Families.** Inside each site, the latents tracking one variable with one sign of effect
   (supports the answer: effect < 0; opposes it) form a family, named from its variable and
   site ("IO identity at L2 resid@END, supports"); latents tracking nothing form the site's
   untracked families, and groups too small to matter (``MINOR``) its "minor latents".
3. **The family level**: families ranked by the |change| their latents make to the metric when
   patched together to their corrupt values on the discovery prompts (``rank``: attribution
   can credit a family with an effect it does not have), cut at the smallest prefix whose
   latents (with the feature level's error terms, which no family holds) reach the target F on
   the held-out prompts; the random baseline draws, for each family, as many live latents from
   its own site.
4. **Validation per family**: (a) its latents patched together to their corrupt values on the
   discovery prompts move the metric by its recorded (summed attribution) effect: the ratio;
   (b) interchange, for a variable whose value is a token of the prompt: on each held-out
   prompt, the family's latents take their values from a donor prompt where that token is
   replaced by another prompt's value (IO: Mary -> Alice) or, where replacing does not move
   the model's answer, swapped with another variable's token (S <-> IO); of the prompts on
   which the donor moves the model's top answer, the share on which the family alone moves it
   to the donor's answer, beside a control: as many other latents of the same sites, outside
   every family that tracks a variable the donor changes.
5. **One prompt** (``prompt_families``): the families active on it, with their latents and
   per-prompt effects.
6. **Value detectors**: a family says what a group of latents tracks; a single latent is
   readable on its own when it fires exactly where one value of a variable holds ("the
   subject is singular", "the IO name is Walt"). ``detect`` scores each latent on the
   held-out prompts, at its position, by the best F1 of "active" against "variable = value"
   (``DETECTS``: a detector) over every value of every variable with more than one value (a
   variable constant over the prompts would credit a latent that always fires).
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from transformer_lens import HookedTransformer

from circuits.attribution.nodes import clean_grads, encode_at, node_grads, run_batch
from circuits.attribution.splice import spliced
from circuits.circuit.ablation import Ablator
from circuits.circuit.config import DETECTS, HierarchyConfig
from circuits.circuit.faithfulness import Level, Measurement, live_pool, log_sizes, smallest_prefix
from circuits.circuit.record import FamilyRecord, HierarchyRecord, InterchangeRecord
from circuits.core.config import Result
from circuits.core.errors import CircuitsError
from circuits.core.values import NodeValues
from circuits.core.vocab import Node, Site, flat_act
from sae.saeset import SAESet
from tasks.task import Task
from tasks.tokenizer import value_token

TRACKS = 0.5  # epsilon squared at which a latent tracks a variable
CARRIES = 0.1  # ... at which it carries some of it: an interchange control draws no such latent
MIN_ACTIVE = 5  # prompts a latent must fire on to track anything
MOVES = 0.25  # a donor that replaces a value must move the model's answer on this share of prompts
PARSIMONY = 0.05  # epsilon squared within this of the best: the variable with the fewest values wins
MINOR = 0.005  # families below this share of the circuit's |effect| merge into their site's minor family


# ----------------------------------------------------------------------------- variables
def task_variables(task: Task, tokenizer) -> dict[str, list[str]]:
    """The task's own variables, then (templated prompts) ``token@<label>`` for every position
    whose token varies across the clean prompts."""
    out = dict(task.vars)
    if task.position_labels is not None:
        for p, label in enumerate(task.position_labels):
            column = task.clean[:, p].tolist()
            if len(set(column)) > 1:
                out[f"token@{label}"] = [tokenizer.decode([t]).strip() for t in column]
    return out


def epsilon_squared(acts: torch.Tensor, values: list[str]) -> torch.Tensor:
    """Per column of ``acts`` (``[prompts, latents]``), the share of its variance between the
    groups of prompts that share a value, bias-corrected (epsilon squared: (SS_between -
    (k - 1) MS_within) / (SS_total + MS_within)); 0 for a constant column."""
    codes = {v: i for i, v in enumerate(dict.fromkeys(values))}
    g = torch.tensor([codes[v] for v in values])
    n, k = acts.shape[0], len(codes)
    acts = acts.double()
    counts = torch.bincount(g, minlength=k).double()
    means = torch.zeros(k, acts.shape[1], dtype=torch.float64).index_add_(0, g, acts) / counts[:, None]
    grand = acts.mean(0)
    ss_total = ((acts - grand) ** 2).sum(0)
    ss_between = (counts[:, None] * (means - grand) ** 2).sum(0)
    ms_within = (ss_total - ss_between).clamp(min=0) / max(n - k, 1)
    eps = (ss_between - (k - 1) * ms_within) / (ss_total + ms_within).clamp(min=1e-30)
    return torch.where(ss_total > 0, eps, torch.zeros_like(eps)).float()


@torch.no_grad()
def site_activations(
    model: HookedTransformer, saes: SAESet, task: Task, nodes: list[Node], batch_size: int = 64
) -> torch.Tensor:
    """Each latent node's activation on each clean prompt, at its position (summed over the
    prompt's positions for a node at every position): ``[prompts, nodes]``."""
    hooks = list(dict.fromkeys(n.hook for n in nodes))
    out = []
    for lo in range(0, task.n_examples, batch_size):
        part = task.subset(slice(lo, lo + batch_size))
        with spliced(model, saes, hooks=hooks) as values:
            model(part.clean)
        cols = []
        for n in nodes:
            lat = values[n.hook].latents[..., n.latent].detach().float()
            if n.position is None:
                real = _real_positions(part, lat.shape[1])
                cols.append((lat * real).sum(1))
            else:
                cols.append(lat[:, n.position])
        out.append(torch.stack(cols, 1) if cols else torch.zeros(part.n_examples, 0))
    return torch.cat(out)


def _real_positions(task: Task, n_pos: int) -> torch.Tensor:
    if task.lengths is None:
        return torch.ones(task.n_examples, n_pos)
    return (torch.arange(n_pos)[None] < task.lengths[:, None]).float()


@dataclass
class Tracking:
    """What each latent tracks: the best variable (None: none reaches ``TRACKS``) and its
    epsilon squared, by node; ``carries``: every variable of which a latent carries some
    (epsilon squared >= ``CARRIES``), what an interchange control must leave out."""

    variable: dict[Node, str | None]
    score: dict[Node, float]
    carries: dict[Node, set[str]] = field(default_factory=dict)


def track(acts: torch.Tensor, nodes: list[Node], variables: dict[str, list[str]]) -> Tracking:
    """The variable each node tracks, from its activations ``acts`` ``[prompts, nodes]``: of
    the variables within ``PARSIMONY`` of the best epsilon squared, the one with the fewest
    values (a latent for the subject's number is explained as well by the subject's word,
    which has twenty times the values); then the one listed first (the task's own before
    ``token@``)."""
    names = list(variables)
    eps = torch.stack([epsilon_squared(acts, variables[v]) for v in names]) if names else torch.zeros(0, len(nodes))
    n_values = torch.tensor([len(set(variables[v])) for v in names], dtype=torch.float)
    active = (acts != 0).sum(0)
    variable, score, carries = {}, {}, {}
    for i, n in enumerate(nodes):
        carries[n] = {names[j] for j in range(len(names)) if float(eps[j, i]) >= CARRIES}
        col = eps[:, i] if names else torch.zeros(0)
        best = float(col.max()) if len(col) else 0.0
        close = (col >= best - PARSIMONY).nonzero().flatten().tolist()
        pick = min(close, key=lambda j: (n_values[j], j)) if close else None
        tracked = pick is not None and float(col[pick]) >= TRACKS and int(active[i]) >= MIN_ACTIVE
        variable[n] = names[pick] if tracked else None
        score[n] = max(float(col[pick]) if pick is not None else 0.0, 0.0)
    return Tracking(variable, score, carries)


@dataclass
class Detection:
    """Per latent node, the ``variable=value`` its activity best detects on the prompts and
    that F1 (``""`` and 0 where it never fires or no variable varies)."""

    value: dict[Node, str]
    f1: dict[Node, float]

    def detectors(self, threshold: float = DETECTS) -> set[Node]:
        return {n for n, f in self.f1.items() if f >= threshold}


def detect(acts: torch.Tensor, nodes: list[Node], variables: dict[str, list[str]]) -> Detection:
    """Each node's best value detection from its activations ``acts`` ``[prompts, nodes]``:
    F1 = 2 |active & value| / (|active| + |value|), active meaning non-zero."""
    active = (acts != 0).float()
    n_active = active.sum(0)
    best = torch.zeros(len(nodes))
    names = [""] * len(nodes)
    for var, values in variables.items():
        codes = {v: i for i, v in enumerate(dict.fromkeys(values))}
        if len(codes) < 2:
            continue
        onehot = torch.zeros(len(codes), len(values))
        onehot[torch.tensor([codes[v] for v in values]), torch.arange(len(values))] = 1
        f1 = 2 * (onehot @ active) / (onehot.sum(1)[:, None] + n_active[None]).clamp(min=1)  # [values, nodes]
        top, arg = f1.max(0)
        labels = list(codes)
        for i in (top > best).nonzero().flatten().tolist():
            best[i], names[i] = top[i], f"{var}={labels[int(arg[i])]}"
    return Detection(dict(zip(nodes, names, strict=True)), dict(zip(nodes, best.tolist(), strict=True)))


# ----------------------------------------------------------------------------- families
def site_name(site: Site) -> str:
    """A short name of a site: ``L2 resid@END``."""
    return f"L{site.submodule.layer} {site.submodule.kind}@{site.label}"


def family_name(variable: str | None, site: Site, effect: float, token_valued: bool) -> str:
    what = "untracked" if variable is None else (f"{variable} identity" if token_valued else variable)
    return f"{what} at {site_name(site)}, {'supports' if effect < 0 else 'opposes'}"


def group(
    effects: dict[Node, float], tracking: Tracking, token_vars: set[str], core: set[Node] | None = None
) -> list[FamilyRecord]:
    """The families of latents (``effects``: latent node -> effect): per site, variable tracked
    and sign of effect; groups under ``MINOR`` of the latents' |effect| merged into one "minor
    latents" family per site. With ``core`` (the feature level), latents outside it join only
    families that track a variable: a family is every latent of its site that tracks its
    variable, while what tracks nothing stays the feature cut's. Largest |effect| first, ids
    F1, F2, ..."""
    if core is not None:
        effects = {n: e for n, e in effects.items() if n in core or tracking.variable[n] is not None}
    groups: dict[tuple[Site, str | None, bool], list[Node]] = defaultdict(list)
    for n, e in effects.items():
        groups[(n.site, tracking.variable[n], e < 0)].append(n)
    total = sum(abs(e) for e in effects.values())
    minor: dict[Site, list[Node]] = defaultdict(list)
    out = []
    for (site, variable, _), members in groups.items():
        effect = sum(effects[n] for n in members)
        if abs(effect) < MINOR * total:
            minor[site] += members
        else:
            out.append(
                _family(
                    family_name(variable, site, effect, variable in token_vars),
                    site,
                    variable,
                    members,
                    effects,
                    tracking,
                )
            )
    out += [
        _family(f"minor latents at {site_name(site)}", site, None, ms, effects, tracking) for site, ms in minor.items()
    ]
    out.sort(key=lambda f: -abs(f.effect))
    for i, f in enumerate(out, 1):
        f.id = f"F{i}"
    return out


def rank(families: list[FamilyRecord]) -> list[FamilyRecord]:
    """Families by the |change| their latents, patched together, make to the metric on the
    discovery prompts (effect x ablation ratio; the recorded effect where not measured),
    largest first, with ids F1, F2, ... in that order: attribution can credit a family with an
    effect that patching shows it does not have."""

    def measured(f: FamilyRecord) -> float:
        return abs(f.effect * f.ablation_ratio) if f.ablation_ratio is not None else abs(f.effect)

    out = sorted(families, key=measured, reverse=True)
    for i, f in enumerate(out, 1):
        f.id = f"F{i}"
    return out


def _family(
    name: str, site: Site, variable: str | None, members: list[Node], effects: dict[Node, float], tracking: Tracking
) -> FamilyRecord:
    members = sorted(members, key=lambda n: -abs(effects[n]))
    scores = [tracking.score[n] for n in members]
    return FamilyRecord(
        id="",
        name=name,
        site=site.id,
        variable=variable,
        members=[n.id for n in members],
        effect=sum(effects[n] for n in members),
        tracking=sum(scores) / len(scores),
    )


# ----------------------------------------------------------------------------- the level
@dataclass
class FamilyLevel:
    """The family level: the families in ranked order, the cut (``level``: its size counts
    families in ``n_latents`` and the error terms apart), each family's validation."""

    families: list[FamilyRecord]
    level: Level
    interchange: list[InterchangeRecord] = field(default_factory=list)  # per variable, its families together
    seconds: float = 0.0
    detection: Detection | None = None  # the latents' value detection on the held-out prompts
    # what the families hold: every latent of the sites that tracks their variable ("sites"),
    # or, where those miss the target and the feature level's latents alone do better, those
    scope: str = "sites"


def family_level(
    ab: Ablator,
    families: list[FamilyRecord],
    nodes: dict[str, Node],
    errors: list[Node],
    by_site: dict[str, list[Node]],
    target: float,
    n_random: int,
    rng: random.Random,
) -> Level:
    """``families`` (ranked) cut at the smallest prefix whose latents and ``errors`` reach
    ``target`` on ``ab``'s prompts, measured (completeness, random families: as many live
    latents from each family's site), with the curve up to a little beyond the cut."""
    start = time.perf_counter()
    members = [[nodes[m] for m in f.members] for f in families]

    def circuit(k: int) -> list[Node]:
        return [n for ms in members[:k] for n in ms] + errors

    def random_f(k: int) -> float:
        return sum(ab.faithfulness(_draw(families[:k], by_site, rng) + errors) for _ in range(n_random)) / n_random

    fs: dict[int, float] = {}

    def f_of(k: int) -> float:
        if k not in fs:
            fs[k] = ab.faithfulness(circuit(k))
        return fs[k]

    n = len(families)
    k, f = smallest_prefix(n, f_of, target)
    # the curve without random baselines: one per point would cost n_random passes each
    points = [Measurement(s, len(errors), f_of(s)) for s in log_sizes(n) if s <= max(2 * k, 10)]
    at = Measurement(k, len(errors), f, ab.completeness(circuit(k)), random_f(k), f >= target)
    return Level("families", at, points, time.perf_counter() - start)


def _draw(
    families: list[FamilyRecord], by_site: dict[str, list[Node]], rng: random.Random, avoid: set[str] = frozenset()
) -> list[Node]:
    """Random families: for each family, as many live latents of its site (none drawn twice,
    none whose id is in ``avoid``)."""
    taken: dict[str, set[Node]] = defaultdict(set)
    for f in families:
        pool = [n for n in by_site.get(f.site, []) if n not in taken[f.site] and n.id not in avoid]
        taken[f.site].update(rng.sample(pool, min(len(f.members), len(pool))))
    return [n for drawn in taken.values() for n in drawn]


def _live_by_site(ab: Ablator, sites: list[Site], rng: random.Random) -> dict[str, list[Node]]:
    out: dict[str, list[Node]] = defaultdict(list)
    for n in live_pool(ab, sites, rng).latents:
        out[n.site.id].append(n)
    return out


# ----------------------------------------------------------------------------- validation
@torch.no_grad()
def latent_values(
    model: HookedTransformer, saes: SAESet, tokens: torch.Tensor, hooks: list[str], batch_size: int = 64
) -> dict[str, torch.Tensor]:
    """The latents at ``hooks`` of prompts ``tokens``: ``[prompts, pos, d_sae]`` per hook."""
    parts: dict[str, list[torch.Tensor]] = defaultdict(list)
    for lo in range(0, tokens.shape[0], batch_size):
        _, cache = model.run_with_cache(tokens[lo : lo + batch_size], names_filter=hooks)
        for h in hooks:
            parts[h].append(encode_at(saes, h, flat_act(cache[h])).latents)
    return {h: torch.cat(v) for h, v in parts.items()}


@torch.no_grad()
def patched_run(
    model: HookedTransformer,
    saes: SAESet,
    task: Task,
    members: list[Node],
    source: dict[str, torch.Tensor],
    rows: slice,
) -> tuple[torch.Tensor, Task]:
    """The logits of ``task``'s clean prompts ``rows`` with ``members`` given their values in
    ``source`` (``latent_values`` of other prompts, row for row), and those rows as a task."""
    hooks = list(dict.fromkeys(m.hook for m in members))
    edits = {h: _patch([m for m in members if m.hook == h], source[h][rows]) for h in hooks}
    part = task.subset(rows)
    with spliced(model, saes, hooks=hooks, edits=edits):
        return model(part.clean), part


def _patch(members: list[Node], source: torch.Tensor):
    def edit(nodes: NodeValues) -> NodeValues:
        lat = nodes.latents.clone()
        for m in members:
            at = slice(None) if m.position is None else m.position
            lat[:, at, m.latent] = source[:, at, m.latent].to(lat.dtype)
        return NodeValues(lat, nodes.error)

    return edit


def patched_metric(
    model: HookedTransformer,
    saes: SAESet,
    task: Task,
    members: list[Node],
    source: dict[str, torch.Tensor],
    batch_size: int,
) -> float:
    """The mean metric of ``task`` with ``members`` given their values in ``source``."""
    total = 0.0
    for lo in range(0, task.n_examples, batch_size):
        logits, part = patched_run(model, saes, task, members, source, slice(lo, lo + batch_size))
        total += float(part.metric_per_example(logits).double().sum())
    return total / task.n_examples


def ablation_ratios(
    model: HookedTransformer,
    saes: SAESet,
    discovery: Task,
    families: list[FamilyRecord],
    nodes: dict[str, Node],
    batch_size: int,
) -> None:
    """(a) Each family's latents patched together to their corrupt values on the discovery
    prompts: the metric's change over the family's recorded effect, into ``ablation_ratio``."""
    hooks = list(dict.fromkeys(nodes[m].hook for f in families for m in f.members))
    corrupt = latent_values(model, saes, discovery.corrupt, hooks, batch_size)
    base = patched_metric(model, saes, discovery, [], corrupt, batch_size)
    for f in families:
        change = patched_metric(model, saes, discovery, [nodes[m] for m in f.members], corrupt, batch_size) - base
        f.ablation_ratio = change / f.effect if f.effect != 0 else None


def token_valued(task: Task, tokenizer, variables: dict[str, list[str]]) -> dict[str, list[int]]:
    """The variables whose value is a token of every prompt, with those token ids."""
    out = {}
    for name, values in variables.items():
        ids = [value_token(tokenizer, v, row) for v, row in zip(values, task.clean.tolist(), strict=True)]
        if all(i is not None for i in ids):
            out[name] = ids
    return out


@dataclass
class Donors:
    """Per prompt, for one variable: the donor prompt's tokens, the variables the donor
    changes (``changed``: the variable and every token variable the swap moves), the model's top answer
    on the donor and the prompts it is scored on (``moves``: where that answer differs from the
    prompt's), and the donor's latents at the hooks patched (``latent_values``)."""

    tokens: torch.Tensor
    changed: set[str]
    answer: torch.Tensor | None  # None: success is the metric turning negative (``by_value``)
    moves: torch.Tensor
    values: dict[str, torch.Tensor]


def donor_tokens(task: Task, name: str, tokens: dict[str, list[int]], swap: bool) -> torch.Tensor:
    """Donor prompts for variable ``name``: its token replaced by another prompt's value that
    is not in the prompt, or (``swap``) exchanged with another token variable's differing
    token in the same prompt (IO <-> S)."""
    own = tokens[name]
    others = [t for n, t in tokens.items() if n != name]
    out = task.clean.clone()
    n = task.n_examples
    for i in range(n):
        row = out[i].tolist()
        a = own[i]
        if swap:
            b = next((t[i] for t in others if t[i] != a), a)
        else:
            b = next((own[(i + j) % n] for j in range(1, n) if own[(i + j) % n] not in row), a)
        exchange = {a: b, b: a}
        out[i] = torch.tensor([exchange.get(t, t) for t in row])
    return out


@torch.no_grad()
def top_answers(model: HookedTransformer, task: Task, tokens: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The model's top token at each prompt's last position."""
    out = []
    for lo in range(0, task.n_examples, batch_size):
        part = task.subset(slice(lo, lo + batch_size))
        out.append(part._last(model(tokens[lo : lo + batch_size])).argmax(-1).cpu())
    return torch.cat(out)


def donors(
    model: HookedTransformer,
    saes: SAESet,
    task: Task,
    name: str,
    tokens: dict[str, list[int]],
    hooks: list[str],
    batch_size: int,
) -> Donors:
    """The donors of variable ``name``: replacing its value when that moves the model's answer
    on at least ``MOVES`` of the prompts (the IO name), else swapping it with another token
    variable (the S name, which moves the answer only when it becomes the IO)."""
    clean = top_answers(model, task, task.clean, batch_size)
    for swap in (False, True):
        donor = donor_tokens(task, name, tokens, swap)
        answer = top_answers(model, task, donor, batch_size)
        moves = answer != clean
        if float(moves.float().mean()) >= MOVES or swap:
            changed = {name} | changed_variables(task.clean, donor, tokens)
            return Donors(donor, changed, answer, moves, latent_values(model, saes, donor, hooks, batch_size))
    raise AssertionError("unreachable")


def changed_variables(clean: torch.Tensor, donor: torch.Tensor, tokens: dict[str, list[int]]) -> set[str]:
    """The token variables the donor changes on at least half of the prompts: some position
    holding the variable's token holds another token in the donor (swapping IO and S also
    changes the names at A, B and S2)."""
    out = set()
    for name, ids in tokens.items():
        hit = sum(bool((donor[i][clean[i] == t] != t).any()) for i, t in enumerate(ids))
        if 2 * hit >= len(ids):
            out.add(name)
    return out


def by_value(
    model: HookedTransformer, saes: SAESet, task: Task, name: str, hooks: list[str], batch_size: int
) -> Donors:
    """Donors for a variable whose value is not a token (the subject's number, the name
    order): each prompt's donor is the next prompt with another value; scored on the prompts
    the model gets right (metric > 0), where success is the metric turning negative."""
    values, n = task.vars[name], task.n_examples
    pick = [next((j % n for j in range(i + 1, i + n) if values[j % n] != values[i]), i) for i in range(n)]
    tokens = task.clean[torch.tensor(pick)]
    with torch.no_grad():
        right = (
            torch.cat(
                [
                    task.subset(slice(lo, lo + batch_size))
                    .metric_per_example(model(task.clean[lo : lo + batch_size]))
                    .cpu()
                    for lo in range(0, n, batch_size)
                ]
            )
            > 0
        )
    moves = right & (torch.tensor(pick) != torch.arange(n))
    return Donors(tokens, {name}, None, moves, latent_values(model, saes, tokens, hooks, batch_size))


def interchange_rate(
    model: HookedTransformer, saes: SAESet, task: Task, members: list[Node], donor: Donors, batch_size: int = 64
) -> tuple[float, int]:
    """(b) Of the prompts on which the donor moves the model's top answer, the share on which
    giving ``members`` alone their donor values moves it to the donor's answer (for a donor
    ``by_value``: of the prompts the model gets right, the share whose metric turns negative);
    and how many prompts."""
    hits = total = 0
    for lo in range(0, task.n_examples, batch_size):
        rows = slice(lo, lo + batch_size)
        use = donor.moves[rows]
        if not use.any():
            continue
        logits, part = patched_run(model, saes, task, members, donor.values, rows)
        if donor.answer is None:
            hit = part.metric_per_example(logits).cpu() < 0
        else:
            hit = part._last(logits).argmax(-1).cpu() == donor.answer[rows]
        hits += int(hit[use].sum())
        total += int(use.sum())
    return (hits / total if total else 0.0), total


def interchange(
    model: HookedTransformer,
    saes: SAESet,
    held_out: Task,
    families: list[FamilyRecord],
    nodes: dict[str, Node],
    by_site: dict[str, list[Node]],
    n_random: int,
    rng: random.Random,
    batch_size: int,
    discovery: Task | None = None,
    carries: dict[str, set[str]] | None = None,
) -> list[InterchangeRecord]:
    """(b) For every family tracking a token-valued variable, its interchange rate on the
    held-out prompts (into ``interchange``) beside a control (into ``interchange_random``): as
    many latents of the same sites, drawn from those in no family tracking a variable the donor
    changes and (``carries``: node id -> variables, `Tracking.carries`) carrying none of them;
    per variable, the rate of all its families together and its control."""
    tokens = token_valued(held_out, model.tokenizer, task_variables(held_out, model.tokenizer))
    hooks = list(dict.fromkeys(nodes[m].hook for f in families for m in f.members))
    out = []
    named = {f.variable for f in families} & (set(tokens) | set(held_out.vars))
    for name in sorted(named):
        if name in tokens:
            donor = donors(model, saes, held_out, name, tokens, hooks, batch_size)
        elif held_out.metric in ("logit_diff", "prob_diff"):  # the metric's sign says which answer wins
            donor = by_value(model, saes, held_out, name, hooks, batch_size)
        else:
            continue
        avoid = {m for f in families if f.variable in donor.changed for m in f.members}
        avoid |= {i for i, vs in (carries or {}).items() if vs & donor.changed}

        def control(like: list[FamilyRecord], donor: Donors = donor, avoid: set[str] = avoid) -> float:
            drawn = (_draw(like, by_site, rng, avoid) for _ in range(n_random))
            return sum(interchange_rate(model, saes, held_out, d, donor, batch_size)[0] for d in drawn) / n_random

        mine = [f for f in families if f.variable == name]
        for f in mine:
            f.interchange, _ = interchange_rate(model, saes, held_out, [nodes[m] for m in f.members], donor, batch_size)
            f.interchange_random = control([f])
        together = [nodes[m] for f in mine for m in f.members]
        rate, n = interchange_rate(model, saes, held_out, together, donor, batch_size)
        record = InterchangeRecord(name, len(mine), rate, control(mine), n, sorted(donor.changed))
        if name in tokens and discovery is not None:
            steer = steering(model, saes, discovery, held_out, name, tokens, hooks, batch_size)
            if steer is not None:
                record.steer_rate, record.steer_prompts = interchange_rate(
                    model, saes, held_out, together, steer, batch_size
                )
                drawn = (_draw(mine, by_site, rng, avoid) for _ in range(n_random))
                record.steer_random_rate = (
                    sum(interchange_rate(model, saes, held_out, d, steer, batch_size)[0] for d in drawn) / n_random
                )
        out.append(record)
    return out


def steering(
    model: HookedTransformer,
    saes: SAESet,
    discovery: Task,
    held_out: Task,
    name: str,
    tokens: dict[str, list[int]],
    hooks: list[str],
    batch_size: int,
) -> Donors | None:
    """(c) Steering targets for a token variable, as `Donors` without donor prompts: on each
    held-out prompt, the values the latents take on average over the discovery prompts whose
    variable has the value another held-out prompt has (and this one lacks); success is the
    model's top answer becoming that value's token. None when no prompt has such a value."""
    variables = task_variables(discovery, model.tokenizer)
    found = token_valued(discovery, model.tokenizer, {name: variables[name]}) if name in variables else {}
    if name not in found:
        return None
    means = _means_by_value(latent_values(model, saes, discovery.clean, hooks, batch_size), found[name])
    own, n = tokens[name], held_out.n_examples
    target = []
    for i in range(n):
        row = held_out.clean[i].tolist()
        others = (own[(i + j) % n] for j in range(1, n))
        target.append(next((t for t in others if t not in row and t in means), -1))
    use = torch.tensor([t != -1 for t in target])
    if not use.any():
        return None
    blank = {h: torch.zeros_like(v) for h, v in next(iter(means.values())).items()}
    values = {h: torch.stack([(means[t] if t != -1 else blank)[h] for t in target]) for h in hooks}
    return Donors(held_out.clean, {name}, torch.tensor(target), use, values)


def _means_by_value(values: dict[str, torch.Tensor], ids: list[int]) -> dict[int, dict[str, torch.Tensor]]:
    """Per token value, the mean latents (per hook, ``[pos, d_sae]``) of the prompts having it."""
    rows: dict[int, list[int]] = defaultdict(list)
    for i, t in enumerate(ids):
        rows[t].append(i)
    return {t: {h: v[r].mean(0) for h, v in values.items()} for t, r in rows.items()}


def family_nodes(h: HierarchyRecord) -> dict[str, Node]:
    """Every family member of a recorded hierarchy as a node, by id (members outside the
    feature level are not in the circuit's graph): its family's site and the id's latent."""
    sites = {s.id: s.site for s in h.sites}
    out = {}
    for f in h.families:
        if f.site not in sites:
            raise CircuitsError(f"family {f.id}: its site {f.site!r} is not one of the circuit's sites")
        for m in f.members:
            latent = m.rsplit("/", 1)[-1].split("@", 1)[0]
            if not latent.isdigit():
                raise CircuitsError(f"family {f.id}: member {m!r} is not a latent node id (hook/latent@position)")
            out[m] = Node(sites[f.site], int(latent))
    return out


# ----------------------------------------------------------------------------- one prompt
@dataclass
class ActiveFamily(Result):
    """A family on one prompt: its latents active there with their activation and AtP effect
    on that prompt's metric (``(node id, activation, effect)``, largest |effect| first)."""

    id: str
    name: str
    effect: float
    latents: list[tuple[str, float, float]]


def prompt_families(
    model: HookedTransformer, saes: SAESet, task: Task, index: int, families: list[FamilyRecord], nodes: dict[str, Node]
) -> list[ActiveFamily]:
    """The families active on prompt ``index`` of ``task`` (a member latent non-zero at its
    position), each with its active latents and their effects on that prompt (corrupt -
    clean value times the metric's gradient), largest |effect| first."""
    if not 0 <= index < task.n_examples:
        raise CircuitsError(f"prompt {index}: the task has prompts 0 to {task.n_examples - 1}")
    hooks = list(dict.fromkeys(nodes[m].hook for f in families for m in f.members))
    run = run_batch(model, saes, task.subset(slice(index, index + 1)), hooks)
    grads = clean_grads(model, saes, run, hooks)
    grad = {h: node_grads(saes, h, grads[h]).latents[0] for h in hooks}
    out = []
    for f in families:
        active = []
        for m in f.members:
            n = nodes[m]
            at = slice(None) if n.position is None else n.position
            act = float(run.clean[n.hook].latents[0, at, n.latent].sum())
            if act != 0:
                effect = run.delta(n.hook).latents[0, at, n.latent] * grad[n.hook][at, n.latent]
                active.append((m, act, float(effect.sum())))
        if active:
            active.sort(key=lambda a: -abs(a[2]))
            out.append(ActiveFamily(f.id, f.name, sum(a[2] for a in active), active))
    return sorted(out, key=lambda a: -abs(a.effect))


# ----------------------------------------------------------------------------- all of it
def find_families(
    model: HookedTransformer,
    saes: SAESet,
    discovery: Task,
    held_out: Task,
    effects: dict[Node, float],
    errors: list[Node],
    sites: list[Site],
    cfg: HierarchyConfig | None = None,
    core: set[Node] | None = None,
) -> FamilyLevel:
    """The families of latents (``effects``: latent nodes and their recorded effects, e.g. the
    skeleton's; ``core``: the feature level's latents, see ``group``; ``errors``: the feature
    level's error terms; ``sites``: the skeleton), the family level cut at the target on the
    held-out prompts, and every family's validation."""
    cfg = cfg or HierarchyConfig()
    if not effects:
        raise CircuitsError("families need a feature level: the circuit has no latents")
    start = time.perf_counter()
    tokenizer = model.tokenizer
    latents = list(effects)
    variables = task_variables(discovery, tokenizer)
    rng = random.Random(cfg.ablation.seed)
    ab = Ablator(model, saes, held_out, cfg.ablation, cfg.batch_size)
    by_site = _live_by_site(ab, sites, rng)
    # the live latents the random families draw from are tracked too (interchange controls)
    tracked = list(dict.fromkeys([*latents, *(n for pool in by_site.values() for n in pool)]))
    tracking = track(site_activations(model, saes, discovery, tracked, cfg.batch_size), tracked, variables)
    token_vars = set(token_valued(discovery, tokenizer, variables))
    nodes = {n.id: n for n in latents}  # every candidate; families hold a subset

    def ranked_level(chosen: dict[Node, float]) -> tuple[list[FamilyRecord], Level]:
        fams = group(chosen, tracking, token_vars, core)
        ablation_ratios(model, saes, discovery, fams, nodes, cfg.batch_size)
        fams = rank(fams)
        return fams, family_level(ab, fams, nodes, errors, by_site, cfg.target, cfg.n_random, rng)

    families, level = ranked_level(effects)
    scope = "sites"
    if core is not None and not level.cut.reached_target:
        # A site's latents that write a variable as a code (greater-than's years): kept
        # clean while the rest of the code is ablated they can pull F below the feature
        # level's, so families of the feature level's latents alone (whose union is the
        # feature level) are the fallback, kept if they do better.
        narrow, narrow_level = ranked_level({n: e for n, e in effects.items() if n in core})
        if narrow_level.cut.faithfulness > level.cut.faithfulness:
            families, level, scope = narrow, narrow_level, "features"
    carries = {n.id: vs for n, vs in tracking.carries.items()}
    together = interchange(
        model, saes, held_out, families, nodes, by_site, cfg.n_random, rng, cfg.batch_size, discovery, carries
    )
    scored = latents if core is None else [n for n in latents if n in core]  # what the record reads
    held = site_activations(model, saes, held_out, scored, cfg.batch_size)
    detection = detect(held, scored, task_variables(held_out, tokenizer))
    return FamilyLevel(families, level, together, time.perf_counter() - start, detection, scope)
