"""The HTML report: text from the data escaped, and rendered in headless Chromium."""

import networkx as nx

from circuits.circuit.graph import METRIC
from circuits.circuit.record import CircuitRecord, HierarchyRecord, attach
from circuits.core.vocab import Latent
from circuits.export.pictures import draw_graph
from circuits.export.report import write_report
from sae.interpret import LatentConcept, Readability
from sae.splitting import Split
from tests.helpers import card, nasty_graph, with_record


def test_empty_circuit_is_named(tmp_path):
    g = attach(nx.DiGraph(), CircuitRecord(task="ioi", metric="logit_diff", total_effect=0.1))
    g.add_node(METRIC, effect=0.1, kind="metric", layer=4)
    html = write_report(tmp_path / "r.html", g).read_text()
    assert "The circuit is empty" in html


def test_report_escapes_text(tmp_path):
    html = write_report(
        tmp_path / "r.html", nasty_graph(), cards={Latent("blocks.0.hook_mlp_out", 5): card()}
    ).read_text()
    # the viewer's three scripts (library, data, code) are the only ones; the card's "<script>" is text
    assert html.count("<script") == 3 and "&lt;script&gt;" in html
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

    hierarchy = {
        "ablation": "counterfactual",
        "start_layer": 1,
        "target": 0.9,
        "m_model": 2.0,
        "m_empty": 0.1,
        "n_held_out": 64,
        "features": [],
        "sites": [
            {"id": "blocks.0.hook_mlp_out@<END>", "hook": "blocks.0.hook_mlp_out", "position": 1, "label": "<END>"}
        ],
        "site_level": level(7, 0.97, True),
        "attribution": level(900, 0.91, True),
        "optimised": level(412, 0.902, True),
        "feature_level": level(412, 0.902, True),
    }
    with_record(g, hierarchy=HierarchyRecord.from_dict(hierarchy))
    html = write_report(tmp_path / "r.html", g).read_text()
    assert "Hierarchical circuit: counterfactual ablation, layers below 1 never ablated" in html
    assert "412 latents + 2 errors" in html and "0.902" in html and "0.970" in html
    assert "blocks.0.hook_mlp_out@&lt;END&gt;" in html  # site ids escaped


def test_report_renders_in_headless_chromium(page, tmp_path):
    svg_dir = tmp_path / "g"
    draw_graph(nasty_graph(), svg_dir / "graph", ("svg", "png"))
    svg = (svg_dir / "graph.svg").read_text() if (svg_dir / "graph.svg").exists() else None
    report = write_report(
        tmp_path / "report.html",
        nasty_graph(),
        svg[svg.index("<svg") :] if svg else None,
        cards={Latent("blocks.0.hook_mlp_out", 5): card()},
        faithfulness_png=svg_dir / "graph.png",
        readability=Readability(
            0.25, 0.5, 0.25, 0.8, 0.1, [LatentConcept("blocks.0.hook_mlp_out/5@<END>", 0.3, "copy=<name>", 0.9, 1, 0.8)]
        ),
        split=(
            "blocks.0.hook_mlp_out",
            Split(64, 5, children=[Split(256, 70, 0.91, 0.8, concept="copied=Mary", f1=0.85)]),
        ),
    )
    page.goto(report.as_uri())
    page.wait_for_function("window.circuitViewer !== undefined")
    shot = page.screenshot(path=str(tmp_path / "shot.png"), full_page=True)
    assert shot[:4] == b"\x89PNG" and len(shot) > 10_000
    assert page.problems == []
    text = page.locator("body").inner_text()
    assert "Feature circuit:" in text and "Feature cards" in text
    assert "Of the circuit's |effect|: 25% in latents matched to a concept" in text
    assert "blocks.0.hook_mlp_out/5@<END>" in text and "copy=<name>" in text  # escaped, shown as text
    assert "latent 5 across widths 64 → 256" in text
    assert page.locator("ul.split li li").inner_text().startswith("width 256 · latent 70 — copied=Mary (F1 0.85)")
    assert page.locator("details svg").count() == (1 if svg else 0)  # the static picture, folded away
    assert page.evaluate("window.circuitViewer.cy.nodes('.site').length") == 5


