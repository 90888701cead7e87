"""Published SAE releases, offline: random stand-ins (sae/standins.py) written into a Hugging
Face hub cache as each release's repository holds them and read by sae-lens's own loader for
the release (``SAE.from_pretrained``) with the hub unreachable, on random models of the
release's model's shape (the real layer count, a narrow stream: d_model 64), then discover ->
validate -> export -> edit. Bad releases, models and widths are one line each.

Releases: gpt2-small-res-jb (resid_pre, with an SAE on the embeddings; the sae_lens loader),
pythia-70m-deduped-res-sm (embeddings + resid_post on a parallel-attention rotary model),
gpt2-small-hook-z-kk (attn.hook_z; the connor_rob_hook_z loader reading .pt files),
gemma-scope-2b-pt-res-canonical (JumpReLU at resid_post on a Gemma-2-style model; sae-lens's
gemma_2 loader fixes d_in at Gemma-2-2b's 2,304, so the quick test builds narrow SAEs from
that loader's config with `release_saes`, and a slow test reads params.npz at the real d_in).
"""

from __future__ import annotations

import json
import math
import socket

import pytest
import torch

from circuits.attribution.splice import spliced
from circuits.circuit.config import DiscoverConfig
from circuits.circuit.discover import discover
from circuits.circuit.edit import edit_from_circuit, edit_report
from circuits.circuit.faithfulness import faithfulness_curve, ranked_nodes
from circuits.circuit.graph import METRIC, load_graph, save_graph
from circuits.circuit.record import record_of
from circuits.cli import main
from circuits.core.errors import CircuitsError
from circuits.core.vocab import EMBED_HOOK, Node
from circuits.export.circuit_tracer import write_circuit_tracer
from circuits.export.graphml import write_graphml
from sae import standins as S
from sae.saeset import SAESet
from tasks.builtin import make_task
from tests.helpers import TOK

