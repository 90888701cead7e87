import json

import pytest

from circuits.cli import build_parser, main
from tests.helpers import discover_argv


@pytest.mark.parametrize(
    "command",
    [
        "train-model",
        "eval-model",
        "train-saes",
        "eval-saes",
        "discover",
        "check-attribution",
        "validate",
        "edit",
        "export",
        "demo",
    ],
)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"circuits {command}" in out and len(out.splitlines()) > 3


def test_errors_are_one_line(capsys):
    assert main(["eval-model", "--model", "no-such-model", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("circuits: error: unknown model 'no-such-model'")
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["eval-model", "--n", "x"], "circuits: error: eval-model: argument --n: invalid int value: 'x'"),
        (["eval-model", "--bogus"], "circuits: error: unrecognized arguments: --bogus"),
        (["discover"], "circuits: error: discover: the following arguments are required: --task"),
        (["edit", "--action", "boost"], "circuits: error: edit: argument --action: invalid choice: 'boost'"),
        (["no-such-command"], "circuits: error: argument command: invalid choice: 'no-such-command'"),
    ],
)
def test_argparse_errors_are_one_line(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(expected) and len(err.splitlines()) == 1


def test_defaults_come_from_the_library():
    from circuits.toy.config import ToyModelConfig
    from sae.config import SAETrainConfig

    parser = build_parser()
    train = parser.parse_args(["train-saes"])
    cfg = SAETrainConfig()
    assert (train.arch, train.width, train.k, train.tokens, train.seed) == (
        cfg.arch,
        cfg.width,
        cfg.k,
        cfg.n_tokens,
        cfg.seed,
    )
    assert tuple(train.hooks.split(",")) == cfg.kinds
    assert parser.parse_args(["train-model"]).steps == ToyModelConfig().steps


def test_defaults_read_from_the_source_are_the_functions():
    """Function defaults the help shows are read from the source (no import); they are the
    functions' own."""
    from circuits.circuit.check import check_attribution
    from circuits.circuit.config import HELD_OUT_PAIRS, HIERARCHY_PAIRS, THRESHOLD_PAIRS, DiscoverConfig
    from circuits.circuit.edit import edit_from_circuit
    from circuits.circuit.evaluate import evaluate_model
    from circuits.circuit.faithfulness import prune_by_ablation
    from circuits.cli.discover import resolve_pairs
    from circuits.core.config import param_default
    from circuits.demo import run_demo
    from sae.evaluate import evaluate_saes
    from tasks.builtin import make_task

    parser = build_parser()
    model = parser.parse_args(["eval-model"])
    assert (model.n, model.seed) == (param_default(evaluate_model, "n"), param_default(evaluate_model, "seed"))
    assert parser.parse_args(["eval-saes"]).n_seqs == param_default(evaluate_saes, "n_seqs")
    check = parser.parse_args(["check-attribution", "--task", "ioi"])
    assert (check.top, check.steps) == (
        param_default(check_attribution, "n_top"),
        param_default(check_attribution, "steps"),
    )
    assert parser.parse_args(["validate", "--circuit", "c.json"]).target == param_default(prune_by_ablation, "target")
    assert parser.parse_args(["edit"]).action == param_default(edit_from_circuit, "action")
    assert parser.parse_args(["demo"]).n == param_default(run_demo, "n")
    found = parser.parse_args(["discover", "--task", "ioi"])
    cfg = DiscoverConfig()
    assert (found.method, found.steps, found.node_threshold, found.edge_threshold, found.batch_size) == (
        cfg.method,
        cfg.steps,
        cfg.node_threshold,
        cfg.edge_threshold,
        cfg.batch_size,
    )
    assert found.n is None and found.ablation is None  # None: not given
    resolve_pairs(found)
    assert found.n == THRESHOLD_PAIRS == param_default(make_task, "n") and found.held_out is None
    hierarchical = parser.parse_args(["discover", "--task", "ioi", "--target-faithfulness", "0.9"])
    resolve_pairs(hierarchical)
    assert (hierarchical.n, hierarchical.held_out) == (HIERARCHY_PAIRS, HELD_OUT_PAIRS)


def test_the_parser_imports_no_model_library():
    """`circuits --help` and `circuits CMD --help` answer at once: building the parser and
    parsing every command's arguments, --help included, imports none of torch,
    TransformerLens, sae-lens, transformers, networkx or matplotlib."""
    import subprocess
    import sys

    code = """
import contextlib, io, json, sys
from circuits.cli import build_parser
required = {"discover": ["--task", "ioi"], "check-attribution": ["--task", "ioi"],
            "validate": ["--circuit", "c.json"], "export": ["--circuit", "c.json"]}
commands = ["train-model", "eval-model", "train-saes", "eval-saes", "discover", "validate", "edit",
            "check-attribution", "export", "demo"]
for argv in [["--help"]] + [[c, "--help"] for c in commands] + [[c, *required.get(c, [])] for c in commands]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        build_parser().parse_args(argv)
heavy = ("torch", "transformer_lens", "sae_lens", "transformers", "networkx", "matplotlib")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy)))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout) == []


def test_eval_model_json(tiny_model_dir, capsys):
    assert main(["eval-model", "--model", str(tiny_model_dir), "--n", "8", "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["tasks"]) == {"ioi", "sva", "greater_than", "induction"}
    for row in result["tasks"].values():
        assert set(row) == {"accuracy", "clean_metric", "corrupt_metric"}
        assert 0.0 <= row["accuracy"] <= 1.0


def test_train_and_eval_saes(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "set"
    assert (
        main(
            [
                "train-saes",
                "--model",
                str(tiny_model_dir),
                "--hooks",
                "attn",
                "--width",
                "16",
                "--k",
                "2",
                "--tokens",
                "1488",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert "trained 1 topk SAEs (width 16)" in capsys.readouterr().out
    assert (
        main(["eval-saes", "--model", str(tiny_model_dir), "--saes", str(out), "--n-seqs", "4", "--json", "--quiet"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert list(result["saes"]) == ["blocks.0.hook_attn_out"]
    row = result["saes"]["blocks.0.hook_attn_out"]
    assert {"l0", "fvu", "ce_recovered", "dead_frac", "dense_frac"} <= set(row)
    assert row["l0"] == 2.0
    assert "all_spliced_ce_recovered" in result
    argv = ["eval-saes", "--model", str(tiny_model_dir), "--saes", str(out), "--n-seqs", "4", "--quiet", "--concepts"]
    assert main(argv) == 0
    out_text = capsys.readouterr().out
    assert "| blocks.0.hook_attn_out |" in out_text and "latents matched to a concept:" in out_text
    assert main([*argv, "--json"]) == 0
    interp = json.loads(capsys.readouterr().out)["interpretability"]
    assert len(interp["hooks"]["blocks.0.hook_attn_out"]["concept"]) == 16 and 0 <= interp["matched_fraction"] <= 1


def test_train_saes_bad_prefixes_are_one_line(tiny_model_dir, capsys):
    argv = ["train-saes", "--model", str(tiny_model_dir), "--arch", "matryoshka", "--width", "16", "--k", "2"]
    assert main([*argv, "--quiet", "--prefixes", "8,4"]) == 2
    assert capsys.readouterr().err.strip() == (
        "circuits: error: SAE config: matryoshka prefixes must increase and stay below the width 16, got [8, 4]"
    )


def test_train_saes_bad_input_is_one_line(tiny_model_dir, capsys):
    assert main(["train-saes", "--model", str(tiny_model_dir), "--arch", "relu", "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (
        "circuits: error: unknown SAE architecture 'relu': use topk, batchtopk, jumprelu, standard, gated, matryoshka"
    )
    assert main(["train-saes", "--model", str(tiny_model_dir), "--layers", "0,x", "--quiet"]) == 2
    assert "--layers takes comma-separated integers" in capsys.readouterr().err


def test_discover_writes_a_circuit(tiny_model_dir, tiny_sae_dir, tmp_path, capsys):
    from circuits.circuit.graph import METRIC, load_graph
    from circuits.circuit.record import record_of

    out = tmp_path / "ioi"
    assert (
        main(
            discover_argv(
                tiny_model_dir,
                tiny_sae_dir,
                "--n",
                "8",
                "--method",
                "atp",
                "--top-n",
                "20",
                "--out",
                str(out),
                "--quiet",
            )
        )
        == 0
    )
    text = capsys.readouterr().out
    graph = load_graph(out / "circuit.json")
    assert METRIC in graph and record_of(graph).task == "ioi" and record_of(graph).n_examples == 8
    assert f"{graph.number_of_edges()} edges" in text and "strongest nodes" in text
    assert "| layer | kind |" in text


def test_check_attribution_json(tiny_model_dir, tiny_sae_dir, capsys):
    assert (
        main(
            [
                "check-attribution",
                "--task",
                "ioi",
                "--model",
                str(tiny_model_dir),
                "--saes",
                str(tiny_sae_dir),
                "--n",
                "4",
                "--top",
                "10",
                "--steps",
                "2",
                "--json",
                "--quiet",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert set(result["submodules"]) == {"blocks.0.hook_attn_out", "blocks.0.hook_mlp_out", "blocks.0.hook_resid_post"}
    for row in result["submodules"].values():
        assert {"pearson_atp", "pearson_ig", "total_ig", "total_exact"} <= set(row)
        assert row["total_ig"] == pytest.approx(row["total_exact"], rel=0.2, abs=1e-3)


def test_discover_bad_input_is_one_line(tiny_model_dir, tiny_sae_dir, tmp_path, capsys):
    common = ["--model", str(tiny_model_dir), "--saes", str(tiny_sae_dir), "--n", "4", "--quiet"]
    assert main(["discover", "--task", "ioi", "--hooks", "resid,foo", *common]) == 2
    assert "--hooks: unknown kind(s) foo" in capsys.readouterr().err
    assert main(["discover", "--task", "ioi", "--method", "eap", *common]) == 2
    assert capsys.readouterr().err.strip() == "circuits: error: unknown method 'eap': use atp, ig, exact"
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["discover", "--task", "ioi", "--method", "atp", "--out", str(blocker / "sub"), *common]) == 2
    assert "output folder" in capsys.readouterr().err
    missing = tmp_path / "none.jsonl"
    assert main(["discover", "--task", str(missing), *common]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def tiny_circuit(tiny_model_dir, tiny_sae_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("circuit")
    assert (
        main(
            discover_argv(
                tiny_model_dir,
                tiny_sae_dir,
                "--n",
                "8",
                "--method",
                "atp",
                "--top-n",
                "30",
                "--out",
                str(out),
                "--quiet",
            )
        )
        == 0
    )
    return out / "circuit.json"


def test_validate_json_and_picture(tiny_circuit, capsys):
    capsys.readouterr()
    assert main(["validate", "--circuit", str(tiny_circuit), "--json", "--prune", "--target", "0.5", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"faithfulness", "completeness", "cpr", "cmd", "curve"} <= set(result)
    assert set(result["curve"][0]) == {"n_nodes", "n_error_nodes", "faithfulness", "random_faithfulness"}
    sizes = [c["n_nodes"] + c["n_error_nodes"] for c in result["curve"]]
    assert sizes == sorted(sizes) and sizes[-1] == result["n_nodes"] + result["n_error_nodes"]
    assert (tiny_circuit.parent / "faithfulness.png").read_bytes()[:4] == b"\x89PNG"
    assert (tiny_circuit.parent / "circuit.pruned.json").is_file()
    assert result["pruned"]["reached_target"] == (result["pruned"]["faithfulness"] >= 0.5)


@pytest.fixture(scope="module")
def hierarchical_circuit(tiny_model_dir, tiny_sae_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("hierarchical")
    argv = discover_argv(tiny_model_dir, tiny_sae_dir)
    argv += ["--n", "16", "--held-out", "12", "--method", "atp", "--target-faithfulness", "0.8"]
    argv += ["--ablation", "mean_corrupt", "--mask-steps", "10", "--site-mask-steps", "10"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    return out / "circuit.json"


def test_discover_with_a_target_records_both_levels(hierarchical_circuit, capsys):
    from circuits.circuit.graph import load_graph
    from circuits.circuit.record import HeldOut, record_of
    from circuits.core.vocab import Node

    graph = load_graph(hierarchical_circuit)
    h = record_of(graph).hierarchy
    assert h.ablation == "mean_corrupt" and h.target == 0.8 and h.n_held_out == 12
    assert h.held_out == HeldOut("ioi", n=12, seed=1) and record_of(graph).sources.n == 16
    assert h.site_attribution is not None and h.site_optimised is not None and len(h.site_mask_history) > 0
    assert h.site_level in (h.site_attribution, h.site_optimised)
    for lv in (h.site_level, h.feature_level, h.attribution, h.optimised):
        assert lv.reached_target == (lv.faithfulness >= 0.8)
        assert {"completeness", "random_faithfulness", "curve"} <= set(lv.to_dict())
    assert h.site_level.n_nodes == len(h.sites) >= 1
    features = [Node.from_attrs(a) for n, a in graph.nodes(data=True) if a.get("kind") not in ("embed", "metric")]
    n_err = sum(f.latent is None for f in features)
    assert (len(features) - n_err, n_err) == (h.feature_level.n_nodes, h.feature_level.n_error_nodes)
    sites = {(s.hook, s.position) for s in h.sites}
    assert all((f.hook, f.position) in sites for f in features)  # features live inside the skeleton
    weights = {}
    for u, v, w in graph.edges(data="weight"):
        key = tuple(x if x == "metric" else Node.from_attrs(graph.nodes[x]).site.id for x in (u, v))
        weights[key] = weights.get(key, 0.0) + w
    assert {(u, v): w for u, v, w in h.site_edges} == pytest.approx(weights)  # site edges sum node edges
    # families: of the sites' latents, every feature in exactly one, the cut among the ranked families
    members = [m for f in h.families for m in f.members]
    assert h.families and len(members) == len(set(members))
    assert {n for n, a in graph.nodes(data=True) if a.get("latent") is not None} <= set(members)
    assert all(graph.nodes[m]["family"] == f.id for f in h.families for m in f.members if m in graph)
    assert all({s_id for s_id in [f.site]} <= {s.id for s in h.sites} for f in h.families)
    assert 1 <= h.family_level.n_nodes <= len(h.families) and h.family_level.n_error_nodes == n_err
    assert [f.id for f in h.families] == [f"F{i}" for i in range(1, len(h.families) + 1)]
    assert all(f.ablation_ratio is not None for f in h.families)
    # value detectors: every latent carries its best value and F1; the share is theirs
    attrs = [a for n, a in graph.nodes(data=True) if a.get("kind") not in ("embed", "metric")]
    latents = [a for a in attrs if a.get("latent") is not None]
    assert all("detects" in a and 0 <= a["detects_f1"] <= 1 for a in latents)
    hit = sum(abs(a["effect"]) for a in latents if a["detects_f1"] >= 0.8)
    assert h.feature_detector_share == pytest.approx(hit / sum(abs(a["effect"]) for a in attrs))


def test_export_html_shows_the_families_and_renames_them(hierarchical_circuit, tmp_path, capsys):
    from circuits.circuit.graph import load_graph
    from circuits.circuit.record import record_of

    h = record_of(load_graph(hierarchical_circuit)).hierarchy
    notes = tmp_path / "notes.json"
    notes.write_text(json.dumps({"F1": "the family we care about"}))
    out = tmp_path / "report"
    argv = ["export", "--circuit", str(hierarchical_circuit), "--format", "html", "--no-descriptions", "--quiet"]
    assert main([*argv, "--annotations", str(notes), "--out", str(out)]) == 0
    html = (tmp_path / "report.html").read_text()
    assert "Feature families" in html and "F1, the family we care about" in html and "One prompt: " in html
    assert h.families[0].name not in html.split("Feature families")[1].split("</table>")[0]
    notes.write_text(json.dumps({"F99": "no such family"}))
    capsys.readouterr()
    assert main([*argv, "--annotations", str(notes), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "the circuit has no family 'F99' (its families: F1" in err and len(err.splitlines()) == 1


def test_validate_reads_both_levels(hierarchical_circuit, capsys):
    capsys.readouterr()
    assert main(["validate", "--circuit", str(hierarchical_circuit), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "hierarchical circuit, mean_corrupt ablation, 12 pairs" in out and "| sites |" in out  # the held-out ones
    assert main(["validate", "--circuit", str(hierarchical_circuit), "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ablation"] == "mean_corrupt"
    assert result["site_level"]["n_nodes"] >= 1 and "completeness" in result["feature_level"]


def test_validate_an_older_circuit_says_so_once(tiny_circuit, capsys):
    capsys.readouterr()
    assert main(["validate", "--circuit", str(tiny_circuit), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("has no site and feature levels") == 1 and len(err.strip().splitlines()) == 1


def test_missed_target_is_one_line_and_keeps_the_circuit(hierarchical_circuit, capsys):
    from dataclasses import replace

    from circuits.circuit.graph import load_graph
    from circuits.circuit.record import record_of
    from circuits.cli.discover import print_hierarchy

    record = record_of(load_graph(hierarchical_circuit))
    h = record.hierarchy
    h = replace(h, feature_level=replace(h.feature_level, reached_target=False, faithfulness=0.5))
    print_hierarchy(replace(record, hierarchy=h), hierarchical_circuit)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not reached" in err and "F 0.500" in err
    assert str(hierarchical_circuit) in err
    missed = replace(h.family_level, reached_target=False, faithfulness=0.42)
    print_hierarchy(replace(record, hierarchy=replace(h, family_level=missed)), hierarchical_circuit)
    out = capsys.readouterr().out
    assert f"the best cut, {missed.n_nodes} families, reaches F 0.420, below the target" in out
    assert "reach the target:" not in out


def test_hierarchy_bad_input_is_one_line(tiny_model_dir, tiny_sae_dir, tmp_path, capsys):
    common = [
        "--model",
        str(tiny_model_dir),
        "--saes",
        str(tiny_sae_dir),
        "--n",
        "4",
        "--out",
        str(tmp_path),
        "--quiet",
    ]
    for extra, message in [
        (["--target-faithfulness", "0"], "target faithfulness must be in (0, 1], got 0.0"),
        (["--target-faithfulness", "1.5"], "target faithfulness must be in (0, 1], got 1.5"),
        (["--target-faithfulness", "0.9", "--ablation", "median"], "ablation 'median'"),
        (["--ablation", "zero", "--mask-steps", "5"], "--ablation, --mask-steps only apply with --target-faithfulness"),
        (["--held-out", "8"], "--held-out only applies with --target-faithfulness (not given)"),
        (["--target-faithfulness", "0.9", "--held-out", "0"], "--held-out must be at least 1 prompt pair, got 0"),
    ]:
        assert main(["discover", "--task", "ioi", *extra, *common]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    few = tmp_path / "few.jsonl"
    row = {
        "clean": "When Mary and John went",
        "corrupt": "When Alice and Bob went",
        "answer": "to",
        "wrong_answer": "and",
    }
    rows = [row] * 5
    few.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["discover", "--task", str(few), "--target-faithfulness", "0.9", *common]) == 2
    err = capsys.readouterr().err.strip()
    assert "too few to hold out" in err and len(err.splitlines()) == 1


def test_edit_report(tiny_circuit, tmp_path, capsys):
    capsys.readouterr()
    saved = tmp_path / "edit.json"
    assert (
        main(
            [
                "edit",
                "--circuit",
                str(tiny_circuit),
                "--top",
                "3",
                "--n",
                "8",
                "--json",
                "--quiet",
                "--save-edit",
                str(saved),
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert set(report["tasks"]) == {"ioi", "sva", "greater_than", "induction"}
    assert report["tasks"]["ioi"]["before"]["clean_metric"] != report["tasks"]["ioi"]["after"]["clean_metric"]
    assert len(report["completions"]) == 3 and len(report["edit"]["features"]) <= 3
    src = json.loads(tiny_circuit.read_text())["graph"]["sources"]
    assert (
        main(
            [
                "edit",
                "--edit",
                str(saved),
                "--model",
                src["model"],
                "--saes",
                src["saes"],
                "--n",
                "8",
                "--json",
                "--quiet",
            ]
        )
        == 0
    )
    again = json.loads(capsys.readouterr().out)
    assert again["tasks"]["ioi"]["after"] == report["tasks"]["ioi"]["after"]


def test_circuit_from_another_sae_set_is_one_line(tiny_circuit, tiny_model_dir, tmp_path, capsys):
    from circuits.core.vocab import hook_names
    from tests.helpers import random_saes

    other = tmp_path / "wide"
    random_saes(hook_names(["resid", "mlp", "attn"], [0]), d_sae=48, k=4).save(other)
    assert main(["validate", "--circuit", str(tiny_circuit), "--saes", str(other), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("circuits: error: the circuit's SAE at blocks.0.hook_") and "has 32 latents" in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "fmt,suffix",
    [("svg", ".svg"), ("graphml", ".graphml"), ("json", ".json")],
)
def test_export_formats(tiny_circuit, tmp_path, fmt, suffix, capsys):
    import shutil

    if fmt == "svg" and shutil.which("dot") is None:
        pytest.skip("graphviz's dot is not installed (make test installs it)")
    out = tmp_path / "c"
    assert main(["export", "--circuit", str(tiny_circuit), "--format", fmt, "--out", str(out), "--quiet"]) == 0
    written = capsys.readouterr().out.split()
    assert str(out.with_name("c" + suffix)) in written
    assert out.with_name("c" + suffix).stat().st_size > 100


def test_export_bad_input_is_one_line(tiny_circuit, tmp_path, capsys):
    assert main(["export", "--circuit", str(tiny_circuit), "--format", "gif", "--no-descriptions"]) == 2
    assert "unknown format 'gif'" in capsys.readouterr().err
    bad = tmp_path / "ann.json"
    bad.write_text("[")
    assert main(["export", "--circuit", str(tiny_circuit), "--annotations", str(bad), "--no-descriptions"]) == 2
    assert capsys.readouterr().err.startswith("circuits: error: annotation file")
    bad.write_text('{"metric": "the output", "blocks.9.hook_mlp_out/3@END": "x", "nowhere": "y"}')
    assert main(["export", "--circuit", str(tiny_circuit), "--annotations", str(bad), "--no-descriptions"]) == 2
    err = capsys.readouterr().err
    assert "2 node id(s) not in the circuit" in err and "'blocks.9.hook_mlp_out/3@END', 'nowhere'" in err
    assert len(err.strip().splitlines()) == 1


def test_edit_optimise_reports_the_collateral_of_the_chosen_edit(hierarchical_circuit, tiny_circuit, capsys):
    capsys.readouterr()
    argv = ["edit", "--circuit", str(hierarchical_circuit), "--optimise", "--n", "8", "--quiet"]
    assert main([*argv, "--units", "families", "--budget", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["edit"]["description"].startswith(("optimised: F", "nothing"))
    assert {"intended", "unintended", "tpp", "text"} <= set(report["collateral"])
    assert report["random"]["edit"]["description"].startswith("random edit of the same size")
    assert main([*argv, "--budget", "3", "--steps", "4"]) == 2  # its feature level is all error terms
    assert "the circuit has no SAE latents to edit" in capsys.readouterr().err
    argv[2] = str(tiny_circuit)
    assert main([*argv, "--budget", "3", "--steps", "4", "--retain", "sva,text", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    features = report["edit"]["features"]
    assert 1 <= len(features) <= 3 and all(f["positions"] is None for f in features)
    assert report["edit"]["description"] == f"optimised: {len(features)} latents"
    for flags, message in [
        (["--budget", "0"], "budget (--budget) must be at least 1, got 0"),
        (["--retain", ","], "--retain is empty: name the built-in tasks (and/or 'text') the edit must keep"),
        (["--retain", "sva,ioi"], "--retain names ioi, the task the edit removes"),
        (["--retain", "text,maths"], "--retain: unknown task 'maths' (use ioi, sva, greater_than, induction or text)"),
    ]:
        assert main([*argv, *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    steer = ["edit", "--circuit", str(hierarchical_circuit), "--n", "8", "--quiet", "--steer"]
    assert main([*steer, "IO"]) == 2
    assert "--steer 'IO': use VARIABLE=VALUE, e.g. IO=Alice" in capsys.readouterr().err
