"""Scale: discovery (AtP nodes + edges) time and peak memory against the number of prompt
pairs, SAE width and number of layers; 1 vs 2 processes; a GPT-2-small-shaped model with
random weights; then the AtP / IG / exact and batched-edge comparison (benchmarks/discover.py).
Fidelity of AtP and IG against exact patching: `circuits check-attribution --task ioi --edges 100`.
Each measurement runs in a fresh process, so its peak resident memory is its own. Prints
markdown tables; `--json PATH` also writes JSON. Ratios are measured in one run.

Run: `make benchmark` or `.venv/bin/python benchmarks/scale.py [--quick] [--skip-gpt2]`;
`--hierarchy-only`: just the hierarchical-circuit table (`discover --target-faithfulness 0.9`
at 128 and 1,024 pairs, about an hour on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(spec: dict) -> dict:
    """One measurement, in this (fresh) process: build the setup, time discover()."""
    import torch

    from circuits.circuit.config import DiscoverConfig
    from circuits.circuit.discover import discover
    from tasks.builtin import make_task

    torch.manual_seed(0)
    if spec.get("validate"):
        return validation_child(spec)
    if spec["kind"] == "embedded":
        from circuits.loaders import load_model, load_saes

        model = load_model("toy", progress=False)
        saes = load_saes("toy", model, progress=False)
    else:
        model, saes = random_setup(spec)
    task = make_task("ioi", model.tokenizer, n=spec["pairs"])
    cfg = DiscoverConfig(
        method=spec.get("method", "atp"),
        top_n=spec.get("top_n"),
        batch_size=spec.get("batch_size", 32),
        target_faithfulness=spec.get("target"),
    )
    # a hierarchical circuit is validated on as many held-out pairs (the next seed), as the CLI does
    held_out = make_task("ioi", model.tokenizer, n=spec["pairs"], seed=1) if spec.get("target") else None
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    mask = {} if spec.get("mask_steps") is None else {"mask_steps": spec["mask_steps"]}
    graph = discover(model, saes, task, cfg, progress=False, held_out=held_out, **mask)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "seconds": seconds,
        "peak_mib": peak / 1024,
        "setup_mib": base / 1024,
        "nodes": graph.number_of_nodes(),
        "edges": graph.number_of_edges(),
    }


def validation_child(spec: dict) -> dict:
    """The validation engine alone on ``spec["pairs"]`` held-out pairs: the live pool of a
    quarter of the sites, then one feature-level circuit (its first 200 live latents and
    the sites' error terms) measured — F, completeness, one random same-size circuit — as
    ``discover --target-faithfulness`` measures each level (mean ablation, batches of 32)."""
    import random

    from circuits.circuit.ablation import Ablator
    from circuits.circuit.faithfulness import live_pool, measure
    from circuits.circuit.hierarchy import all_sites
    from tasks.builtin import make_task

    model, saes = random_setup(spec)
    held_out = make_task("ioi", model.tokenizer, n=spec["pairs"], seed=1)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    ab = Ablator(model, saes, held_out)
    sites = all_sites(saes, held_out)[::4]
    pool = live_pool(ab, sites, random.Random(0))
    circuit = pool.latents[:200] + pool.errors
    m = measure(ab, circuit, pool, n_random=1)
    return {
        "seconds": time.perf_counter() - start,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "setup_mib": base / 1024,
        "nodes": len(circuit),
        "edges": 0,
        "faithfulness": m.faithfulness,
    }


def random_setup(spec: dict):
    """A random-weight model with the toy tokenizer and random TopK SAEs at every hook."""
    import torch
    from sae_lens import TopKSAE, TopKSAEConfig
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from circuits.core.vocab import hook_names
    from sae.saeset import SAESet
    from tasks.tokenizer import build_tokenizer

    tok = build_tokenizer()
    d, layers = spec["d_model"], spec["layers"]
    cfg = HookedTransformerConfig(
        n_layers=layers,
        d_model=d,
        n_heads=max(1, d // 64),
        d_head=min(64, d),
        d_mlp=4 * d,
        n_ctx=64,
        d_vocab=len(tok),
        act_fn="gelu",
        normalization_type="LN",
        seed=0,
    )
    model = HookedTransformer(cfg, tokenizer=tok)
    model.eval()
    saes = {}
    for hook in hook_names(spec.get("kinds", ["resid", "mlp", "attn"]), range(layers)):
        saes[hook] = TopKSAE(TopKSAEConfig(d_in=d, d_sae=spec["width"], k=spec.get("k", 32)))
        with torch.no_grad():
            saes[hook].b_dec.normal_(0, 0.1)
    return model, SAESet(saes)


def measure(spec: dict, extra: list[str] | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def nproc_run(nproc: int, pairs: int) -> float:
    cmd = [
        sys.executable,
        "-m",
        "circuits.cli",
        "discover",
        "--task",
        "ioi",
        "--n",
        str(pairs),
        "--method",
        "atp",
        "--quiet",
        "--nproc",
        str(nproc),
        "--out",
        f"/tmp/sae-circuits-bench-nproc{nproc}",
    ]
    start = time.perf_counter()
    subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True)
    return time.perf_counter() - start


def table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")


def fmt(r: dict) -> list:
    if "error" in r:
        return ["failed: " + r["error"], "", "", ""]
    return [f"{r['seconds']:.1f}", f"{r['peak_mib']:.0f}", r["nodes"], r["edges"]]


def hierarchy_table(results: dict, mask_steps: int | None = None) -> None:
    """`discover --target-faithfulness 0.9` (IG, mean ablation, as many held-out pairs as
    discovery pairs) at 128 and 1,024 pairs: validation streams over the held-out pairs and
    the mask trains in passes, so peak memory should barely grow."""
    rows = []
    for n in [128, 1024]:
        r = results.setdefault("hierarchy_pairs", {})[n] = measure(
            {"kind": "embedded", "pairs": n, "method": "ig", "target": 0.9, "mask_steps": mask_steps}
        )
        rows.append([n, *fmt(r)])
    table(
        "Hierarchical discovery (IG, target faithfulness 0.9, held-out pairs as many) on the embedded model, IOI",
        ["pairs", "time (s)", "peak RSS (MiB)", "nodes", "edges"],
        rows,
    )
    got = results["hierarchy_pairs"]
    if all("peak_mib" in got[n] for n in (128, 1024)):
        results["hierarchy_peak_ratio"] = ratio = got[1024]["peak_mib"] / got[128]["peak_mib"]
        print(f"\npeak memory at 1024 pairs / at 128 pairs: {ratio:.2f}x")


def validation_table(results: dict) -> None:
    """The validation engine at GPT-2-small shape (12 layers, d_model 768; random TopK SAEs
    of width 24,576 at the 12 residual hooks, the shape of gpt2-small-res-jb) on 64 and 512
    held-out IOI pairs: it streams batches, so peak memory should not grow with the pairs."""
    rows = []
    for n in [64, 512]:
        spec = {"kind": "random", "validate": True, "pairs": n, "layers": 12, "d_model": 768, "width": 24576}
        r = results.setdefault("validation_pairs", {})[n] = measure(spec | {"kinds": ["resid"]})
        rows.append([n, *fmt(r)[:3]])
    table(
        "Validation engine (live pool, F, completeness, a random baseline; mean ablation) at GPT-2-small "
        "shape: 12 layers, d_model 768, random TopK SAEs of width 24,576 at the 12 resid hooks, toy vocabulary",
        ["held-out pairs", "time (s)", "peak RSS (MiB)", "nodes"],
        rows,
    )
    got = results["validation_pairs"]
    if all("peak_mib" in got[n] for n in (64, 512)):
        results["validation_peak_ratio"] = ratio = got[512]["peak_mib"] / got[64]["peak_mib"]
        print(f"\npeak memory at 512 held-out pairs / at 64: {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="smaller sweeps (up to 1024 pairs)")
    parser.add_argument("--skip-gpt2", action="store_true", help="skip the GPT-2-small-shaped run")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument(
        "--hierarchy-only", action="store_true", help="only the hierarchical-circuit table (128 vs 1,024 pairs)"
    )
    parser.add_argument(
        "--validation-only", action="store_true", help="only the GPT-2-shaped validation table (64 vs 512 pairs)"
    )
    parser.add_argument(
        "--mask-steps", type=int, help="mask optimiser steps in the hierarchical table (default: discover's)"
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    results: dict = {}
    if args.validation_only:
        validation_table(results)
    if args.hierarchy_only:
        hierarchy_table(results, args.mask_steps)
    if args.validation_only or args.hierarchy_only:
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
        return
    pairs = [32, 128, 512, 1024] + ([] if args.quick else [4096])
    rows = []
    for n in pairs:
        r = results.setdefault("pairs", {})[n] = measure({"kind": "embedded", "pairs": n})
        rows.append([n, *fmt(r)])
    table(
        "Discovery (AtP nodes + edges) on the embedded model, IOI, 12 SAEs, vs prompt pairs",
        ["pairs", "time (s)", "peak RSS (MiB)", "nodes", "edges"],
        rows,
    )
    if len(pairs) > 1 and all("peak_mib" in results["pairs"][n] for n in (128, pairs[-1])):
        ratio = results["pairs"][pairs[-1]]["peak_mib"] / results["pairs"][128]["peak_mib"]
        results["peak_ratio"] = ratio
        print(f"\npeak memory at {pairs[-1]} pairs / at 128 pairs: {ratio:.2f}x")

    # IG discovery keeps each batch's gradients on disk between its two passes, not in memory
    rows = []
    for n in [128, 1024]:
        r = results.setdefault("ig_pairs", {})[n] = measure({"kind": "embedded", "pairs": n, "method": "ig"})
        rows.append([n, *fmt(r)])
    table(
        "IG discovery on the embedded model, IOI, 12 SAEs, vs prompt pairs",
        ["pairs", "time (s)", "peak RSS (MiB)", "nodes", "edges"],
        rows,
    )

    rows = []
    for width in [512, 1024, 4096, 16384]:
        r = results.setdefault("width", {})[width] = measure(
            {"kind": "random", "pairs": 128, "layers": 4, "d_model": 128, "width": width, "top_n": 150}
        )
        rows.append([width, *fmt(r)])
    table(
        "Random 4-layer d_model-128 model, random TopK SAEs (k 32) at 12 hooks, 128 pairs, top 150 nodes, vs SAE width",
        ["SAE width", "time (s)", "peak RSS (MiB)", "nodes", "edges"],
        rows,
    )

    rows = []
    for layers in [2, 4, 8]:
        r = results.setdefault("layers", {})[layers] = measure(
            {"kind": "random", "pairs": 128, "layers": layers, "d_model": 128, "width": 1024, "top_n": 150}
        )
        rows.append([layers, *fmt(r)])
    table(
        "Random d_model-128 models, random SAEs (width 1024) at every hook, 128 pairs, top 150 nodes, vs layers",
        ["layers", "time (s)", "peak RSS (MiB)", "nodes", "edges"],
        rows,
    )

    one, two = nproc_run(1, 512), nproc_run(2, 512)
    results["nproc"] = {"pairs": 512, "one_s": one, "two_s": two}
    table(
        "`circuits discover --task ioi --n 512 --method atp` wall time (process start and loading included)",
        ["processes", "wall (s)"],
        [[1, f"{one:.1f}"], [2, f"{two:.1f}"]],
    )

    if not args.skip_gpt2:
        spec = {
            "kind": "random",
            "pairs": 16,
            "layers": 12,
            "d_model": 768,
            "width": 24576,
            "top_n": 30,
            "batch_size": 8,
        }
        r = results["gpt2_shaped"] = measure(spec)
        table(
            "GPT-2-small-shaped random model (12 layers, d_model 768, 12 heads, d_mlp 3072) with random TopK "
            "SAEs of width 24,576 at all 36 hooks (resid, mlp, attn), toy vocabulary, 16 IOI pairs, AtP, "
            "edges into the top 30 nodes, batch 8, CPU",
            ["time (s)", "peak RSS (MiB)", "nodes", "edges"],
            [fmt(r)],
        )

    hierarchy_table(results)
    print("\nAtP / IG / exact and batched edges (benchmarks/discover.py):")
    sys.stdout.flush()
    subprocess.run([sys.executable, str(ROOT / "benchmarks/discover.py")], cwd=ROOT, check=False)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
