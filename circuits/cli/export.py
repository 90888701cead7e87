"""``export``: a circuit as a picture (graphviz), GraphML, node-link JSON or circuit-tracer's
frontend files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from circuits.cli.args import read_circuit, writable
from circuits.core.config import add_flag
from circuits.core.errors import CircuitsError
from circuits.export.options import PictureOptions


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a circuit as an image or data file",
        description="Draw a circuit (png, svg, pdf via graphviz; the strongest "
        "--max-nodes nodes) or write it as GraphML, node-link JSON or "
        "circuit-tracer's frontend JSON.",
    )
    p.add_argument("--circuit", required=True, help="a circuit.json written by discover")
    p.add_argument(
        "--format", default="png", help="png (default), svg, pdf, graphml, json, circuit-tracer or html (the report)"
    )
    p.add_argument(
        "--prompt",
        type=int,
        default=0,
        help="html: the held-out prompt whose active families the report shows (default 0)",
    )
    p.add_argument("--out", help="output path without extension (default: beside the circuit)")
    add_flag(p, "--max-nodes", PictureOptions, "latents drawn at most, spread over the sites, strongest first")
    p.add_argument(
        "--annotations",
        help='JSON file {"node id": "label", "F3": "name"} replacing automatic descriptions and family names',
    )
    p.add_argument("--no-descriptions", action="store_true", help="no feature descriptions (no model needed)")
    p.add_argument(
        "--slug",
        help="circuit-tracer: the graph's name (default: the task's); --out is then a folder "
        "(default circuit-tracer/ beside the circuit) that gets SLUG.json and graph-metadata.json",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from circuits.export.annotations import load_annotations, rename_families
    from circuits.export.pictures import FORMATS

    graph = read_circuit(args.circuit)
    stem = Path(args.out) if args.out else Path(args.circuit).with_suffix("")
    writable(stem.parent)
    opts = PictureOptions(max_nodes=args.max_nodes)
    annotations = load_annotations(args.annotations, graph, args.circuit) if args.annotations else None
    if annotations:
        graph = rename_families(graph, annotations)
    described = args.format in (*FORMATS, "circuit-tracer", "html") and not args.no_descriptions
    cards = circuit_cards(graph, opts, progress=not args.quiet) if described else {}
    files = write(graph, args, stem, opts, annotations, cards)
    if len(graph) <= 1:
        print("the circuit is empty (drawn as such)")
    print("\n".join(str(f) for f in files))


def write(
    graph, args: argparse.Namespace, stem: Path, opts: PictureOptions, annotations: dict | None, cards: dict
) -> list:
    """The files of ``--format``."""
    from circuits.circuit.graph import save_graph
    from circuits.export.circuit_tracer import write_circuit_tracer
    from circuits.export.graphml import write_graphml
    from circuits.export.pictures import FORMATS, draw_graph

    if args.format in FORMATS:
        files, missing = draw_graph(graph, stem, (args.format,), opts, cards=cards, annotations=annotations)
        if missing:
            print(f"circuits: warning: {missing}", file=sys.stderr)
        return files
    if args.format == "graphml":
        return [write_graphml(graph, stem.with_suffix(".graphml"))]
    if args.format == "json":
        return [save_graph(graph, stem.with_suffix(".json"))]
    if args.format == "html":
        return [write_html(graph, args, stem.with_suffix(".html"), opts, annotations, cards)]
    if args.format == "circuit-tracer":  # --out is a folder: {slug}.json + graph-metadata.json
        folder = Path(args.out) if args.out else Path(args.circuit).parent / "circuit-tracer"
        return write_circuit_tracer(graph, writable(folder), cards, args.slug)
    raise CircuitsError(f"unknown format {args.format!r}: use png, svg, pdf, graphml, json, circuit-tracer, html")


def write_html(graph, args: argparse.Namespace, path: Path, opts: PictureOptions, annotations, cards: dict) -> Path:
    """The report of a circuit: its static picture (when graphviz is there) and, for a circuit
    with families, one held-out prompt's active families (the model, SAE set and prompts
    rebuilt from the circuit's sources)."""
    import tempfile

    from circuits.circuit.families import family_nodes, prompt_families
    from circuits.circuit.record import record_of
    from circuits.export.pictures import draw_graph
    from circuits.export.report import write_report

    with tempfile.TemporaryDirectory() as tmp:
        files, _ = draw_graph(graph, Path(tmp) / "graph", ("svg",), opts, cards=cards, annotations=annotations)
        svg = next((f.read_text() for f in files if Path(f).suffix == ".svg"), None)
    prompt = None
    h = record_of(graph).hierarchy
    if h is not None and h.families:
        from circuits.loaders import open_circuit

        opened = open_circuit(graph, progress=not args.quiet)
        active = prompt_families(opened.model, opened.saes, opened.task, args.prompt, h.families, family_nodes(h))
        prompt = (opened.task.prompts[args.prompt], active)
    return write_report(path, graph, svg[svg.index("<svg") :] if svg else None, cards=cards, prompt=prompt)


def circuit_cards(graph, opts: PictureOptions, progress: bool = True) -> dict:
    """Feature cards for the latents drawn, from the circuit's own model and SAE set."""
    from circuits.circuit.record import record_of
    from circuits.export.cards import feature_cards
    from circuits.export.pictures import card_keys
    from circuits.loaders import load_model, load_saes

    src = record_of(graph).sources
    model = load_model(src.model if src else "toy", progress=progress)
    saes = load_saes(src.saes if src else "toy", model, progress=progress)
    return feature_cards(model, saes, card_keys(graph, opts))
