"""The interactive viewer of report.html: its data, and real clicks, hovers and slider moves in
headless Chromium (offline, no console errors)."""

import json
from dataclasses import replace

import pytest

from circuits.circuit.record import LevelRecord, record_of
from circuits.core.vocab import Latent
from circuits.export.report import write_report
from circuits.export.viewer import viewer_data, viewer_html
from tests.helpers import card, families_graph, hierarchical_graph, with_record

MLP_SITE = "blocks.0.hook_mlp_out@END"


def _level(n: int, errors: int, f: float, curve: list[tuple]) -> LevelRecord:
    return LevelRecord.from_dict(
        {
            "ranking": "optimised",
            "n_nodes": n,
            "n_error_nodes": errors,
            "faithfulness": f,
            "completeness": 0.0,
            "random_faithfulness": 0.02,
            "reached_target": f >= 0.9,
            "curve": [
                {"n_nodes": k, "n_error_nodes": e, "faithfulness": fk, "random_faithfulness": r}
                for k, e, fk, r in curve
            ],
        }
    )


def _graph():
    """The small hierarchical circuit with faithfulness curves at both levels."""
    g = hierarchical_graph()
    optimised = _level(9, 3, 0.91, [(1, 0, 0.0, 0.0), (5, 2, 0.5, 0.01), (9, 3, 0.91, 0.05)])
    h = replace(
        record_of(g).hierarchy,
        target=0.9,
        site_level=_level(5, 0, 0.97, [(1, 0, 0.1, 0.0), (3, 0, 0.6, 0.0), (5, 0, 0.97, 0.0)]),
        optimised=optimised,
        feature_level=optimised,
    )
    return with_record(g, hierarchy=h)


def _cards():
    return {Latent("blocks.0.hook_mlp_out", 10 + i): card("blocks.0.hook_mlp_out", 10 + i) for i in range(6)}


def test_viewer_data_lays_out_every_site_on_the_token_grid():
    data = viewer_data(_graph(), _cards())
    ids = [s["id"] for s in data["sites"]]
    assert len(ids) == len(set(ids)) == 7  # five skeleton sites (one with no node) and two embeddings
    assert "blocks.1.hook_mlp_out@END" in ids
    assert data["rows"] == ["embeddings", "L0 attn", "L0 mlp", "L1 mlp", "L1 resid"]  # forward order, bottom up
    assert [(c["token"], c["slot"]) for c in data["columns"]] == [("Mary", "A"), ("John", "S2"), ("to", "END")]
    site = data["sites"][ids.index(MLP_SITE)]
    assert (data["rows"][site["row"]], data["columns"][site["col"]]["slot"]) == ("L0 mlp", "END")
    members = [n for n in data["nodes"] if n["site"] == ids.index(MLP_SITE)]
    assert sorted(n["latent"] for n in members if n["kind"] == "feature") == list(range(10, 16))
    assert [n["kind"] for n in members].count("error") == 1
    assert all(n["card"] == f"blocks.0.hook_mlp_out/{n['latent']}" for n in members if n["kind"] == "feature")
    metric_edges = [e for e in data["edges"] if e[1] == -1]
    assert sorted(w for *_, w in metric_edges) == [-1.8, -0.1]
    assert [c["name"] for c in data["curves"]] == ["sites, attribution", "features, optimised"]
    assert data["curves"][1]["points"][-1] == [12, 0.91, 0.05] and data["curves"][1]["chosen"] == 12
    assert data["metric"] == "logit_diff: Mary vs John"


