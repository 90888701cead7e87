"""Published SAE releases, offline, end to end at their real shapes: for each release a
random stand-in (sae/standins.py) — SAEs with the release's config (hook, architecture,
normalisation flags, real width) written into a Hugging Face hub cache laid out as the
release's repository, encoder biases calibrated so that about 32 latents fire per token — on a
random model of the release's model's shape, then ``discover -> validate -> export -> edit``.

GPT-2 and Pythia releases run as a user runs them: each step a fresh ``python -m circuits.cli``
process with ``--model gpt2 --saes gpt2-small-res-jb`` (the model a random ``transformers``
model of the real shape in the same cache), the hub unreachable (``HF_ENDPOINT`` refuses
connections; ``HF_HUB_CACHE`` is the stand-ins' cache). Gemma Scope runs through the Python API
in one process: TransformerLens takes Gemma-2's config from the model's name, so ``--model``
cannot name a stand-in; its SAEs are still read by sae-lens's ``gemma_2`` loader from
``params.npz`` files at the real d_in (2,304) and width (16,384).

Measured per release: seconds per step (wall clock), peak resident memory (the kernel's
``ru_maxrss`` of each step's process, from ``os.wait4``; for Gemma Scope the one process's,
from ``resource.getrusage``; the stand-ins are written by a separate process, so that this
one stays small: Linux carries a forked process's resident memory at the fork into its peak),
the circuit's nodes (latents + error terms) and edges, F of the discovered circuit
(``circuits validate``: mean ablation over the task's clean prompts, held-out prompts = seed
1), and the site-level F: the smallest set of sites (a submodule at a position, all its
latents and error) ranked by AtP whose F reaches 0.9 on the held-out prompts, mean ablation —
the first level of ``discover --target-faithfulness``, computed with circuits.circuit.hierarchy's
functions. (The second level, features inside the sites, is not run: random SAEs have no
sparse circuit, so it keeps tens of thousands of latents and its edges take far longer than
this benchmark's budget.) F = (m(circuit) - m(all ablated)) / (m(model) - m(all ablated)): on
random weights the denominator (printed) can be near 0 — ablating a few random SAEs barely
moves the metric — and F then far from [0, 1]; the numbers show the pipeline runs, not what
the real releases' circuits are. Export writes the circuit-tracer folder without feature cards unless
``--cards`` (cards run the model and the circuit's SAEs over 16k corpus tokens: minutes and
gigabytes at these widths). Prints a markdown table.

Run: ``.venv/bin/python benchmarks/releases.py [--only RELEASE ...] [--n 4] [--full] [--cards]
[--work DIR]`` (4 IOI prompt pairs by default, as many held out; 10-15 minutes on 2 shared
CPU cores as configured; ~3 GB of files in the work folder, deleted at the end unless
``--work`` is given).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# release -> what runs: the model (registry name), model overrides, ids (None: all), width
# (None: the release's), how (cli / api). A forward pass through a set costs about tokens x
# d_in x width per SAE (encode and decode), and validate and edit make dozens of them, so each
# release runs a few of its SAEs (spread over the layers, the real widths) to keep the whole
# run near 10 minutes on 2 CPU cores; ``--full`` runs every SAE of the file-based releases.
SPECS = {
    "gpt2-small-res-jb": dict(
        model="gpt2-small",
        overrides={},
        ids=[
            "blocks.0.hook_resid_pre",
            "blocks.4.hook_resid_pre",
            "blocks.8.hook_resid_pre",
            "blocks.11.hook_resid_post",
        ],
        width=None,
        how="cli",
    ),
    "pythia-70m-deduped-res-sm": dict(
        model="pythia-70m-deduped",
        overrides={},
        ids=[
            "blocks.0.hook_resid_pre",
            "blocks.1.hook_resid_post",
            "blocks.3.hook_resid_post",
            "blocks.5.hook_resid_post",
        ],
        width=None,
        how="cli",
    ),
    "gpt2-small-hook-z-kk": dict(  # layer 5's SAE is 49,152 wide, the others 24,576
        model="gpt2-small",
        overrides={},
        ids=["blocks.0.hook_z", "blocks.5.hook_z", "blocks.11.hook_z"],
        width=None,
        how="cli",
    ),
    # Gemma-2-2b's layer shape (d_model 2304, 8 x 256 heads, 4 KV heads, d_mlp 9216, soft caps,
    # local / global attention) at 2 of its 26 layers, with the toy vocabulary instead of 256,000
    "gemma-scope-2b-pt-res-canonical": dict(
        model="gemma-2-2b",
        overrides={"n_layers": 2, "n_ctx": 64},
        ids=[f"layer_{layer}/width_16k/canonical" for layer in range(2)],
        width=None,
        how="api",
    ),
}
CLI_NAMES = {"gpt2-small": "gpt2", "pythia-70m-deduped": "pythia-70m-deduped"}
TARGET = 0.9


def model_overrides(spec: dict) -> dict:
    """The spec's model overrides; the vocabulary the toy tokenizer's where the real one is
    too large to keep (Gemma's 256,000 x 2304 embeddings)."""
    from tasks.tokenizer import build_tokenizer

    out = dict(spec["overrides"])
    if spec["model"] == "gemma-2-2b":
        out.setdefault("d_vocab", len(build_tokenizer()))
    return out


# ---------------------------------------------------------------------------------- setup
def setup(release: str, spec: dict, cache: Path, write_model: bool) -> dict:
    """Write the model (``write_model``: not yet in the cache) and the release, in this
    process; returns what the table shows."""
    from circuits.loaders import load_model
    from sae import standins as S
    from sae.saeset import release_entry

    start = time.perf_counter()
    cfg = S.model_config(spec["model"], **model_overrides(spec))
    if spec["how"] == "cli":
        if write_model:
            S.write_model(spec["model"], cache, **model_overrides(spec))
        with S.offline_hub(cache):
            model = load_model(CLI_NAMES[spec["model"]], progress=False)  # calibrate on what the CLI loads
    else:
        model = S.standin_model(cfg)
    hooks = S.write_release(release, cache, cfg, spec["ids"], spec["width"], calibrate_on=model)
    entry = release_entry(release)
    ids = spec["ids"] or list(entry.saes_map)
    widths = sorted({spec["width"] or S.release_width(release, i) for i in ids})
    kinds = sorted({h.rsplit(".", 1)[-1] if "attn" not in h else "attn.hook_z" for h in hooks})
    return {
        "release": release,
        "hooks": f"{len(hooks)} of {len(entry.saes_map)}: {', '.join(kinds)}",
        "architecture": "jumprelu" if entry.conversion_func == "gemma_2" else "standard",
        "width": " / ".join(str(w) for w in widths),
        "model": shape_text(spec["model"], cfg),
        "setup_s": time.perf_counter() - start,
        "env": S.offline_env(cache),
    }


def shape_text(name: str, cfg) -> str:
    text = f"{name}: {cfg.n_layers} L, d {cfg.d_model}, {cfg.n_heads}x{cfg.d_head} heads, mlp {cfg.d_mlp}"
    text += f", vocab {cfg.d_vocab}"
    if cfg.parallel_attn_mlp:
        text += ", parallel, rotary"
    return text


# ---------------------------------------------------------------------------------- steps
def run_step(argv: list[str], env: dict, log: Path) -> dict:
    """One process; its wall time, peak resident memory (ru_maxrss) and exit status."""
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"ok": proc.returncode == 0, "seconds": time.perf_counter() - start, "peak_mib": usage.ru_maxrss / 1024}


