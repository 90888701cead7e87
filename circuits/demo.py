"""The main job on the embedded default, end to end: model and SAEs (cached), the IOI
circuit, its validation, two edits (its top 100 features off; the searched edit with the
least collateral), and every export, into one folder."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import networkx as nx

from circuits.circuit.check import check_attribution
from circuits.circuit.config import DiscoverConfig
from circuits.circuit.discover import discover
from circuits.circuit.edit import EditReport, edit_from_circuit, edit_report
from circuits.circuit.edit_search import GateSchedule, optimise_edit
from circuits.circuit.faithfulness import FaithfulnessCurve, faithfulness_curve, ranked_nodes
from circuits.circuit.families import family_nodes, prompt_families
from circuits.circuit.graph import node_effects, node_link, record_held_out, record_sources, save_graph
from circuits.circuit.record import record_of
from circuits.core.config import Result
from circuits.export.cards import feature_cards, latent_keys
from circuits.export.circuit_tracer import write_circuit_tracer
from circuits.export.graphml import write_graphml
from circuits.export.pictures import draw_graph
from circuits.export.plots import plot_faithfulness, plot_rankings
from circuits.export.report import write_report
from circuits.loaders import TaskSpec, load_model, load_saes
from sae.evaluate import evaluate_saes
from sae.interpret import Readability, interpretability, readability
from tasks.builtin import make_task

TARGET = 0.9  # faithfulness the demo's circuit is held to, at both levels
SEARCH = GateSchedule(steps=100)  # the edit search, half the CLI's steps (measured: the same edit size and figures)


@dataclass
class DemoResult(Result):
    """What `run_demo` found and wrote. ``to_dict()`` gives the graph as node-link data."""

    graph: nx.DiGraph
    validation: FaithfulnessCurve  # on held-out prompts, mean ablation, the features by |effect|
    edits: list[EditReport]  # the top-100 edit, then the optimised one (held-out prompts and text)
    readability: Readability  # the circuit's effect against the toy language's concepts
    times: dict[str, float]  # seconds per step
    missing_dot: str | None  # why graph pictures are missing (graphviz), or None
    files: list[str]
    report: Path

    def to_dict(self) -> dict:
        return {
            "graph": node_link(self.graph),
            "validation": self.validation.to_dict(),
            "edits": [e.to_dict() for e in self.edits],
            "readability": self.readability.to_dict(),
            "times": dict(self.times),
            "missing_dot": self.missing_dot,
            "files": list(self.files),
            "report": str(self.report),
        }


def run_demo(folder: Path, n: int = 64, progress: bool = True) -> DemoResult:
    """Write circuit.json, graph.{png,svg,dot}, circuit.graphml, circuit-tracer/ (ioi.json),
    faithfulness.png, rankings.png, edit.json and report.html into ``folder``; return the
    figures. The circuit is discovered on ``n`` pairs and validated on the next seed's ``n``."""
    folder.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}

    def step(name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        times[name] = time.perf_counter() - start
        return out

    model = step("model", load_model, "toy", progress=progress)
    saes = step("saes", load_saes, "toy", model, progress=progress)
    # held out: the next seed. Discovery on n pairs and sites by attribution only, unlike
    # `discover`'s 512 pairs and site mask, to keep the demo a few minutes long (with both, its
    # discover step took 1,509 s of 38 minutes, two other jobs sharing the 2 cores)
    task, held_out, held_out_record = TaskSpec("ioi", n).split(model.tokenizer)
    cfg = DiscoverConfig(method="ig", target_faithfulness=TARGET, site_mask_steps=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        graph = step("discover", discover, model, saes, task, cfg, progress=progress, held_out=held_out)
    record_sources(graph, "ioi", n)
    record_held_out(graph, held_out_record)
    save_graph(graph, folder / "circuit.json")
    validation = step(
        "validate",
        faithfulness_curve,
        model,
        saes,
        held_out,
        ranked_nodes(graph),
        n_random=1,
        progress=progress,
    )
    plot_faithfulness(validation, folder / "faithfulness.png", title=f"IOI circuit: mean ablation, {n} held-out pairs")
    plot_rankings(record_of(graph).hierarchy, folder / "rankings.png")
    top = edit_from_circuit(graph, top=100)
    top.save(folder / "edit.json")
    optimised, _ = step("edit search", optimise_edit, graph, model, saes, "ioi", schedule=SEARCH, progress=progress)
    optimised.save(folder / "edit-optimised.json")
    edits = [
        step(f"edit report ({name})", edit_report, model, saes, e, "ioi", n=128, seed=1)
        for name, e in (("top 100", top), ("searched", optimised))
    ]
    cards = step("feature cards", feature_cards, model, saes, latent_keys(graph))  # the viewer opens any
    _, missing_dot = step("draw", draw_graph, graph, folder / "graph", ("png", "svg"), cards=cards)
    write_graphml(graph, folder / "circuit.graphml")
    write_circuit_tracer(graph, folder / "circuit-tracer", cards, slug="ioi")
    quality = step("SAE quality", evaluate_saes, model, saes, n_seqs=64, progress=progress)
    interp = step("interpretability", interpretability, model, saes, progress=progress)
    readable = readability(node_effects(graph), interp)
    h = record_of(graph).hierarchy
    prompt = None
    if h.families:  # the report's one-prompt view: the first discovery prompt
        active = step("one prompt", prompt_families, model, saes, task, 0, h.families, family_nodes(h))
        prompt = (task.prompts[0], active)
    fidelity = step(
        "fidelity",
        check_attribution,
        model,
        saes,
        make_task("ioi", model.tokenizer, n=16, seed=2),
        n_top=20,
        n_candidates=40,
        progress=progress,
    )
    svg_path = folder / "graph.svg"
    svg = svg_path.read_text() if svg_path.is_file() else None
    report = write_report(
        folder / "report.html",
        graph,
        svg[svg.index("<svg") :] if svg else None,
        validation,
        edits,
        quality,
        fidelity,
        cards,
        folder / "faithfulness.png",
        folder / "rankings.png",
        readable,
        prompt=prompt,
    )
    return DemoResult(
        graph,
        validation,
        edits,
        readable,
        times,
        missing_dot,
        sorted(str(p) for p in folder.iterdir() if not p.name.startswith(".")),
        report,
    )
