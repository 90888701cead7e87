"""Hugging Face-format models without the hub: random GPT-2- and Pythia-shaped `transformers`
models saved into a local folder and into an offline Hugging Face cache laid out as a download,
loaded by `load_model` through TransformerLens's conversion. Logits are compared raw (atol
1e-4): `load_model` folds LayerNorm and centres the writing weights, which keep the logits,
and leaves the unembedding uncentred. Every test fails if anything opens a network connection."""

import json
import socket
import time

import pytest
import torch

import circuits.loaders as L
import circuits.loaders.pretrained as P
from circuits.attribution.splice import spliced
from circuits.circuit.config import DiscoverConfig
from circuits.circuit.discover import discover
from circuits.circuit.graph import METRIC
from circuits.circuit.record import record_of
from circuits.core.errors import CircuitsError
from circuits.core.vocab import hook_names
from tasks.jsonl import load_task_jsonl
from tests.helpers import random_saes
from tests.hf_builders import (
    COMMIT,
    gpt2_model,
    gpt2_tokenizer,
    neox_model,
    neox_tokenizer,
    put_in_hub_cache,
    save_folder,
)

ATOL = 1e-4
PROMPTS = [
    "When Mary and John went to the store , John gave a book to",
    "Then Alice and Bob went to the park , Bob gave a ring to",
]


@pytest.fixture(scope="module")
def hf():
    """The transformers models and tokenizers, built once."""
    gpt2_tok, neox_tok = gpt2_tokenizer(), neox_tokenizer()
    return {
        "gpt2": (gpt2_model(len(gpt2_tok)), gpt2_tok),
        "pythia": (neox_model(len(neox_tok)), neox_tok),
    }


@pytest.fixture(scope="module")
def caches(hf, tmp_path_factory):
    """Two hub caches: GPT-2 under TransformerLens's id (``gpt2``, as its own download leaves
    it) with Pythia, and GPT-2 under the hub's current id (``openai-community/gpt2``)."""
    legacy, moved = tmp_path_factory.mktemp("hf-cache-legacy"), tmp_path_factory.mktemp("hf-cache-moved")
    put_in_hub_cache(legacy, "gpt2", *hf["gpt2"])
    put_in_hub_cache(legacy, "EleutherAI/pythia-70m", *hf["pythia"])
    put_in_hub_cache(moved, "openai-community/gpt2", *hf["gpt2"])
    return {"gpt2": legacy, "openai-community/gpt2": moved}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Record (and refuse) every attempt to open a connection; none may happen."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    yield
    assert not attempts, f"tried the network: {attempts}"


