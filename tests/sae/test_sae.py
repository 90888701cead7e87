import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import sae.saeset as S
from circuits.core.errors import CircuitsError
from circuits.core.vocab import hook_names
from circuits.toy.model import load_saved_model
from sae.config import ARCHITECTURES, SAETrainConfig
from sae.evaluate import evaluate_saes
from sae.saeset import SAESet
from sae.train import train_sae_set
from tasks.corpus import corpus_tokens
from tests.helpers import tiny_sae_config


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    return load_saved_model(tiny_model_dir)


@pytest.fixture(scope="module")
def tiny_set_dir(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("saes") / "set"
    train_sae_set(tiny_model, tiny_sae_config(), folder, progress=False)
    return folder


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_each_architecture_trains_and_round_trips(arch, tiny_model, tmp_path):
    saes = train_sae_set(tiny_model, tiny_sae_config(arch=arch), tmp_path / arch, progress=False)
    assert list(saes) == ["blocks.0.hook_mlp_out", "blocks.0.hook_resid_post"]
    loaded = SAESet.load(tmp_path / arch, tiny_model)
    tokens = corpus_tokens(tiny_model.tokenizer, "roundtrip", 2, 32)
    _, cache = tiny_model.run_with_cache(tokens)
    for hook in saes:
        with torch.no_grad():
            a, b = saes[hook].encode(cache[hook]), loaded[hook].encode(cache[hook])
        assert torch.equal(a, b)
        assert saes[hook].cfg.d_sae == 64
    manifest = json.loads((tmp_path / arch / "manifest.json").read_text())
    assert set(manifest["hooks"]) == set(saes)


def test_resampling_revives_dead_latents(tiny_model, tmp_path):
    """With resampling every step, latents never stay dead for long; without it many do."""
    from sae.evaluate import evaluate_saes

    results = {}
    for every in (0, 1):
        cfg = tiny_sae_config(
            kinds=("resid",),
            width=128,
            k=2,
            n_tokens=30 * 124,
            resample_every=every,
            resample_until=0.8,
            dead_window=2,
            aux_coefficient=1.0,
        )
        saes = train_sae_set(tiny_model, cfg, tmp_path / f"r{every}", progress=False)
        results[every] = (
            evaluate_saes(tiny_model, saes, n_seqs=32, progress=False).saes["blocks.0.hook_resid_post"].dead_frac
        )
    assert results[1] < results[0]


def test_hook_names_order_and_kinds():
    assert hook_names(["resid", "attn"], [0, 1]) == [
        "blocks.0.hook_attn_out",
        "blocks.0.hook_resid_post",
        "blocks.1.hook_attn_out",
        "blocks.1.hook_resid_post",
    ]
    with pytest.raises(CircuitsError, match="unknown hook kind 'mlps'"):
        hook_names(["mlps"], [0])


def test_resume_gives_the_same_saes(tiny_model, tmp_path):
    cfg = tiny_sae_config(n_tokens=6 * 124)
    train_sae_set(tiny_model, cfg, tmp_path / "straight", progress=False)
    assert train_sae_set(tiny_model, cfg, tmp_path / "resumed", progress=False, stop_after=3) is None
    assert not (tmp_path / "resumed").exists()
    train_sae_set(tiny_model, cfg, tmp_path / "resumed", progress=False)
    for hook in ("blocks.0.hook_mlp_out", "blocks.0.hook_resid_post"):
        a = load_file(str(tmp_path / "straight" / hook / "sae_weights.safetensors"))
        b = load_file(str(tmp_path / "resumed" / hook / "sae_weights.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), hook
    assert not (tmp_path / "resumed.training").exists()


def test_resume_refuses_a_checkpoint_of_another_config(tiny_model, tmp_path):
    train_sae_set(tiny_model, tiny_sae_config(), tmp_path / "s", progress=False, stop_after=2)
    with pytest.raises(CircuitsError, match="different SAE config"):
        train_sae_set(tiny_model, tiny_sae_config(width=32), tmp_path / "s", progress=False)


def test_evaluation_matches_a_direct_computation(tiny_model, tiny_set_dir):
    saes = SAESet.load(tiny_set_dir)
    result = evaluate_saes(tiny_model, saes, n_seqs=8, seq_len=32, batch_size=8, progress=False)
    assert set(result.saes) == {"blocks.0.hook_mlp_out", "blocks.0.hook_resid_post"}
    tokens = corpus_tokens(tiny_model.tokenizer, "sae-eval/0/0", 8, 32)
    _, cache = tiny_model.run_with_cache(tokens)
    for hook, row in result.saes.items():
        x = cache[hook][:, 1:].reshape(-1, 32)
        with torch.no_grad():
            f = saes[hook].encode(x)
            fvu = (x - saes[hook].decode(f)).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        assert row.fvu == pytest.approx(fvu.item(), rel=1e-3)
        assert row.l0 == pytest.approx(4.0)  # TopK: exactly k active per token
        assert row.dead_frac == pytest.approx(((f != 0).sum(0) == 0).float().mean().item())
        expected = (row.ce_zero - row.ce_sae) / (row.ce_zero - result.ce_clean)
        assert row.ce_recovered == pytest.approx(expected)


def test_unknown_hook_lists_close_ones(tiny_model):
    with pytest.raises(CircuitsError, match=r"no hook 'blocks.0.hook_resid_pots'.*close: blocks.0.hook_resid_post"):
        S.check_hooks(tiny_model, ["blocks.0.hook_resid_pots"])
    with pytest.raises(CircuitsError, match="layer 3 does not exist"):
        tiny_sae_config(layers=(3,)).hooks(tiny_model)


def test_bad_configs():
    with pytest.raises(CircuitsError, match="unknown SAE architecture 'topkk'"):
        SAETrainConfig(arch="topkk")
    with pytest.raises(CircuitsError, match="k 40 is larger than the width 32"):
        SAETrainConfig(width=32, k=40)
    with pytest.raises(CircuitsError, match=r"100 training tokens is less than one batch \(1512 tokens\)"):
        SAETrainConfig(n_tokens=100)


def test_sequences_longer_than_the_model(tiny_model, tmp_path):
    with pytest.raises(CircuitsError, match="seq_len 64 is longer than the model's n_ctx 32"):
        train_sae_set(tiny_model, SAETrainConfig(), tmp_path / "s", progress=False)


def test_width_mismatch(tiny_set_dir):
    other = _model_with_d_model(48)
    with pytest.raises(CircuitsError, match=r"d_in 32 but the model's activation there has width 48"):
        SAESet.load(tiny_set_dir, other)


def _model_with_d_model(d_model: int):
    from circuits.toy.model import build_model
    from tests.helpers import tiny_config

    return build_model(tiny_config(d_model=d_model, n_heads=2))


@pytest.fixture
def set_copy(tiny_set_dir, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_set_dir, folder)
    return folder


def test_missing_manifest(set_copy):
    (set_copy / "manifest.json").unlink()
    with pytest.raises(CircuitsError, match="no manifest.json"):
        SAESet.load(set_copy)


def test_missing_cfg(set_copy):
    (set_copy / "blocks.0.hook_mlp_out" / "cfg.json").unlink()
    with pytest.raises(CircuitsError, match=r"blocks.0.hook_mlp_out: cfg.json is missing"):
        SAESet.load(set_copy)


def test_missing_weights(set_copy):
    (set_copy / "blocks.0.hook_mlp_out" / "sae_weights.safetensors").unlink()
    with pytest.raises(CircuitsError, match=r"sae_weights.safetensors is missing"):
        SAESet.load(set_copy)


def test_corrupt_weights(set_copy):
    (set_copy / "blocks.0.hook_mlp_out" / "sae_weights.safetensors").write_bytes(b"\x01nonsense")
    with pytest.raises(CircuitsError, match=r"sae_weights.safetensors: corrupt weights file"):
        SAESet.load(set_copy)


def test_missing_sae_in_set_is_named(tiny_set_dir):
    saes = SAESet.load(tiny_set_dir)
    with pytest.raises(CircuitsError, match=r"no SAE for hook 'blocks.0.hook_attn_out'"):
        saes["blocks.0.hook_attn_out"]


def test_unknown_release_and_id():
    with pytest.raises(CircuitsError, match=r"unknown SAE release 'gpt2-small-res-jbb'.*close: gpt2-small-res-jb"):
        S.load_release_sae("gpt2-small-res-jbb", "blocks.0.hook_resid_pre")
    with pytest.raises(CircuitsError, match=r"release 'gpt2-small-res-jb' has no SAE 'blocks.0.hook_resid'"):
        S.load_release_sae("gpt2-small-res-jb", "blocks.0.hook_resid")


def test_release_fails_fast_offline(monkeypatch, tmp_path):
    import time

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty local cache
    start = time.perf_counter()
    with pytest.raises(CircuitsError, match=r"cannot download SAE gpt2-small-res-jb/blocks.0.hook_resid_pre"):
        SAESet.from_release("gpt2-small-res-jb", {"blocks.0.hook_resid_pre": "blocks.0.hook_resid_pre"})
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_decoder_norms_on_the_weights_are_sae_lens_training_forward(arch, monkeypatch):
    """`NormsOnWeights` (and TopK's sparse decode): loss, latents and every gradient equal
    sae-lens's own training SAE with the same parameters (decoder rows of unequal norms, so
    the rescaling matters)."""
    import torch.nn.functional as F
    from sae_lens.registry import get_sae_training_class
    from sae_lens.saes.sae import TrainStepInput

    from sae.train import NormsOnWeights, training_sae

    sparse_decodes = []
    embedding_bag = F.embedding_bag
    monkeypatch.setattr(F, "embedding_bag", lambda *a, **kw: sparse_decodes.append(1) or embedding_bag(*a, **kw))

    folded = training_sae(tiny_sae_config(arch=arch, width=48, k=5), 16, "blocks.0.hook_mlp_out", "toy", seed=3)
    assert isinstance(folded, NormsOnWeights)
    plain = get_sae_training_class(arch)[0](folded.cfg)
    with torch.no_grad():
        folded.W_dec.mul_(torch.linspace(0.2, 3.0, 48)[:, None])
        folded.b_enc.normal_()
        folded.b_dec.normal_()
    plain.load_state_dict(folded.state_dict())
    x = torch.randn(40, 16, generator=torch.Generator().manual_seed(0))
    step = TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False)
    outs = [sae.training_forward_pass(step) for sae in (folded, plain)]
    assert len(sparse_decodes) == (arch == "topk")
    torch.testing.assert_close(outs[0].feature_acts, outs[1].feature_acts)
    torch.testing.assert_close(outs[0].sae_out, outs[1].sae_out)
    for out in outs:
        out.loss.backward()
    for (name, p), q in zip(folded.named_parameters(), plain.parameters(), strict=True):
        assert p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_topk_training_step_with_a_hook_on_the_latents_is_sae_lens_dense_step():
    """A hook that edits the latents must reach the decode (and its gradient the encoder):
    the sparse decode steps aside while ``hook_sae_acts_post`` has a hook."""
    from sae_lens.saes.sae import TrainStepInput

    from sae.train import training_sae

    sae = training_sae(tiny_sae_config(width=48, k=5), 16, "blocks.0.hook_mlp_out", "toy", seed=3)
    x = torch.randn(40, 16, generator=torch.Generator().manual_seed(0))
    step = TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False)
    plain = sae.training_forward_pass(step).sae_out
    sae.hook_sae_acts_post.add_hook(lambda acts, hook: acts * 2)
    try:
        out = sae.training_forward_pass(step)
    finally:
        sae.hook_sae_acts_post.remove_hooks()
    torch.testing.assert_close(out.sae_out - sae.b_dec, 2 * (plain - sae.b_dec))
    out.loss.backward()
    assert sae.W_enc.grad.abs().sum() > 0


def test_matryoshka_prefixes_are_saes_and_splice_exactly(tiny_model, tmp_path):
    from circuits.attribution.splice import spliced

    cfg = tiny_sae_config(arch="matryoshka", prefixes=(8, 32))
    assert cfg.matryoshka_widths == [8, 32, 64]
    saes = train_sae_set(tiny_model, cfg, tmp_path / "m", progress=False)
    inner = saes.prefix(8)
    tokens = corpus_tokens(tiny_model.tokenizer, "prefix", 2, 32)
    _, cache = tiny_model.run_with_cache(tokens)
    for hook in saes:
        assert saes[hook].cfg.architecture() == "jumprelu" and inner[hook].cfg.d_sae == 8
        with torch.no_grad():
            a, b = inner[hook].encode(cache[hook]), saes[hook].encode(cache[hook])[..., :8]
        # the same latents (a narrower matmul may round in another order)
        assert torch.allclose(a, b, atol=1e-6) and torch.equal(a != 0, b != 0)
    plain = tiny_model(tokens)
    for s in (saes, inner):
        with spliced(tiny_model, s) as nodes, torch.no_grad():
            assert torch.equal(tiny_model(tokens), plain)
        hook = "blocks.0.hook_resid_post"
        err = (cache[hook] - s[hook].decode(nodes[hook].latents)).norm()
        assert torch.allclose(nodes[hook].error.norm(), err)
    # the coarser dictionary leaves more to its error term
    assert nodes[hook].error.norm() > 0
    from circuits.loaders import load_saes

    assert load_saes(f"{tmp_path / 'm'}@8", tiny_model)[hook].cfg.d_sae == 8
    with pytest.raises(CircuitsError, match="the prefix width after '@' must be a whole number, got 'x'"):
        load_saes(f"{tmp_path / 'm'}@x", tiny_model)
    # the inner prefix's latents are their own parents in the full set (sae/splitting.py)
    from sae.splitting import link_sets

    (link,) = link_sets(tiny_model, [inner, saes], hook, n_seqs=16, seq_len=32)
    alive = link.coactivation[:8] > 0
    assert link.parent[:8][alive].tolist() == torch.arange(8)[alive].tolist() and alive.any()
    assert torch.allclose(link.cosine[:8], torch.ones(8))


def test_prefix_refuses_topk_and_bad_widths(tiny_set_dir):
    saes = SAESet.load(tiny_set_dir)
    with pytest.raises(CircuitsError, match="a topk SAE has no prefix SAEs"):
        saes.prefix(8)
    with pytest.raises(CircuitsError, match="matryoshka prefixes must increase"):
        tiny_sae_config(arch="matryoshka", prefixes=(32, 8))
    with pytest.raises(CircuitsError, match="prefixes are for the matryoshka architecture"):
        tiny_sae_config(prefixes=(8,))


def test_matryoshka_trains_with_its_aux_loss_and_without_resampling(tiny_model, tmp_path, monkeypatch):
    """Re-initialising dead latents broke Matryoshka sets on the toy model (sae/config.py):
    they train with sae-lens's per-level auxiliary loss instead; TopK keeps resampling."""
    import sae.train as T

    cfg = tiny_sae_config(arch="matryoshka", prefixes=(8, 32), resample_every=1)
    sae = T.training_sae(cfg, 32, "blocks.0.hook_resid_post", "tiny", 0)
    assert sae.cfg.aux_loss_coefficient == cfg.matryoshka_aux_coefficient == 1.0 and sae.cfg.use_matryoshka_aux_loss
    calls = []
    real = T.resample_dead_latents
    monkeypatch.setattr(T, "resample_dead_latents", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    T.train_sae_set(tiny_model, cfg, tmp_path / "m", progress=False)
    assert calls == []
    T.train_sae_set(tiny_model, tiny_sae_config(arch="topk", resample_every=1), tmp_path / "t", progress=False)
    assert calls
