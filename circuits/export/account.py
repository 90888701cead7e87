"""A circuit told in words: which sites, which families, what each does, how faithful.

Generated from the circuit's record (its levels and families), never written by hand, so it
says only what was measured; the report opens with it and ``discover`` prints it.
"""

from __future__ import annotations

from circuits.circuit.config import DETECTS
from circuits.circuit.record import CircuitRecord, FamilyRecord, HierarchyRecord, InterchangeRecord

TOLD = 4  # families described one by one


def circuit_account(record: CircuitRecord) -> list[str]:
    """Sentences about a circuit: empty for a circuit without a hierarchical record."""
    h = record.hierarchy
    if h is None:
        return []
    answer = record.answer_label()
    what = f"{record.task} ({record.metric}{': ' + answer if answer else ''})"
    sl, fl = h.site_level, h.feature_level
    out = [
        f"The circuit of {what} runs through {sl.n_nodes} sites: kept alone, with everything else "
        f"{_ablated(h)}, they give faithfulness {sl.faithfulness:.2f} on {h.n_held_out} held-out prompt pairs "
        f"(random sites of the same number: {sl.random_faithfulness:.2f}).",
        f"Inside them, {fl.n_nodes} latents and {fl.n_error_nodes} SAE error terms give {fl.faithfulness:.2f} "
        f"(random latents: {fl.random_faithfulness:.2f}).",
    ]
    if h.families and h.family_level is not None:
        out.append(_families_sentence(h))
        out += [_family_sentence(f) for f in h.families[:TOLD]]
        out += [_interchange_sentence(r) for r in h.interchange if r.n_prompts]
    if not h.reached_target:
        out.append(f"The target faithfulness {h.target} was not reached.")
    return out


def _ablated(h: HierarchyRecord) -> str:
    start = f" from layer {h.start_layer} up" if h.start_layer else ""
    return f"{h.ablation}-ablated{start}"


def _families_sentence(h: HierarchyRecord) -> str:
    fl = h.family_level
    named = h.named_share()
    feature = "" if h.feature_named_share is None else f", {h.feature_named_share:.0%} of the feature level's"
    whose = "feature level's" if h.family_scope == "features" else "sites'"
    return (
        f"Grouped by the task variable each latent tracks and the sign of its effect, the {whose} latents form "
        f"{len(h.families)} families ({named:.0%} of their |effect| in families named by a variable{feature}); "
        f"the {fl.n_nodes} strongest give {fl.faithfulness:.2f} (random families of the same sizes at the "
        f"same sites: {fl.random_faithfulness:.2f})."
    ) + _detector_clause(h)


def _detector_clause(h: HierarchyRecord) -> str:
    if h.feature_detector_share is None:
        return ""
    return (
        f" Read one by one, {h.feature_detector_share:.0%} of the feature level's |effect| is in latents that each "
        f"fire where one value of a task variable holds (F1 >= {DETECTS:g} on the held-out prompts)."
    )


def _family_sentence(f: FamilyRecord) -> str:
    does = "supports the answer" if f.effect < 0 else "works against the answer"
    text = f"{f.id}, {f.name} ({len(f.members)} latents, effect {f.effect:+.2f}): it {does}"
    if f.ablation_ratio is not None:
        text += f"; patched together its latents move the metric {f.ablation_ratio:.2f}x their recorded effect"
    if f.interchange is not None:
        text += (
            f"; given another prompt's values it moves the answer there on {f.interchange:.0%} of prompts "
            f"(other latents: {f.interchange_random:.0%})"
        )
    return text + "."


def _interchange_sentence(r: InterchangeRecord) -> str:
    text = (
        f"Given the values they take on a prompt with another {r.variable}, the {r.n_families} {r.variable} "
        f"families together move the model's answer to that prompt's answer on {r.rate:.0%} of {r.n_prompts} "
        f"held-out prompts (as many other latents of the same sites: {r.random_rate:.0%})."
    )
    if r.steer_rate is not None:
        text += (
            f" Clamped to their mean values for another {r.variable}, they make it the answer on "
            f"{r.steer_rate:.0%} of {r.steer_prompts} prompts (other latents: {r.steer_random_rate:.0%})."
        )
    return text
