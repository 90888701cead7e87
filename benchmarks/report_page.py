"""report.html's weight and time to first render in headless Chromium, for a circuit file (the
demo's by default) and for a synthetic circuit of 2,000 features (8 sites, 4 edges per
feature, a card per feature shaped like the embedded model's). Time to first render = from
navigation start to the viewer's first drawing (``window.circuitViewer.readyAt``); also the
time to expand every site. Prints a markdown table.

Run: `.venv/bin/python benchmarks/report_page.py [--circuit outputs/ioi/circuit.json] [--repeats 3]`
(the demo's report is re-written from its circuit and the cards of all its latents, computed
with the embedded model).
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]


def synthetic(n_features: int = 2000, n_sites: int = 8, seed: int = 0) -> tuple[nx.DiGraph, dict]:
    """A hierarchical-looking circuit: ``n_sites`` sites at the last position, features spread
    over them, each with edges to 4 features of later sites (or the metric), and a card each."""
    from circuits.circuit.record import CircuitRecord, ExampleRecord, attach
    from circuits.core.vocab import METRIC, Node, Site, Submodule
    from circuits.export.cards import FeatureCard

    rng = random.Random(seed)
    labels = [f"t{i}" for i in range(15)]
    subs = [Submodule(layer, k) for layer in range(3) for k in ("attn", "mlp", "resid")][:n_sites]
    example = ExampleRecord(prompt_tokens=[f"w{i}" for i in range(15)], answer="w0", wrong_answer="w1")
    record = CircuitRecord(
        task="synthetic", metric="logit_diff", total_effect=-8.0, position_labels=labels, example=example
    )
    g = attach(nx.DiGraph(), record)
    by_site, cards = [], {}
    for sub in subs:
        site = Site(sub, 14, labels[14])
        ids = []
        for i in range(n_features // n_sites):
            node = Node(site, i)
            g.add_node(node.id, **node.attrs(-abs(rng.gauss(0, 0.1)), rng.random()))
            ids.append(node.id)
            tokens = [f"w{rng.randrange(300)}" for _ in range(13)]
            cards[node.feature] = FeatureCard(
                sub.hook,
                i,
                [{"tokens": tokens, "index": 6, "activation": 3.0}] * 8,
                [rng.randrange(100) for _ in range(20)],
                5.0,
                0.05,
                [(f"w{j}", 0.5) for j in range(5)],
                [(f"w{j}", -0.5) for j in range(5)],
            )
        by_site.append(ids)
    g.add_node(METRIC, effect=-8.0, kind="metric", latent=None, is_error=False)
    for s, ids in enumerate(by_site):
        for u in ids:
            targets = [METRIC] if s == len(by_site) - 1 else rng.sample(by_site[s + 1], 4)
            for v in targets:
                g.add_edge(u, v, weight=rng.gauss(0, 0.05))
    return g, cards


def demo(circuit: Path) -> tuple[nx.DiGraph, dict]:
    from circuits.circuit.graph import load_graph
    from circuits.export.cards import feature_cards, latent_keys
    from circuits.loaders import load_model, load_saes

    graph = load_graph(circuit)
    model = load_model("toy", progress=False)
    saes = load_saes("toy", model, progress=False)
    return graph, feature_cards(model, saes, latent_keys(graph))


def measure(report: Path, repeats: int) -> tuple[float, float, int]:
    """Median time to first render and to expanding every site (ms), and elements drawn then."""
    from playwright.sync_api import sync_playwright

    first, expand, count = [], [], 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox", "--disable-gpu"])
        for _ in range(repeats):
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(report.as_uri())
            page.wait_for_function("window.circuitViewer !== undefined")
            first.append(page.evaluate("window.circuitViewer.readyAt"))
            expand.append(
                page.evaluate(
                    "(() => { const t = performance.now(); document.getElementById('expand-all').click();"
                    " return performance.now() - t; })()"
                )
            )
            count = page.evaluate("window.circuitViewer.cy.elements().length")
            page.close()
        browser.close()
    return statistics.median(first), statistics.median(expand), count


def main() -> None:
    from circuits.export.report import write_report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--circuit", default=str(ROOT / "outputs/ioi/circuit.json"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cases = [("synthetic, 2,000 features", *synthetic())]
    if Path(args.circuit).is_file():
        cases.insert(0, (f"{args.circuit} (demo)", *demo(Path(args.circuit))))
    print("| circuit | features | edges | report.html | time to first render | expand all sites (elements drawn) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, graph, cards in cases:
            report = write_report(Path(tmp) / "report.html", graph, cards=cards)
            first, expand, count = measure(report, args.repeats)
            n = sum(1 for _, a in graph.nodes(data=True) if a.get("latent") is not None)
            print(
                f"| {name} | {n} | {graph.number_of_edges()} | {report.stat().st_size / 1e6:.2f} MB | "
                f"{first:.0f} ms | {expand:.0f} ms ({count}) |"
            )


if __name__ == "__main__":
    main()