def test_viewer_html_cannot_be_closed_by_the_data():
    html = viewer_html(_graph(), _cards())
    payload = html.split('id="circuit-data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in payload  # a card's "</div>" and "<script>" stay data
    assert json.loads(payload)["cards"]["blocks.0.hook_mlp_out/10"]["contexts"][0]["tokens"][2] == "</div>"
    assert "cytoscape.js 3.34.4 (MIT licence" in html and "Copyright (c) 2016-2026, The Cytoscape Consortium" in html
    assert "https://" not in html.replace("https://js.cytoscape.org", "")  # nothing to fetch


@pytest.fixture
def report(tmp_path):
    return write_report(tmp_path / "report.html", _graph(), cards=_cards())


def _count(page, selector: str) -> int:
    return page.evaluate(f"window.circuitViewer.cy.elements({json.dumps(selector)}).length")


def _click(page, element_id: str) -> None:
    """A real mouse click at the element's place on the canvas."""
    box = page.locator("#cy").bounding_box()
    at = page.evaluate("id => window.circuitViewer.cy.getElementById(id).renderedPosition()", element_id)
    page.mouse.click(box["x"] + at["x"], box["y"] + at["y"])
    page.wait_for_timeout(100)


def _site(page, site_id: str) -> str:
    return page.evaluate(
        "id => window.circuitViewer.cy.nodes('.site').filter(n => "
        "window.circuitViewer.data.sites[n.data('index')].id === id)[0].id()",
        site_id,
    )


def test_viewer_expands_a_site_opens_a_card_and_filters_edges(page, report, tmp_path):
    page.goto(report.as_uri())
    page.wait_for_function("window.circuitViewer !== undefined")
    assert _count(page, "node.site") == 7 and _count(page, "node.feature") == 0
    assert page.locator("#curves svg").count() == 2
    page.screenshot(path=str(tmp_path / "viewer-collapsed.png"))

    mlp = _site(page, MLP_SITE)
    _click(page, mlp)  # expand: its six latents and its error term appear inside it
    assert _count(page, "node.feature") == 6 and _count(page, "node.error") == 1
    assert page.evaluate(f"window.circuitViewer.cy.getElementById('{mlp}').isParent()")
    assert MLP_SITE in page.locator("#card").inner_text()

    feature = page.evaluate(
        "window.circuitViewer.cy.nodes('.feature').filter(n => "
        "window.circuitViewer.data.nodes[n.data('index')].latent === 10)[0].id()"
    )
    page.evaluate(f"void window.circuitViewer.cy.center(window.circuitViewer.cy.getElementById('{feature}'))")
    page.mouse.move(0, 0)
    box = page.locator("#cy").bounding_box()
    at = page.evaluate(f"window.circuitViewer.cy.getElementById('{feature}').renderedPosition()")
    page.mouse.move(box["x"] + at["x"], box["y"] + at["y"])  # hover: id and values
    page.wait_for_timeout(100)
    assert page.locator("#tip").is_visible() and "blocks.0.hook_mlp_out/10@END" in page.locator("#tip").inner_text()
    _click(page, feature)  # the card: contexts with the token highlighted, histogram, promoted tokens
    card_text = page.locator("#card").inner_text()
    assert "blocks.0.hook_mlp_out/10@END" in card_text and "promotes: <script> (+0.500)" in card_text
    assert page.locator("#card .hi").first.inner_text() == 'say "hi" <b>&amp; \\ back\\slash'
    assert page.locator("#card svg rect").count() == 3
    page.locator("#viewer").screenshot(path=str(tmp_path / "viewer-card.png"))

    before = _count(page, "edge:visible")
    slider = page.locator("#edge-filter").bounding_box()  # click the slider's track at 60 %
    page.mouse.click(slider["x"] + 0.6 * slider["width"], slider["y"] + slider["height"] / 2)
    threshold = float(page.locator("#edge-value").inner_text())
    page.wait_for_function(f"window.circuitViewer.cy.edges(':visible').length < {before}", timeout=5000)
    weights = page.evaluate("window.circuitViewer.cy.edges(':visible').map(e => Math.abs(e.data('weight')))")
    assert 0 < threshold and 0 < len(weights) < before and min(weights) >= threshold
    assert f"{len(weights)} edges shown" in page.locator("#viewer-status").inner_text()

    effect = page.locator("#effect-filter").bounding_box()  # hides the site's weaker latents
    page.mouse.click(effect["x"] + 0.45 * effect["width"], effect["y"] + effect["height"] / 2)
    assert 0 < _count(page, "node.feature") < 6
    _click(page, mlp)  # collapse again
    assert _count(page, "node.feature") == 0
    page.screenshot(path=str(tmp_path / "viewer-filtered.png"))
    assert (tmp_path / "viewer-card.png").stat().st_size > 10_000
    assert page.problems == []


def test_viewer_data_carries_the_families():
    g = families_graph()
    data = viewer_data(g)
    names = [f["name"] for f in data["families"]]
    assert names == [f.name for f in record_of(g).hierarchy.families]
    f1 = data["families"][0]
    assert data["sites"][f1["site"]]["id"] == MLP_SITE
    assert sorted(data["nodes"][j]["id"] for j in f1["members"]) == sorted(record_of(g).hierarchy.families[0].members)
    assert all(data["nodes"][j]["family"] == 0 for j in f1["members"])
    loose = {n["id"] for n in data["nodes"] if n["kind"] == "feature" and n["family"] is None}
    assert loose == {"blocks.0.hook_attn_out/8@A", "blocks.1.hook_resid_post/3@END"}  # in no family


def _family(page, name: str) -> str:
    return page.evaluate(
        "name => window.circuitViewer.cy.nodes('.family').filter(n => "
        "window.circuitViewer.data.families[n.data('index')].name === name)[0].id()",
        name,
    )


def test_viewer_expands_a_site_into_families_and_a_family_into_its_latents(page, tmp_path):
    path = write_report(tmp_path / "report.html", families_graph(), cards=_cards())
    page.goto(path.as_uri())
    page.wait_for_function("window.circuitViewer !== undefined")
    mlp = _site(page, MLP_SITE)
    _click(page, mlp)  # the site shows its two families (collapsed) and its error term
    assert _count(page, "node.family") == 2 and _count(page, "node.feature") == 0 and _count(page, "node.error") == 1
    io = _family(page, "IO identity at L0 mlp@END, supports")
    _click(page, io)  # the family opens: its four latents inside it
    assert _count(page, "node.feature") == 4
    assert page.evaluate(f"window.circuitViewer.cy.getElementById('{io}').children().length") == 4
    assert page.evaluate(f"window.circuitViewer.cy.getElementById('{io}').parent().id()") == mlp
    card_text = page.locator("#card").inner_text()
    assert "F1: IO identity at L0 mlp@END, supports" in card_text and "4 latents, 4 of them in the feature" in card_text
    assert "tracks IO" in card_text and "ablation ratio (patched together / recorded effect): 1.05" in card_text
    assert "flips the answer on 80% of held-out prompts (other latents of the site: 5%)" in card_text
    assert "members: #10, #11, #12, #13" in card_text
    # the family's edges attach to its latents now; collapsed, they attach to the family
    assert page.evaluate("window.circuitViewer.cy.edges().filter(e => e.source().hasClass('feature')).length") > 0
    page.locator("#viewer").screenshot(path=str(tmp_path / "viewer-family.png"))
    _click(page, io)  # and closes again
    assert _count(page, "node.feature") == 0 and _count(page, "node.family") == 2
    edges = page.evaluate("window.circuitViewer.cy.edges().map(e => e.source().id())")
    assert io in edges
    box = page.locator("#cy").bounding_box()  # the site's own padding, beside its families
    page.evaluate(f"void window.circuitViewer.cy.center(window.circuitViewer.cy.getElementById('{mlp}'))")
    edge = page.evaluate(f"window.circuitViewer.cy.getElementById('{mlp}').renderedBoundingBox()")
    page.mouse.click(box["x"] + edge["x1"] + 5, box["y"] + edge["y2"] - 5)
    page.wait_for_timeout(100)
    assert _count(page, "node.family") == 0
    assert page.problems == []
