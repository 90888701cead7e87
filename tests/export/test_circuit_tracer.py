"""Our circuit-tracer export against circuit-tracer itself: its pydantic graph models, and its
frontend rendering the export in headless Chromium (its own request handler serving the
folder on 127.0.0.1; the CDN scripts its page loads come from their npm packages, cached)."""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import shutil
import subprocess
import tarfile
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from circuits.circuit.record import record_of
from circuits.core.vocab import Latent
from circuits.export.circuit_tracer import to_circuit_tracer, view_query, write_circuit_tracer
from tests.helpers import EXAMPLE_TOKENS, card, example_graph, families_graph, nasty_graph

MISSING = "circuit-tracer is not installed (make test installs it: pip install --no-deps circuit-tracer==0.5.0)"

# The scripts circuit-tracer's index.html loads from CDNs, each made of parts: (npm package,
# file in it) or JS text. transformer-circuits.pub's d3.js and jetpack are d3 v7 and d3-jetpack
# (selection.appendMany / .at / .st, d3.nestBy, d3.conventions). d3-jetpack's own d3v7 bundle
# holds two copies of d3-selection (jetpack extends the one d3.select does not return), so
# jetpack's CommonJS build is run against the page's d3 instead, d3-collection (its d3.nest)
# first, and conventions() gets the CDN version's c.drawAxis(svg). The live-reload client
# and the .npy reader are not libraries the graph page needs.
NPM = {"d3": "7.9.0", "d3-collection": "1.0.7", "d3-jetpack": "2.3.0", "dagre": "0.8.5", "pako": "2.1.0"}
LIB = "https://transformer-circuits.pub/2025/attribution-graphs/static_js/lib/"
REQUIRE_D3 = "(function () { var module = {exports: {}}, exports = module.exports, require = () => window.d3;\n"
EXPORT_NEW = """
for (var k in module.exports) if (!(k in window.d3)) window.d3[k] = module.exports[k]
var conventions = d3.conventions  // the CDN's jetpack also gives c.drawAxis(svg)
d3.conventions = c => Object.assign((c = conventions(c)), {drawAxis: svg => d3.drawAxis({...c, svg: svg || c.svg})})
})()
"""
CDN: dict[str, list[tuple[str, str] | str]] = {
    LIB + "d3.js": [("d3", "dist/d3.js")],
    LIB + "jetpack_2024-07-20.js": [
        ("d3-collection", "dist/d3-collection.js"),
        REQUIRE_D3,
        ("d3-jetpack", "build/d3-jetpack.cjs"),
        EXPORT_NEW,
    ],
    LIB + "hotserver-client-ws.js": ["/* live-reload client for frontend development: not needed */"],
    LIB + "npy_v0.js": ["/* .npy reader: only the addition page reads .npy files */"],
    "https://unpkg.com/dagre@0.8.5/dist/dagre.min.js": [("dagre", "dist/dagre.min.js")],
    "https://unpkg.com/pako@2.1.0/dist/pako.min.js": [("pako", "dist/pako.min.js")],
}


@pytest.fixture(scope="session")
def ct_dir() -> Path:
    """circuit-tracer's package folder (found without importing it)."""
    spec = importlib.util.find_spec("circuit_tracer")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(MISSING)
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="session")
def models(ct_dir):
    """circuit_tracer.frontend.graph_models (pydantic only; the package imports lazily)."""
    return pytest.importorskip("circuit_tracer.frontend.graph_models", reason=MISSING)