WIDTH = 256
# Narrow streams and the first few layers (the releases' ids for those layers): quick tests.
NARROW = dict(d_model=64, n_heads=4, d_head=16, d_mlp=256, n_ctx=64, d_vocab=len(TOK))
SHAPES = {
    "gpt2-small": NARROW | dict(n_layers=3),
    "pythia-70m-deduped": NARROW | dict(n_layers=2, rotary_dim=4),  # rotary on a quarter of each head
    "gemma-2-2b": NARROW | dict(n_layers=2, d_mlp=128, n_key_value_heads=2, window_size=8),
}
RES_JB_IDS = [EMBED_HOOK, "blocks.1.hook_resid_pre", "blocks.2.hook_resid_pre"]
RES_SM_IDS = [EMBED_HOOK, "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
HOOK_Z_IDS = [f"blocks.{layer}.hook_z" for layer in range(3)]
GEMMA_IDS = [f"layer_{layer}/width_16k/canonical" for layer in range(2)]
N = 4  # prompt pairs


@pytest.fixture(scope="module")
def models():
    return {name: S.standin_model(S.model_config(name, **shape)) for name, shape in SHAPES.items()}


@pytest.fixture(scope="module")
def cache(models, tmp_path_factory):
    """One hub cache with the three file-based releases, calibrated on the stand-in models."""
    folder = tmp_path_factory.mktemp("hub-cache")
    gpt2, pythia = models["gpt2-small"], models["pythia-70m-deduped"]
    S.write_release("gpt2-small-res-jb", folder, gpt2.cfg, RES_JB_IDS, width=WIDTH, calibrate_on=gpt2)
    S.write_release("pythia-70m-deduped-res-sm", folder, pythia.cfg, RES_SM_IDS, width=WIDTH, calibrate_on=pythia)
    S.write_release("gpt2-small-hook-z-kk", folder, gpt2.cfg, HOOK_Z_IDS, width=WIDTH, calibrate_on=gpt2)
    return folder


@pytest.fixture
def offline(cache, monkeypatch):
    """The hub unreachable (a refused endpoint) and the stand-ins' cache the only one; returns it."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", S.UNREACHABLE)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return cache


def pipeline(model, saes, tmp_path) -> dict:
    """The spliced model's logits are the model's; discover -> validate -> export -> edit run."""
    task = make_task("ioi", model.tokenizer, n=N)
    with torch.no_grad():
        plain = model(task.clean)
        with spliced(model, saes):
            assert torch.equal(model(task.clean), plain)
    graph = discover(model, saes, task, DiscoverConfig(method="atp", top_n=20), progress=False)
    assert METRIC in graph and graph.number_of_nodes() > 2 and graph.number_of_edges() > 0
    assert set(record_of(graph).saes) == set(saes)
    held_out = make_task("ioi", model.tokenizer, n=N, seed=1)
    curve = faithfulness_curve(model, saes, held_out, ranked_nodes(graph), n_random=1, progress=False)
    assert math.isfinite(curve.faithfulness) and curve.curve
    files = [save_graph(graph, tmp_path / "circuit.json"), write_graphml(graph, tmp_path / "circuit.graphml")]
    files += write_circuit_tracer(graph, tmp_path / "ct")
    assert all(f.is_file() for f in files)
    assert load_graph(tmp_path / "circuit.json").number_of_nodes() == graph.number_of_nodes()
    edit = edit_from_circuit(graph, 5, "zero")
    report = edit_report(model, saes, edit.check(saes), "ioi", n=N, n_completions=1)
    assert "ioi" in report.tasks
    return {"graph": graph, "curve": curve, "report": report}


def test_res_jb_through_sae_lens_loader(models, offline, tmp_path):
    model = models["gpt2-small"]
    saes = SAESet.from_release("gpt2-small-res-jb", RES_JB_IDS, model=model)
    assert list(saes) == RES_JB_IDS
    sae = saes[EMBED_HOOK]
    assert type(sae).__name__ == "StandardSAE" and (sae.cfg.d_in, sae.cfg.d_sae) == (64, WIDTH)
    assert sae.cfg.apply_b_dec_to_input and sae.cfg.normalize_activations == "none"
    assert sae.cfg.metadata.model_from_pretrained_kwargs == {"center_writing_weights": True}  # the registry's
    out = pipeline(model, saes, tmp_path)
    # the embeddings' SAE splits the inputs into latents and an error term, each its own node
    embeds = [Node.from_attrs(a) for _, a in out["graph"].nodes(data=True) if a.get("kind") == "embed"]
    assert len({n.id for n in embeds}) == len(embeds)


def test_embedding_sae_latents_have_their_own_ids():
    """Regression: every latent of an SAE on the embeddings (and its error term) had the id
    ``embed@<label>``, so a circuit kept one of them per position."""
    labels = ["BOS", "IO"]
    ids = {Node.at(EMBED_HOOK, 1, latent, labels).id for latent in (None, 3, 17)}
    assert ids == {"embed@IO", "embed/3@IO", "embed/17@IO"}
    node = Node.at(EMBED_HOOK, 1, 17, labels)
    assert Node.from_attrs(node.attrs(0.5, 1.0)) == node


def test_res_sm_on_a_pythia_shaped_model(models, offline, tmp_path):
    model = models["pythia-70m-deduped"]
    assert model.cfg.parallel_attn_mlp and model.cfg.rotary_dim == 4
    saes = SAESet.from_release("pythia-70m-deduped-res-sm", RES_SM_IDS, model=model)
    assert list(saes) == RES_SM_IDS
    assert all(s.cfg.apply_b_dec_to_input and type(s).__name__ == "StandardSAE" for s in saes.values())
    pipeline(model, saes, tmp_path)


def test_hook_z_kk_through_its_pt_loader(models, offline, tmp_path):
    model = models["gpt2-small"]
    repo = S.repo_folder(offline, "ckkissane/attn-saes-gpt2-small-all-layers") / "snapshots" / S.COMMIT
    assert sorted(p.suffix for p in repo.iterdir())[:2] == [".json", ".json"]  # the _cfg.json beside each .pt
    saes = SAESet.from_release("gpt2-small-hook-z-kk", HOOK_Z_IDS, model=model)
    assert list(saes) == [f"blocks.{i}.attn.hook_z" for i in range(3)]
    assert all(s.cfg.d_in == 4 * 16 and not s.hook_z_reshaping_mode for s in saes.values())
    pipeline(model, saes, tmp_path)


def test_gemma_scope_config_on_a_gemma_2_style_model(models, tmp_path):
    model = models["gemma-2-2b"]
    assert model.cfg.use_normalization_before_and_after and model.cfg.n_key_value_heads == 2
    saes = S.release_saes("gemma-scope-2b-pt-res-canonical", model.cfg, GEMMA_IDS, width=WIDTH, calibrate_on=model)
    assert list(saes) == [f"blocks.{i}.hook_resid_post" for i in range(2)]
    sae = saes["blocks.0.hook_resid_post"]
    assert type(sae).__name__ == "JumpReLUSAE" and not sae.cfg.apply_b_dec_to_input
    assert sae.cfg.metadata.model_name == "gemma-2-2b" and sae.threshold.min() > 0
    pipeline(model, saes, tmp_path)


@pytest.mark.slow
def test_gemma_scope_params_npz_through_its_loader(tmp_path, monkeypatch):
    """sae-lens's gemma_2 loader reads params.npz at Gemma-2-2b's d_in (2,304) and the folder's
    width (16,384), on a one-layer model of Gemma-2-2b's width."""
    from huggingface_hub import constants

    cfg = S.model_config("gemma-2-2b", n_layers=1, d_mlp=1024, n_ctx=64, d_vocab=len(TOK))
    model = S.standin_model(cfg)
    S.write_release("gemma-scope-2b-pt-res-canonical", tmp_path / "cache", cfg, GEMMA_IDS[:1], calibrate_on=model)
    monkeypatch.setattr(constants, "ENDPOINT", S.UNREACHABLE)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    saes = SAESet.from_release("gemma-scope-2b-pt-res-canonical", GEMMA_IDS[:1], model=model)
    sae = saes["blocks.0.hook_resid_post"]
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (2304, 16384) and type(sae).__name__ == "JumpReLUSAE"
    pipeline(model, saes, tmp_path)


# ------------------------------------------------------------------------------ the command line
@pytest.fixture
def no_network(monkeypatch):
    """Refuse (and record) every connection but the refused endpoint's quick probe."""
    attempts = []
    real = socket.create_connection

    def guarded(address, *args, **kwargs):
        attempts.append(address)
        if address[0] != "127.0.0.1":
            raise OSError("network disabled in this test")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)
    yield attempts
    assert all(a[0] == "127.0.0.1" for a in attempts), attempts