def cli_steps(release: str, spec: dict, offline_env: dict, out: Path, n: int, cards: bool) -> dict:
    env = {**os.environ, **offline_env, "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "circuits.cli"]
    circuit = out / "circuit.json"
    model = CLI_NAMES[spec["model"]]
    saes = release if spec["ids"] is None else f"{release}:{','.join(spec['ids'])}"
    steps = {
        "discover": [
            *("discover --task ioi --method atp --top-n 100 --quiet".split()),
            *("--model", model, "--saes", saes, "--n", str(n), "--out", str(out)),
        ],
        "validate": ["validate", "--circuit", str(circuit), "--n", str(n), "--json", "--quiet"],
        "export": ["export", "--circuit", str(circuit), "--format", "circuit-tracer", "--quiet"]
        + ([] if cards else ["--no-descriptions"]),
        "edit": ["edit", "--circuit", str(circuit), "--top", "10", "--n", str(n), "--json", "--quiet"],
    }
    result = {}
    for name, argv in steps.items():
        result[name] = run_step(cli + argv, env, out / f"{name}.log")
        if name == "discover" and not result[name]["ok"]:
            break
    if result["discover"]["ok"]:
        result["graph"] = graph_counts(circuit)
    if result.get("validate", {}).get("ok"):
        validated = json_from_log(out / "validate.log")
        result["faithfulness"] = validated["faithfulness"]
        result["range"] = validated["m_model"] - validated["m_empty"]
    site = [sys.executable, __file__, "--site-level", json.dumps({"model": model, "saes": saes, "n": n})]
    result["site_level"] = run_step(site, env, out / "site_level.log")
    if result["site_level"]["ok"]:
        result["site_level"] |= json_from_log(out / "site_level.log")
    return result


def json_from_log(path: Path) -> dict:
    """The JSON object a step printed last (its stdout may hold progress lines before it)."""
    text = "\n" + path.read_text()
    return json.JSONDecoder().raw_decode(text, text.index("\n{") + 1)[0]


def graph_counts(path: Path) -> dict:
    """Latent and error nodes and edges of a circuit file (read as JSON: no torch here)."""
    data = json.loads(path.read_text())
    nodes = data["nodes"]
    return {
        "features": sum(1 for a in nodes if a.get("latent") is not None),
        "errors": sum(1 for a in nodes if a.get("is_error")),
        "nodes": len(nodes),
        "edges": len(data["edges"]),
    }


def site_level(model, saes, task, held_out) -> dict:
    """The smallest AtP-ranked prefix of sites whose F reaches TARGET on ``held_out`` (mean
    ablation): discover --target-faithfulness's first level."""
    from circuits.attribution.nodes import first_pass
    from circuits.circuit.ablation import Ablator
    from circuits.circuit.faithfulness import smallest_prefix
    from circuits.circuit.hierarchy import ranked_sites, site_scores

    start = time.perf_counter()
    effects = first_pass(model, saes, task, "atp", progress=False).effects
    ab = Ablator(model, saes, held_out)  # mean ablation
    labels = list(task.position_labels) if task.position_labels is not None else None
    scores = {s: v for s, v in site_scores(effects, saes, labels).items() if ab.ablatable(s.hook)}
    sites = ranked_sites(scores)
    k, f = smallest_prefix(len(sites), lambda k: ab.faithfulness(sites[:k]), TARGET)
    return {"sites": k, "of_sites": len(sites), "site_f": f, "site_seconds": time.perf_counter() - start}


def site_level_child(spec: dict) -> None:
    """``--site-level``: load what the CLI loads and print the site level as JSON."""
    from circuits.loaders import TaskSpec, load_model, load_saes

    model = load_model(spec["model"], progress=False)
    saes = load_saes(spec["saes"], model, progress=False)
    task, held_out, _ = TaskSpec("ioi", spec["n"]).split(model.tokenizer)
    print(json.dumps(site_level(model, saes, task, held_out)))


def api_child(args: dict) -> None:
    """``--api``: a release whose model --model cannot name, through the Python API in this
    process: each step's time, this process's peak memory after each."""
    import resource

    from circuits.circuit.config import DiscoverConfig
    from circuits.circuit.discover import discover
    from circuits.circuit.edit import edit_from_circuit, edit_report
    from circuits.circuit.faithfulness import faithfulness_curve, ranked_nodes
    from circuits.circuit.graph import save_graph
    from circuits.export.cards import feature_cards
    from circuits.export.circuit_tracer import write_circuit_tracer
    from circuits.export.pictures import card_keys
    from circuits.loaders import TaskSpec
    from sae import standins as S
    from sae.saeset import SAESet

    spec, out, n = args["spec"], Path(args["out"]), args["n"]

    def peak() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    result = {}
    with S.offline_hub(args["cache"]):
        start = time.perf_counter()
        model = S.standin_model(S.model_config(spec["model"], **model_overrides(spec)))
        saes = SAESet.from_release(args["release"], spec["ids"], model=model)
        task, held_out, _ = TaskSpec("ioi", n).split(model.tokenizer)
        graph = discover(model, saes, task, DiscoverConfig(method="atp", top_n=100), progress=False)
        save_graph(graph, out / "circuit.json")
        result["discover"] = {"ok": True, "seconds": time.perf_counter() - start, "peak_mib": peak()}
        start = time.perf_counter()
        curve = faithfulness_curve(model, saes, held_out, ranked_nodes(graph), progress=False)
        result["validate"] = {"ok": True, "seconds": time.perf_counter() - start, "peak_mib": peak()}
        result["faithfulness"] = curve.faithfulness
        result["range"] = curve.m_model - curve.m_empty
        start = time.perf_counter()
        cards = feature_cards(model, saes, card_keys(graph)) if args["cards"] else {}
        write_circuit_tracer(graph, out / "circuit-tracer", cards)
        result["export"] = {"ok": True, "seconds": time.perf_counter() - start, "peak_mib": peak()}
        start = time.perf_counter()
        edit = edit_from_circuit(graph, 10, "zero")
        edit_report(model, saes, edit.check(saes), "ioi", n=n)
        result["edit"] = {"ok": True, "seconds": time.perf_counter() - start, "peak_mib": peak()}
        result["site_level"] = {"ok": True} | site_level(model, saes, task, held_out)
        result["site_level"]["peak_mib"] = peak()
    print(json.dumps(result))


def api_steps(release: str, spec: dict, offline_env: dict, out: Path, n: int, cards: bool) -> dict:
    args = {
        "release": release,
        "spec": spec,
        "cache": offline_env["HF_HUB_CACHE"],
        "out": str(out),
        "n": n,
        "cards": cards,
    }
    log = out / "api.log"
    status = run_step([sys.executable, __file__, "--api", json.dumps(args)], dict(os.environ), log)
    if not status["ok"]:
        return {"discover": status, "error": log.read_text().strip().splitlines()[-1:]}
    result = json_from_log(log)
    result["graph"] = graph_counts(out / "circuit.json")
    result["process_peak_mib"] = status["peak_mib"]
    return result


# ---------------------------------------------------------------------------------- table
def table(rows: list[dict]) -> None:
    from circuits.core.tables import print_table

    def ok(r, step):
        s = r.get(step)
        return "—" if s is None else ("ok" if s.get("ok") else "FAILED")

    def seconds(r):
        return " / ".join(
            f"{r[s]['seconds']:.0f}" if s in r else "—" for s in ("discover", "validate", "export", "edit")
        )

    def peak(r):
        steps = [r[s]["peak_mib"] for s in ("discover", "validate", "export", "edit", "site_level") if s in r]
        return f"{max(steps):,.0f}" if steps else "—"

    print_table(
        [
            "release",
            "hooks",
            "architecture",
            "width",
            "model shape",
            "discover / validate / export / edit",
            "seconds (d / v / x / e)",
            "peak MiB",
            "nodes (latents + errors), edges",
            "m(model) − m(all ablated)",
            "F (validate)",
            "site-level F (sites)",
        ],
        [
            [
                r["release"],
                r["hooks"],
                r["architecture"],
                r["width"],
                r["model"],
                " / ".join(ok(r, s) for s in ("discover", "validate", "export", "edit")),
                seconds(r),
                peak(r),
                (f"{r['graph']['features']} + {r['graph']['errors']}, {r['graph']['edges']}" if "graph" in r else "—"),
                f"{r['range']:+.4f}" if "range" in r else "—",
                f"{r['faithfulness']:.3f}" if "faithfulness" in r else "—",
                (
                    f"{r['site_level']['site_f']:.3f} ({r['site_level']['sites']} of {r['site_level']['of_sites']})"
                    if "site_f" in r.get("site_level", {})
                    else "—"
                ),
            ]
            for r in rows
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=list(SPECS), help="these releases only")
    parser.add_argument("--n", type=int, default=4, help="prompt pairs (discovery; as many held out)")
    parser.add_argument("--work", help="keep the cache and circuits in this folder")
    parser.add_argument("--full", action="store_true", help="every SAE of the GPT-2 and Pythia releases")
    parser.add_argument("--cards", action="store_true", help="export with feature cards (minutes at these widths)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--site-level", help=argparse.SUPPRESS)
    parser.add_argument("--api", help=argparse.SUPPRESS)
    parser.add_argument("--setup", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.site_level:
        return site_level_child(json.loads(args.site_level))
    if args.api:
        return api_child(json.loads(args.api))
    if args.setup:
        job = json.loads(args.setup)
        row = setup(job["release"], job["spec"], Path(job["cache"]), job["write_model"])
        return print(json.dumps(row))
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-releases-"))
    cache = work / "hub"
    rows, done_models = [], set()
    start = time.perf_counter()
    try:
        for release in args.only or SPECS:
            spec = SPECS[release] | ({"ids": None} if args.full and SPECS[release]["how"] == "cli" else {})
            out = work / "circuits" / release
            out.mkdir(parents=True, exist_ok=True)
            # in a process of its own: this one stays small, so that each step's process (a
            # fork of this one) starts with little resident memory counted in its peak
            job = {
                "release": release,
                "spec": spec,
                "cache": str(cache),
                "write_model": spec["model"] not in done_models,
            }
            status = run_step(
                [sys.executable, __file__, "--setup", json.dumps(job)], dict(os.environ), out / "setup.log"
            )
            if not status["ok"]:
                raise SystemExit(f"{release}: setup failed, see {out / 'setup.log'}")
            done_models.add(spec["model"])
            row = json_from_log(out / "setup.log")
            steps = cli_steps if spec["how"] == "cli" else api_steps
            row |= steps(release, spec, row.pop("env"), out, args.n, args.cards)
            rows.append(row)
            detail = json.dumps({k: v for k, v in row.items() if k != "release"})
            print(f"{release}: {detail}", file=sys.stderr)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - start
    print(f"\n{args.n} IOI prompt pairs (toy language), AtP discovery (top 100 nodes); {seconds:.0f} s in all\n")
    table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