@pytest.fixture(scope="session")
def npm_packages() -> Path:
    """The npm packages of ``NPM``, unpacked once under the cache folder (npm pack)."""
    from circuits.loaders import default_cache_dir

    cache = default_cache_dir() / "npm"
    for name, version in NPM.items():
        folder = cache / f"{name}-{version}"
        if (folder / "package" / "package.json").is_file():
            continue
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip(f"npm is not installed: the frontend's scripts ({name}@{version}) cannot be fetched")
        cache.mkdir(parents=True, exist_ok=True)
        try:
            done = subprocess.run(
                [npm, "pack", f"{name}@{version}", "--pack-destination", str(cache), "--silent"],
                capture_output=True,
                text=True,
                timeout=120,
            )
        except subprocess.TimeoutExpired:
            pytest.skip(f"npm pack {name}@{version} timed out (no registry?)")
        tgz = cache / (done.stdout.strip().splitlines() or ["?"])[-1]
        if done.returncode or not tgz.is_file():
            pytest.skip(f"npm pack {name}@{version} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
        with tarfile.open(tgz) as tar:
            tar.extractall(folder, filter="data")
        tgz.unlink()
    return cache


@pytest.fixture
def served(ct_dir, tmp_path):
    """A function: write ``graph`` with ``write_circuit_tracer`` into a folder and serve it
    with circuit-tracer's frontend (its own request handler) on 127.0.0.1; returns the URL."""
    local_server = pytest.importorskip("circuit_tracer.frontend.local_server", reason=MISSING)
    data = tmp_path / "graphs"
    handler = functools.partial(
        local_server.CircuitGraphHandler, frontend_dir=ct_dir / "frontend" / "assets", data_dir=str(data)
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def serve(graph, slug, **kwargs):
        write_circuit_tracer(graph, data, slug=slug, **kwargs)
        query = view_query(json.loads((data / f"{slug}.json").read_text()))
        return f"http://127.0.0.1:{server.server_address[1]}/index.html?{query}"

    yield serve
    server.shutdown()
    server.server_close()


def test_export_validates_against_circuit_tracer_models(models, tmp_path):
    cards = {Latent("blocks.0.hook_mlp_out", 5): card()}
    for graph in (example_graph(), nasty_graph()):
        data = to_circuit_tracer(graph, cards=cards)
        model = models.Model.model_validate(data)
        assert len(model.nodes) == len(data["nodes"]) and len(model.links) == len(data["links"])
        for link in data["links"]:
            models.Link.model_validate(link)
    files = write_circuit_tracer(example_graph(), tmp_path, cards, slug="a")
    write_circuit_tracer(nasty_graph(), tmp_path, cards, slug="b")
    assert [f.name for f in files] == ["a.json", "graph-metadata.json"]
    graphs = json.loads((tmp_path / "graph-metadata.json").read_text())["graphs"]
    assert [models.Metadata.model_validate(g).slug for g in graphs] == ["a", "b"]


def test_features_are_cantor_paired_like_circuit_tracer(models):
    data = to_circuit_tracer(example_graph())
    for node in data["nodes"]:
        if node["feature_type"] == "cross layer transcoder":
            latent = int(node["node_id"].split("/")[1].split("@")[0])
            assert node["feature"] == models._cantor_pairing(int(node["layer"]), latent)


def test_export_command_writes_the_folder(tmp_path, capsys):
    from circuits.circuit.graph import save_graph
    from circuits.cli import main

    circuit = save_graph(example_graph(), tmp_path / "run" / "circuit.json")
    args = ["export", "--circuit", str(circuit), "--format", "circuit-tracer", "--no-descriptions"]
    assert main(args) == 0  # default: circuit-tracer/ beside the circuit, the task's name
    folder = tmp_path / "run" / "circuit-tracer"
    assert capsys.readouterr().out.split() == [str(folder / "ioi.json"), str(folder / "graph-metadata.json")]
    assert main([*args, "--out", str(tmp_path / "ct"), "--slug", "ioi-2"]) == 0
    assert json.loads((tmp_path / "ct" / "ioi-2.json").read_text())["metadata"]["slug"] == "ioi-2"
    capsys.readouterr()
    assert main([*args, "--slug", "../x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("circuits: error: slug '../x': use") and len(err.strip().splitlines()) == 1


def _route_cdn(page, ct_dir, npm_packages) -> None:
    """circuit-tracer's CDN scripts answered from the npm packages, offline."""
    html = (ct_dir / "frontend" / "assets" / "index.html").read_text()
    scripts = set(re.findall(r"<script src='(https?://[^']+)'", html))
    assert scripts == set(CDN), f"circuit-tracer's page loads other CDN scripts: {scripts ^ set(CDN)}"
    for url, parts in CDN.items():
        body = "\n".join(
            part
            if isinstance(part, str)
            else (npm_packages / f"{part[0]}-{NPM[part[0]]}" / "package" / part[1]).read_text()
            for part in parts
        )
        page.route(url, functools.partial(_fulfil, body=body))


def test_circuit_tracer_frontend_draws_families_as_supernodes(page, served, npm_packages, ct_dir, tmp_path):
    _route_cdn(page, ct_dir, npm_packages)
    graph = families_graph()
    page.goto(served(graph, "ioi-families"))
    try:
        page.wait_for_function("document.querySelectorAll('.supernode-container').length > 0", timeout=15_000)
    except Exception as err:  # Playwright's TimeoutError: say what the page said
        pytest.fail(f"the subgraph was not drawn ({type(err).__name__}); page problems: {page.problems}")
    page.wait_for_timeout(300)
    page.screenshot(path=str(tmp_path / "circuit-tracer-families.png"))
    drawn = page.evaluate(
        """() => [...document.querySelectorAll('.supernode-container')].map(d => ({
            text: d.textContent, members: d.querySelectorAll('.member-circles > .member-circle').length}))"""
    )
    families = record_of(graph).hierarchy.families
    for f in families:  # one box per family, labelled with its id and name, holding its members
        box = next((d for d in drawn if f"{f.id} {f.name}" in d["text"]), None)
        assert box is not None, f"{f.id} is not drawn: {[d['text'] for d in drawn]}"
        assert box["members"] == len(f.members)
    assert len(drawn) == len(families)
    assert page.problems == []


def test_circuit_tracer_frontend_renders_the_export(page, served, npm_packages, ct_dir, tmp_path):
    _route_cdn(page, ct_dir, npm_packages)

    graph = example_graph()
    cards = {Latent("blocks.0.hook_mlp_out", 5): card()}
    data = to_circuit_tracer(graph, cards=cards, slug="ioi-test")
    page.goto(served(graph, "ioi-test", cards=cards))
    try:
        page.wait_for_function(
            "document.querySelectorAll('.link-graph text.node').length > 0"
            " && document.querySelectorAll('.node-connections .feature-row').length > 0",
            timeout=15_000,
        )
    except Exception as err:  # Playwright's TimeoutError: say what the page said
        pytest.fail(f"the graph was not drawn ({type(err).__name__}); page problems: {page.problems}")
    page.wait_for_timeout(300)  # debounced renders settle
    page.screenshot(path=str(tmp_path / "circuit-tracer.png"))
    shutil.copy(tmp_path / "circuit-tracer.png", "/tmp/ct_shot.png")
    assert page.problems == []

    drawn = page.evaluate(
        """() => ({
        nodes: document.querySelectorAll('.link-graph text.node').length,
        tokens: [...document.querySelectorAll('.link-graph g.prompt-token text')].map(t => t.textContent),
        inputs: document.querySelectorAll('.node-connections .features.input .feature-row').length,
        title: document.querySelector('.node-connections .feature-title')?.textContent,
        labels: [...document.querySelectorAll('.link-graph text')].map(t => t.textContent),
        options: [...document.querySelectorAll('select.graph-prompt-select option')].map(o => o.textContent),
        slider: document.querySelector('.slider-container input')?.max,
    })"""
    )
    assert drawn["nodes"] == len(data["nodes"]) == len(graph) - 1 + 14 + 2  # + embeddings, 2 logits
    assert drawn["tokens"] == EXAMPLE_TOKENS  # one embedding per token: every token on the axis
    into_metric = [link for link in data["links"] if link["target"] == "metric" and link["weight"]]
    assert drawn["inputs"] == len(into_metric) == 2
    assert drawn["title"] == 'Output "Mary" (p=0.734)'
    assert {"Mary", "John"} <= set(drawn["labels"])  # the logit axis
    assert drawn["options"] and "Mary" in drawn["options"][0] and float(drawn["slider"]) == 1.0


def _fulfil(route, body: str):
    route.fulfill(status=200, content_type="application/javascript", body=body)
