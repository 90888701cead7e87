"""The HTML report: text from the data escaped, and rendered in headless Chromium."""

import shutil
import subprocess

import networkx as nx
import pytest

from circuits.graph import METRIC
from circuits.pictures import draw_graph
from circuits.report import write_report
from tests.helpers import card, nasty_graph


def test_empty_circuit_is_named(tmp_path):
    g = nx.DiGraph(task="ioi", metric="logit_diff", total_effect=0.1)
    g.add_node(METRIC, effect=0.1, kind="metric", layer=4)
    html = write_report(tmp_path / "r.html", g).read_text()
    assert "The circuit is empty" in html


def test_report_escapes_text(tmp_path):
    html = write_report(tmp_path / "r.html", nasty_graph(), cards={("blocks.0.hook_mlp_out", 5): card()}).read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "&lt;/div&gt;" in html  # a token that looks like markup stays text
    assert "say &quot;hi&quot; &lt;b&gt;&amp;amp;" in html


def test_report_shows_both_levels_of_a_hierarchical_circuit(tmp_path):
    g = nasty_graph()

    def level(n, f, reached):
        return {
            "n_nodes": n,
            "n_error_nodes": 2,
            "faithfulness": f,
            "completeness": 0.05,
            "random_faithfulness": 0.01,
            "reached_target": reached,
            "ranking": "optimised",
        }

    g.graph["hierarchy"] = {
        "ablation": "counterfactual",
        "start_layer": 1,
        "target": 0.9,
        "n_held_out": 64,
        "sites": [{"id": "blocks.0.hook_mlp_out@<END>"}],
        "site_level": level(7, 0.97, True),
        "attribution": level(900, 0.91, True),
        "optimised": level(412, 0.902, True),
        "feature_level": level(412, 0.902, True),
    }
    html = write_report(tmp_path / "r.html", g).read_text()
    assert "Hierarchical circuit: counterfactual ablation, layers below 1 never ablated" in html
    assert "412 latents + 2 errors" in html and "0.902" in html and "0.970" in html
    assert "blocks.0.hook_mlp_out@&lt;END&gt;" in html  # site ids escaped


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it when it can)")
def test_report_renders_in_headless_chromium(tmp_path):
    svg_dir = tmp_path / "g"
    draw_graph(nasty_graph(), svg_dir / "graph", ("svg", "png"))
    svg = (svg_dir / "graph.svg").read_text() if (svg_dir / "graph.svg").exists() else None
    report = write_report(
        tmp_path / "report.html",
        nasty_graph(),
        svg[svg.index("<svg") :] if svg else None,
        cards={("blocks.0.hook_mlp_out", 5): card()},
        faithfulness_png=svg_dir / "graph.png",
    )
    shot = tmp_path / "shot.png"
    run = subprocess.run(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            f"--screenshot={shot}",
            "--window-size=1200,1600",
            report.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 10_000
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    dom = subprocess.run(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--dump-dom", report.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "Feature circuit:" in dom and "<svg" in dom and "Feature cards" in dom