def cli_round_trip(hub, saes: str, tmp_path, monkeypatch, capsys, n_layers: int, export: list[str]) -> None:
    """discover -> validate -> export -> edit through ``main``, with ``--model gpt2`` (a random
    GPT-2-shaped transformers model of ``n_layers`` in the hub cache ``hub``) and ``--saes
    saes``, the hub unreachable."""
    from huggingface_hub import constants

    name = S.write_model("gpt2-small", hub, **(NARROW | dict(n_layers=n_layers)))
    for key, value in S.offline_env(hub).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(constants, "ENDPOINT", S.UNREACHABLE)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    out = tmp_path / "out"
    common = ["--model", name, "--saes", saes, "--task", "ioi", "--n", str(N), "--quiet"]
    assert main(["discover", *common, "--method", "atp", "--top-n", "20", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "feature nodes" in printed.out and "warning" not in printed.err, printed.err
    circuit = out / "circuit.json"
    graph = load_graph(circuit)
    assert record_of(graph).sources.saes == saes and record_of(graph).model.name == "gpt2"
    assert main(["validate", "--circuit", str(circuit), "--n", str(N), "--json", "--quiet"]) == 0
    assert math.isfinite(json.loads(capsys.readouterr().out)["faithfulness"])
    assert main(["export", "--circuit", str(circuit), "--format", "circuit-tracer", *export, "--quiet"]) == 0
    assert (out / "circuit-tracer" / "ioi.json").is_file()
    capsys.readouterr()
    assert main(["edit", "--circuit", str(circuit), "--top", "5", "--n", str(N), "--json", "--quiet"]) == 0
    assert "ioi" in json.loads(capsys.readouterr().out)["tasks"]


def test_res_jb_ids_through_the_command_line(models, tmp_path, monkeypatch, no_network, capsys):
    """``--model gpt2 --saes gpt2-small-res-jb:ID,ID,ID`` as a user passes them: a 3-layer
    GPT-2-shaped model and the release's first three SAEs, both in the local hub cache."""
    hub = tmp_path / "hub"
    S.write_release("gpt2-small-res-jb", hub, models["gpt2-small"].cfg, RES_JB_IDS, width=WIDTH)
    saes = "gpt2-small-res-jb:" + ",".join(RES_JB_IDS)
    cli_round_trip(hub, saes, tmp_path, monkeypatch, capsys, 3, ["--no-descriptions"])


@pytest.mark.slow
def test_res_jb_through_the_command_line(tmp_path, monkeypatch, no_network, capsys):
    """``--model gpt2 --saes gpt2-small-res-jb``: the whole release (13 SAEs) on a 12-layer
    GPT-2-shaped model (d_model 64), feature cards in the export."""
    hub = tmp_path / "hub"
    cfg = S.model_config("gpt2-small", **NARROW)
    S.write_release("gpt2-small-res-jb", hub, cfg, width=WIDTH, calibrate_on=S.standin_model(cfg))
    cli_round_trip(hub, "gpt2-small-res-jb", tmp_path, monkeypatch, capsys, 12, [])


# ------------------------------------------------------------------------------ bad input: one line
def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_unknown_release_names_close_ones(models, offline, tiny_model_dir, capsys):
    with pytest.raises(CircuitsError, match=r"unknown SAE release 'gpt2-small-res-jbb'.*close: gpt2-small-res-jb"):
        SAESet.from_release("gpt2-small-res-jbb", model=models["gpt2-small"])
    argv = ["discover", "--task", "ioi", "--model", str(tiny_model_dir), "--saes", "pythia-70m-dedupd-res-sm"]
    assert main([*argv, "--quiet"]) == 2
    err = one_line(capsys)
    assert "unknown SAE release 'pythia-70m-dedupd-res-sm'" in err and "close: pythia-70m-deduped-res-sm" in err


def test_a_release_on_a_model_without_its_hooks(models, offline):
    pythia = models["pythia-70m-deduped"]  # 2 layers: res-jb reads blocks 0-11
    with pytest.raises(CircuitsError) as err:
        SAESet.from_release("gpt2-small-res-jb", model=pythia)
    assert str(err.value) == (
        "release 'gpt2-small-res-jb' has an SAE at blocks.2.hook_resid_pre, which pythia-70m-deduped-standin "
        "(2 layers) does not have"
    )
    gemma = models["gemma-2-2b"]  # Gemma Scope's ids name no hook: its configs say which
    with pytest.raises(
        CircuitsError, match=r"has an SAE at blocks.3.hook_resid_post \(layer_3/width_16k/canonical\), "
    ):
        SAESet.from_release("gemma-scope-2b-pt-res-canonical", ["layer_3/width_16k/canonical"], model=gemma)


def test_widths_that_do_not_fit_the_model(models, offline, tmp_path, monkeypatch):
    from huggingface_hub import constants

    pythia, gpt2 = models["pythia-70m-deduped"], models["gpt2-small"]
    wide = S.model_config("pythia-70m-deduped", **(SHAPES["pythia-70m-deduped"] | dict(d_model=96, d_head=24)))
    S.write_release("pythia-70m-deduped-res-sm", tmp_path, wide, ["blocks.0.hook_resid_post"], width=WIDTH)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CircuitsError) as err:  # before any weights are read
        SAESet.from_release("pythia-70m-deduped-res-sm", ["blocks.0.hook_resid_post"], model=pythia)
    assert str(err.value) == (
        "SAE pythia-70m-deduped-res-sm/blocks.0.hook_resid_post has d_in 96 but the model's activation there "
        "has width 64 (pythia-70m-deduped-standin's d_model)"
    )
    # weights of another width than the config says: sae-lens's load_state_dict, in one line
    S.write_release("gpt2-small-res-jb", tmp_path, gpt2.cfg, [EMBED_HOOK], width=WIDTH, cfg_overrides={"d_sae": 300})
    with pytest.raises(CircuitsError) as err:
        SAESet.from_release("gpt2-small-res-jb", [EMBED_HOOK], model=gpt2)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("SAE gpt2-small-res-jb/blocks.0.hook_resid_pre: its weights do not fit its config")
    assert "size mismatch for W_dec" in str(err.value)


def test_hook_z_on_a_model_with_other_heads(offline, tmp_path, monkeypatch):
    from huggingface_hub import constants

    narrow = S.model_config("gpt2-small", **(NARROW | dict(n_layers=2, n_heads=2)))  # 2 heads x 16 = 32
    S.write_release("gpt2-small-hook-z-kk", tmp_path, narrow, HOOK_Z_IDS[:1], width=WIDTH)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    gpt2_shaped = S.standin_model(S.model_config("gpt2-small", **(NARROW | dict(n_layers=2))))  # 4 heads x 16
    with pytest.raises(CircuitsError) as err:
        SAESet.from_release("gpt2-small-hook-z-kk", HOOK_Z_IDS[:1], model=gpt2_shaped)
    assert str(err.value) == (
        "SAE gpt2-small-hook-z-kk/blocks.0.hook_z (at blocks.0.attn.hook_z) has d_in 32 but "
        "gpt2-small-standin's heads there are 4 x d_head 16 = 64"
    )


def test_an_architecture_sae_lens_does_not_know(models, offline, tmp_path, monkeypatch):
    from huggingface_hub import constants

    gpt2 = models["gpt2-small"]
    S.write_release(
        "gpt2-small-res-jb", tmp_path, gpt2.cfg, [EMBED_HOOK], width=WIDTH, cfg_overrides={"architecture": "gatedd"}
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CircuitsError) as err:
        SAESet.from_release("gpt2-small-res-jb", [EMBED_HOOK], model=gpt2)
    assert str(err.value).startswith(
        "SAE gpt2-small-res-jb/blocks.0.hook_resid_pre: architecture 'gatedd' is not one sae-lens 6.54"
    )
    assert ", gated, jumprelu, " in str(err.value) and "\n" not in str(err.value)


def test_two_saes_at_one_hook_and_hooks_circuits_do_not_read(models, offline):
    gemma = models["gemma-2-2b"]
    with pytest.raises(CircuitsError) as err:  # every id: six widths at layer 12, and a 26-layer model's hooks
        SAESet.from_release("gemma-scope-2b-pt-res-canonical", model=gemma)
    assert str(err.value).startswith("release 'gemma-scope-2b-pt-res-canonical' has 2 SAEs at blocks.0.hook_resid_post")
    assert "layer_0/width_16k/canonical, layer_0/width_65k/canonical" in str(err.value)
    assert "name one per hook (--saes gemma-scope-2b-pt-res-canonical:ID,ID)" in str(err.value)
    with pytest.raises(
        CircuitsError, match=r"pt-res', SAE 'embedding/width_4k/average_l0_6': hook 'hook_embed': circuits are"
    ):
        SAESet.from_release("gemma-scope-2b-pt-res", ["embedding/width_4k/average_l0_6"], model=gemma)


def test_a_release_missing_from_the_offline_cache(models, offline, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # empty
    with pytest.raises(
        CircuitsError, match=r"^cannot download SAE pythia-70m-deduped-res-sm/blocks.0.hook_resid_pre: "
    ):
        SAESet.from_release("pythia-70m-deduped-res-sm", RES_SM_IDS, model=models["pythia-70m-deduped"])


def test_resid_mid_on_a_model_that_never_computes_it(models):
    from tests.helpers import random_saes

    saes = random_saes(["blocks.1.hook_resid_mid"], d_in=64)
    with pytest.raises(CircuitsError) as err:
        saes.check_model(models["pythia-70m-deduped"])
    assert str(err.value) == (
        "SAE for blocks.1.hook_resid_mid: pythia-70m-deduped-standin runs attention and MLP in parallel, "
        "so it never computes blocks.1.hook_resid_mid"
    )


def test_gemma_scope_files_need_gemma_2_2b_width(models, tmp_path):
    """sae-lens's gemma_2 loader reads d_in from the repository's name: its files cannot fit a
    narrower stand-in, which release_saes builds instead."""
    cfg, release = models["gemma-2-2b"].cfg, "gemma-scope-2b-pt-res-canonical"
    with pytest.raises(CircuitsError, match=r"fixes d_in at 2304 .* stand-in model's width is 64 \(use release_saes\)"):
        S.write_release(release, tmp_path, cfg, GEMMA_IDS[:1])
    with pytest.raises(CircuitsError, match=r"reads d_sae 16384 from the folder's name"):
        S.write_release(release, tmp_path, cfg, GEMMA_IDS[:1], width=512)