def test_report_opens_with_the_account_and_shows_the_families(tmp_path, page):
    from circuits.circuit.families import ActiveFamily
    from circuits.circuit.record import record_of
    from circuits.export.account import circuit_account
    from tests.helpers import families_graph

    g = families_graph()
    account = circuit_account(record_of(g))
    h = record_of(g).hierarchy
    assert account[0].startswith(f"The circuit of ioi (logit_diff: Mary vs John) runs through {len(h.sites)} sites")
    assert f"latents form {len(h.families)} families" in account[2] and "the 3 strongest give 0.92" in account[2]
    assert account[3].startswith("F1, IO identity at L0 mlp@END, supports (4 latents, effect -1.80): it supports")
    assert "1.05x their recorded effect" in account[3] and "on 80% of prompts (other latents: 5%)" in account[3]
    assert circuit_account(record_of(nasty_graph())) == []  # no hierarchy, nothing to tell
    active = [
        ActiveFamily("F1", "IO identity at L0 mlp@END, supports", -0.9, [("blocks.0.hook_mlp_out/10@END", 2.0, -0.6)])
    ]
    path = write_report(tmp_path / "r.html", g, prompt=("Mary and John <went>", active))
    page.goto(path.as_uri())
    text = page.locator("body").inner_text()
    assert text.index(account[0]) < text.index("Circuit graph")  # the account comes first
    table = page.locator("h2:has-text('Feature families') + p + table")
    assert table.locator("tr").count() == 1 + len(h.families)
    assert "IO (0.90)" in table.inner_text() and "80% (5%)" in table.inner_text()
    assert "One prompt: Mary and John <went>" in text and "10@END (-0.600)" in text
    assert page.problems == []


def test_report_shows_edits_side_by_side(tmp_path, page):
    from circuits.circuit.edit import Collateral, Completion, Edit, EditReport, FeatureEdit, TaskChange, TextChange
    from circuits.circuit.evaluate import TaskScore

    def report(description, n, moved, left, kl, random=None):
        before, after = TaskScore(1.0, 8.0, 0.0), TaskScore(0.5, 8.0 * left, 0.0)
        tasks = {"ioi": TaskChange(before, after, moved, left), "sva": TaskChange(before, before, 0.01)}
        text = [TextChange("all", 100, 1.5, 1.5 + kl, kl)]
        edit = Edit([FeatureEdit("blocks.0.hook_mlp_out", i) for i in range(n)], description)
        completions = [Completion("Mary and John <went>", "Mary", "John")] if random else []
        return EditReport(edit, "ioi", tasks, completions, Collateral(-moved, 0.01, -moved - 0.01, text), random)

    top = report("top 100 <features>", 100, -1.01, 0.01, 0.51, report("random", 100, 0.02, 1.0, 0.04))
    searched = report("optimised: 12 latents", 12, -0.96, 0.06, 0.03, report("random", 12, -0.03, 0.98, 0.01))
    path = write_report(tmp_path / "r.html", nasty_graph(), edits=[top, searched])
    page.goto(path.as_uri())
    table = page.locator("h2:has-text('Editing the model: ioi') + p + table")
    rows = table.locator("tr")
    assert rows.count() == 3
    assert rows.nth(0).inner_text().split("\t")[:5] == ["edit", "latents", "ioi moved", "left", "sva moved"]
    assert rows.nth(1).inner_text().split("\t") == [
        "top 100 <features>",
        "100",
        "-101.0%",
        "1.0%",
        "+1.0%",
        "+1.000",
        "-0.030",
        "0.5100",
        "0.0400",
    ]
    assert rows.nth(2).inner_text().split("\t")[:4] == ["optimised: 12 latents", "12", "-96.0%", "6.0%"]
    assert page.locator("h3:has-text('top 100 <features>: greedy completions')").count() == 1
    assert page.problems == []