def use_cache(monkeypatch, cache, offline_env: bool = True) -> None:
    """Point huggingface_hub (environment and its constants, read at import) at ``cache``;
    ``offline_env``: HF_HUB_OFFLINE set, else the hub is only unreachable."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(cache.parent / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HOME", str(cache.parent / "hf-home"))
    if offline_env:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(P, "hub_reachable", lambda: False)


def max_logit_diff(model, hf_model, tokenizer) -> float:
    """max |logit difference| between the HookedTransformer and the transformers model on each
    prompt (BOS first), after checking that both tokenise it alike."""
    diffs = []
    for prompt in PROMPTS:
        tokens = torch.tensor([[tokenizer.bos_token_id, *tokenizer.encode(prompt, add_special_tokens=False)]])
        assert torch.equal(model.to_tokens(prompt, prepend_bos=True), tokens)
        with torch.no_grad():
            ours, theirs = model(tokens), hf_model(tokens).logits
        assert ours.shape == theirs.shape
        diffs.append(float((ours - theirs).abs().max()))
    return max(diffs)


def test_the_cache_is_laid_out_as_a_download(caches):
    repo = caches["openai-community/gpt2"] / "models--openai-community--gpt2"
    assert (repo / "refs" / "main").read_text() == COMMIT
    snapshot = repo / "snapshots" / COMMIT
    names = {p.name for p in snapshot.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert all(p.is_symlink() and p.resolve().parent == repo / "blobs" for p in snapshot.iterdir())


@pytest.mark.parametrize("repo", ["gpt2", "openai-community/gpt2"])
def test_gpt2_from_the_offline_cache_has_the_transformers_logits(hf, caches, monkeypatch, repo, capsys):
    use_cache(monkeypatch, caches[repo])
    start = time.perf_counter()
    model = L.load_model("gpt2")
    seconds = time.perf_counter() - start
    assert model.cfg.model_name == "gpt2" and model.cfg.n_layers == 2 and model.cfg.d_model == 64
    diff = max_logit_diff(model, *hf["gpt2"])
    with capsys.disabled():
        print(f"\nHF-format GPT-2 ({repo} in the cache): max |logit diff| {diff:.2e}, loaded in {seconds:.2f} s")
    assert diff < ATOL


def test_pythia_from_the_offline_cache_has_the_transformers_logits(hf, caches, monkeypatch, capsys):
    use_cache(monkeypatch, caches["gpt2"])
    model = L.load_model("pythia-70m")
    assert model.cfg.model_name == "pythia-70m" and model.cfg.parallel_attn_mlp
    assert model.cfg.positional_embedding_type == "rotary" and model.cfg.rotary_dim == 4
    diff = max_logit_diff(model, *hf["pythia"])
    with capsys.disabled():
        print(f"\nHF-format Pythia (GPT-NeoX): max |logit diff| {diff:.2e}")
    assert diff < ATOL


def test_an_unreachable_hub_without_offline_mode_reads_the_cache(hf, caches, monkeypatch):
    use_cache(monkeypatch, caches["openai-community/gpt2"], offline_env=False)
    assert max_logit_diff(L.load_model("gpt2"), *hf["gpt2"]) < ATOL


@pytest.mark.parametrize("kind", ["gpt2", "pythia"])
def test_a_hugging_face_folder_loads_with_the_transformers_logits(hf, tmp_path, kind):
    folder = save_folder(*hf[kind], tmp_path / f"my-{kind}")
    if kind == "gpt2":  # as transformers >= 5 writes it, without n_ctx (TransformerLens reads it)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "n_ctx"}))
    model = L.load_model(str(folder))
    assert model.cfg.model_name == f"my-{kind}"
    assert max_logit_diff(model, *hf[kind]) < ATOL


def test_a_model_missing_from_the_offline_cache_is_one_line(caches, monkeypatch):
    use_cache(monkeypatch, caches["openai-community/gpt2"])
    with pytest.raises(CircuitsError, match=r"cannot download 'EleutherAI/pythia-160m'.*not in the local cache"):
        L.load_model("pythia-160m")


def test_a_partial_download_is_one_line(hf, tmp_path, monkeypatch):
    snapshot = put_in_hub_cache(tmp_path / "cache", "gpt2", *hf["gpt2"])
    (snapshot / "model.safetensors").unlink()  # an interrupted download
    use_cache(monkeypatch, tmp_path / "cache")
    with pytest.raises(CircuitsError) as err:
        L.load_model("gpt2")
    assert "\n" not in str(err.value) and "local Hugging Face cache" in str(err.value)


def test_bad_folders_are_one_line(hf, tmp_path):
    from transformers import BertConfig, FalconConfig

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CircuitsError, match=r"empty: no config.json"):
        L.load_model(str(empty))
    config = FalconConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4)
    config.architectures = ["FalconForCausalLM"]
    config.save_pretrained(tmp_path / "falcon")
    with pytest.raises(CircuitsError, match=r"TransformerLens cannot convert architecture FalconForCausalLM"):
        L.load_model(str(tmp_path / "falcon"))
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4)
    config.architectures = ["BertForMaskedLM"]
    config.save_pretrained(tmp_path / "bert")
    with pytest.raises(CircuitsError, match=r"BertForMaskedLM is not a causal language model"):
        L.load_model(str(tmp_path / "bert"))
    config.architectures = None
    config.save_pretrained(tmp_path / "bert")
    with pytest.raises(CircuitsError, match=r"bert: config.json names no architecture"):
        L.load_model(str(tmp_path / "bert"))
    folder = save_folder(*hf["gpt2"], tmp_path / "no-weights")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CircuitsError) as err:
        L.load_model(str(folder))
    assert "\n" not in str(err.value) and "model.safetensors" in str(err.value)
    folder = save_folder(*hf["gpt2"], tmp_path / "no-tokenizer")
    for f in folder.glob("tokenizer*"):
        f.unlink()
    with pytest.raises(CircuitsError, match=r"no-tokenizer: no tokenizer files"):
        L.load_model(str(folder))


def test_discover_on_the_hf_gpt2(caches, monkeypatch, tmp_path):
    use_cache(monkeypatch, caches["openai-community/gpt2"])
    model = L.load_model("gpt2")
    names = [("Mary", "John"), ("Alice", "Bob"), ("Carol", "David"), ("Emma", "Frank")]
    lines = [
        {
            "clean": f"When {a} and {b} went , {b} gave it to",
            "corrupt": f"When {a} and {b} went , {a} gave it to",
            "answer": f" {a}",
            "wrong_answer": f" {b}",
        }
        for a, b in names
    ]
    (tmp_path / "ioi.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    task = load_task_jsonl(tmp_path / "ioi.jsonl", model.tokenizer)
    assert (task.clean[:, 0] == model.tokenizer.bos_token_id).all()
    saes = random_saes(hook_names(["resid", "mlp", "attn"], range(2)), d_in=64, d_sae=128, k=8)
    with torch.no_grad():
        plain = model(task.clean)
        with spliced(model, saes):
            assert torch.equal(model(task.clean), plain)
    graph = discover(model, saes, task, DiscoverConfig(method="atp", node_threshold=0.01, top_n=20), progress=False)
    assert METRIC in graph and graph.number_of_nodes() > 1 and graph.number_of_edges() > 0
    assert record_of(graph).model.name == "gpt2"


@pytest.mark.slow
def test_a_full_size_gpt2_small_round_trips(hf, tmp_path, monkeypatch, capsys):
    """GPT-2 small's shape (12 layers, d_model 768, 12 heads, 50,257 tokens, 1,024 positions;
    124 M parameters), random weights, through the offline cache."""
    tokenizer = hf["gpt2"][1]
    model_hf = gpt2_model(50_257, n_layer=12, n_embd=768, n_head=12, n_positions=1024)
    put_in_hub_cache(tmp_path / "cache", "openai-community/gpt2", model_hf, tokenizer)
    use_cache(monkeypatch, tmp_path / "cache")
    model = L.load_model("gpt2")
    assert model.cfg.n_layers == 12 and model.cfg.d_vocab == 50_257
    diff = max_logit_diff(model, model_hf, tokenizer)
    with capsys.disabled():
        print(f"\nGPT-2 small shape (124 M, random): max |logit diff| {diff:.2e}")
    assert diff < ATOL


def test_sae_training_reads_gpt2_activations_through_the_fused_forward_and_pythia_through_hooks(hf, tmp_path):
    from circuits.core.fused import block_activations, fused_supported

    gpt2 = L.load_model(str(save_folder(*hf["gpt2"], tmp_path / "g")))
    pythia = L.load_model(str(save_folder(*hf["pythia"], tmp_path / "p")))
    assert fused_supported(gpt2) and not fused_supported(pythia)  # rotary, parallel blocks
    tokens = gpt2.to_tokens(["When Mary and John went to the store", "the cat sat on the mat"])
    hooks = ["blocks.0.hook_resid_pre", "blocks.0.hook_attn_out", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"]
    _, cache = gpt2.run_with_cache(tokens, names_filter=hooks)
    for hook, value in block_activations(gpt2, tokens, hooks).items():
        torch.testing.assert_close(value, cache[hook], atol=1e-4, rtol=1e-4, msg=hook)
