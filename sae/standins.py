"""Offline stand-ins for published SAE releases: random SAEs with a release's configuration,
in the files its own sae-lens loader reads, and random models of its model's shape.

`write_release(release, cache_dir, model_cfg)` reads the release's entry in the installed
sae-lens's registry (``sae_lens/pretrained_saes.yaml``) and writes one random SAE per id —
at the release's hook, with its architecture, normalisation flags and width — into a Hugging
Face hub cache laid out as a download of the release's repository leaves it
(``models--org--name/{blobs/<hash>, snapshots/<commit>/<path>, refs/main}``), in the format of
the loader the registry names for it (``conversion_func``):

==========================  =======================================  ===================================================
loader                      e.g.                                     files of one SAE (``path``: the registry's)
==========================  =======================================  ===================================================
``sae_lens`` (the default)  gpt2-small-res-jb,                       ``path/cfg.json``, ``path/sae_weights.safetensors``
                            pythia-70m-deduped-res-sm                (res-jb also ``path/sparsity.safetensors``)
``connor_rob_hook_z``       gpt2-small-hook-z-kk                     ``path`` (a ``.pt`` state dict, the release's own
                                                                     format) and ``path``'s stem + ``_cfg.json``
``gemma_2``                 gemma-scope-2b-pt-res-canonical          ``path/params.npz``
==========================  =======================================  ===================================================

`SAE.from_pretrained` — so `SAESet.from_release` and ``--saes RELEASE`` — then reads them
with the hub unreachable, through the loader's own code. Each SAE's d_in is the stand-in
model's width at its hook; its width is the release's own (res-jb 24,576; res-sm 32,768;
hook-z-kk the ``ds<width>`` in each file name; Gemma Scope the folder's ``width_16k``) unless
``width`` says otherwise. Config files hold the fields the release's files hold as far as
they are known here (res-jb's and hook-z-kk's from sae-lens's own tests and source; res-sm's
are the fields sae-lens reads), with ``hook``, ``d_in`` and ``d_sae`` the stand-in's.

sae-lens's ``gemma_2`` loader derives d_in from the repository's name (2,304 for
``gemma-scope-2b-*``: Gemma-2-2b's d_model) and d_sae from the folder's, whatever the files
hold, so a Gemma Scope stand-in read through it needs a model of Gemma-2-2b's width.
`release_saes` builds narrower ones in memory instead: the loader's own config for each id
(its config getter reads no file) with d_in and d_sae replaced, the SAE made from it by
sae-lens's config class, and the same random weights.

Models: `model_config(name)` is the shape of a release's model (the registry's ``model``:
``gpt2-small``, ``pythia-70m-deduped``, ``gemma-2-2b`` — the last one TransformerLens's own
config), with a vocabulary at least the toy tokenizer's, so that the project's tasks run on
it; `standin_model` is a random HookedTransformer of a shape with that tokenizer, and
`write_model` puts a random ``transformers`` model of the shape (GPT-2 and Pythia) with that
tokenizer into the hub cache under the model's hub id, where ``load_model("gpt2")`` finds it
offline.

The weights are random: each decoder row a random unit vector, the encoder its transpose
scaled by ``2 d_in / d_sae``, small random biases. Calibrated on a model (``calibrate_on``),
the encoder biases (JumpReLU: thresholds) let about ``l0`` latents fire per token of
toy-language text, as in a trained SAE; without, about half fire.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import save_file

from circuits.core.errors import CircuitsError
from circuits.core.vocab import Submodule, activation_width
from sae.saeset import SAESet, release_entry
from tasks.tokenizer import build_tokenizer

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

COMMIT = "5ae1c0ffee" * 4  # the snapshot's (made-up) commit
LFS_SUFFIXES = (".safetensors", ".npz", ".pt", ".bin")  # stored with Git LFS on the hub: blob = sha256
UNREACHABLE = "http://127.0.0.1:9"  # a hub endpoint nothing answers (connection refused at once)

# ------------------------------------------------------------------------------------ models
# The shapes of the models the releases were trained on (HookedTransformerConfig fields).
GPT2_SMALL = dict(
    n_layers=12,
    d_model=768,
    n_heads=12,
    d_head=64,
    d_mlp=3072,
    n_ctx=1024,
    d_vocab=50257,
    act_fn="gelu_new",
    normalization_type="LN",
    eps=1e-5,
)
PYTHIA_70M = dict(
    n_layers=6,
    d_model=512,
    n_heads=8,
    d_head=64,
    d_mlp=2048,
    n_ctx=2048,
    d_vocab=50304,
    act_fn="gelu",
    normalization_type="LN",
    eps=1e-5,
    positional_embedding_type="rotary",
    rotary_dim=16,
    rotary_adjacent_pairs=False,
    parallel_attn_mlp=True,
)
HUB_IDS = {
    "gpt2-small": "gpt2",
    "pythia-70m-deduped": "EleutherAI/pythia-70m-deduped",
    "gemma-2-2b": "google/gemma-2-2b",
}


def model_shape(name: str) -> dict:
    """HookedTransformerConfig fields of a release's model (the registry's ``model`` name)."""
    if name == "gpt2-small":
        return dict(GPT2_SMALL)
    if name == "pythia-70m-deduped":
        return dict(PYTHIA_70M)
    if name == "gemma-2-2b":  # TransformerLens keeps Gemma-2's configs itself (no download)
        from transformer_lens.loading_from_pretrained import convert_hf_model_config

        shape = convert_hf_model_config(HUB_IDS[name])
        for key in ("original_architecture", "quantization_method", "tokenizer_name", "initializer_range"):
            shape.pop(key, None)
        return shape
    raise CircuitsError(f"no stand-in shape for model {name!r} (known: {', '.join(HUB_IDS)})")


def model_config(name: str, seed: int = 0, **overrides) -> HookedTransformerConfig:
    """The shape of model ``name`` (``gpt2-small``, ``pythia-70m-deduped``, ``gemma-2-2b``) with
    ``overrides`` (fewer layers, a narrower stream...); the vocabulary is at least the toy
    tokenizer's, so the project's tasks run on it."""
    from transformer_lens import HookedTransformerConfig

    shape = model_shape(name)
    shape["d_vocab"] = max(shape["d_vocab"], len(build_tokenizer()))
    shape.update(overrides)
    if shape.get("positional_embedding_type") == "rotary" and "rotary_dim" not in overrides:
        shape["rotary_dim"] = min(shape.get("rotary_dim") or shape["d_head"], shape["d_head"])
    if "attn_types" in shape:  # Gemma-2 alternates local and global attention, one per layer
        shape["attn_types"] = (shape["attn_types"] * shape["n_layers"])[: shape["n_layers"]]
    return HookedTransformerConfig(**shape, model_name=f"{name}-standin", seed=seed)


def standin_model(cfg: HookedTransformerConfig, seed: int = 0) -> HookedTransformer:
    """A HookedTransformer of shape ``cfg`` with random weights and the toy tokenizer (eval mode)."""
    from transformer_lens import HookedTransformer

    torch.manual_seed(seed)
    model = HookedTransformer(cfg, tokenizer=build_tokenizer())
    with torch.no_grad():  # biases start at 0: make them count
        for name, p in model.named_parameters():
            if name.split(".")[-1].startswith("b_"):
                p.normal_(0, 0.02)
    return model.eval()


def write_model(name: str, cache_dir: str | Path, seed: int = 0, **overrides) -> str:
    """A random ``transformers`` model of ``name``'s shape (``gpt2-small``: GPT2LMHeadModel;
    ``pythia-70m-deduped``: GPTNeoXForCausalLM) with the toy tokenizer, saved into the hub
    cache ``cache_dir`` under the model's hub id, which is returned: ``load_model`` of it reads
    the cache when the hub is unreachable."""
    cfg = model_config(name, **overrides)
    hf = _hf_model(name, cfg, seed)
    with tempfile.TemporaryDirectory(prefix="standin-model-") as tmp:
        hf.save_pretrained(tmp)
        build_tokenizer().save_pretrained(tmp)
        del hf
        for f in sorted(Path(tmp).iterdir()):
            put_file(cache_dir, HUB_IDS[name], f.name, lambda dest, f=f: os.replace(f, dest))
    return HUB_IDS[name]


def _hf_model(name: str, cfg: HookedTransformerConfig, seed: int):
    torch.manual_seed(seed)
    tok = build_tokenizer()
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.bos_token_id)
    if name == "gpt2-small":
        from transformers import GPT2Config, GPT2LMHeadModel

        hf_cfg = GPT2Config(
            vocab_size=cfg.d_vocab,
            n_positions=cfg.n_ctx,
            n_ctx=cfg.n_ctx,  # TransformerLens reads it; the hub's gpt2 config.json has it
            n_embd=cfg.d_model,
            n_layer=cfg.n_layers,
            n_head=cfg.n_heads,
            n_inner=cfg.d_mlp,
            activation_function=cfg.act_fn,
            layer_norm_epsilon=cfg.eps,
            **ids,
        )
        model = GPT2LMHeadModel(hf_cfg)
    elif name == "pythia-70m-deduped":
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

        hf_cfg = GPTNeoXConfig(
            vocab_size=cfg.d_vocab,
            hidden_size=cfg.d_model,
            num_hidden_layers=cfg.n_layers,
            num_attention_heads=cfg.n_heads,
            intermediate_size=cfg.d_mlp,
            max_position_embeddings=cfg.n_ctx,
            rotary_pct=cfg.rotary_dim / cfg.d_head,
            rope_theta=10_000,
            use_parallel_residual=True,
            tie_word_embeddings=False,
            hidden_act=cfg.act_fn,
            layer_norm_eps=cfg.eps,
            **ids,
        )
        model = GPTNeoXForCausalLM(hf_cfg)
    else:
        raise CircuitsError(
            f"no transformers stand-in for {name!r}: TransformerLens takes its config from the model's "
            "name, not from the files (use standin_model)"
        )
    with torch.no_grad():  # biases start at 0: make them count
        for pname, p in model.named_parameters():
            if pname.endswith("bias"):
                p.normal_(0, 0.02)
    return model.eval()


# ------------------------------------------------------------------------------------ hub cache
def repo_folder(cache_dir: str | Path, repo_id: str) -> Path:
    """Where the hub cache ``cache_dir`` keeps model repository ``repo_id``."""
    return Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))


def put_file(cache_dir: str | Path, repo_id: str, path: str, write: Callable[[Path], None]) -> Path:
    """One file of ``repo_id`` at `COMMIT` in the hub cache, as a download leaves it: ``write``
    fills a new file, which becomes ``blobs/<its hash>`` (sha256 for LFS files, git's blob
    hash for the others), linked from ``snapshots/<COMMIT>/<path>``; ``refs/main`` names the
    commit. Returns the snapshot entry."""
    repo = repo_folder(cache_dir, repo_id)
    blobs = repo / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    incoming = blobs / f".incoming-{os.getpid()}"
    write(incoming)
    blob = blobs / _blob_name(incoming, lfs=path.endswith(LFS_SUFFIXES))
    os.replace(incoming, blob)
    link = repo / "snapshots" / COMMIT / path
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return link


def _blob_name(path: Path, lfs: bool) -> str:
    digest = hashlib.sha256() if lfs else hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _json_writer(data: dict) -> Callable[[Path], None]:
    return lambda dest: dest.write_text(json.dumps(data, indent=2))


@contextmanager
def offline_hub(cache_dir: str | Path) -> Iterator[None]:
    """huggingface_hub pointed at the cache ``cache_dir`` with the hub unreachable (its
    endpoint refuses connections), inside the block; the environment variables too, for
    libraries that read them."""
    from huggingface_hub import constants

    saved = {k: getattr(constants, k) for k in ("HF_HUB_CACHE", "ENDPOINT", "HF_HUB_OFFLINE")}
    saved_env = {k: os.environ.get(k) for k in offline_env(cache_dir)}
    constants.HF_HUB_CACHE, constants.ENDPOINT, constants.HF_HUB_OFFLINE = str(cache_dir), UNREACHABLE, False
    os.environ.update(offline_env(cache_dir))
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(constants, k, v)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def offline_env(cache_dir: str | Path) -> dict[str, str]:
    """Environment variables that give a new process the hub cache ``cache_dir`` and an
    unreachable hub (not HF_HUB_OFFLINE: the project notices the hub is down by itself)."""
    return {"HF_HUB_CACHE": str(cache_dir), "HF_ENDPOINT": UNREACHABLE}


# ------------------------------------------------------------------------------------ releases
def write_release(
    release: str,
    cache_dir: str | Path,
    model_cfg: HookedTransformerConfig,
    sae_ids: Iterable[str] | None = None,
    width: int | None = None,
    seed: int = 0,
    cfg_overrides: dict | None = None,
    calibrate_on: HookedTransformer | None = None,
    l0: float = 32,
) -> list[str]:
    """Write random SAEs for ``sae_ids`` of ``release`` (default: every id) into the hub cache
    ``cache_dir``, in the files and format its sae-lens loader reads, each fitting a model of
    shape ``model_cfg`` at the release's hook; ``width``: d_sae (default: the release's).
    ``calibrate_on``: a model of that shape whose activations on toy-language text set the
    encoder biases (JumpReLU: thresholds) so that about ``l0`` latents fire per token, as in
    trained SAEs (without it about half fire). ``cfg_overrides`` replace fields of the written
    config files (to make bad releases). Returns the hooks, one per id."""
    entry = release_entry(release)
    loader = entry.conversion_func or "sae_lens"
    writers = {"sae_lens": _write_sae_lens, "connor_rob_hook_z": _write_hook_z, "gemma_2": _write_gemma_2}
    if loader not in writers:
        raise CircuitsError(
            f"no stand-in for release {release!r}: its loader {loader!r} is not one this module writes "
            f"({', '.join(writers)})"
        )
    ids = _ids(release, entry, sae_ids)
    planned = {sae_id: _hook_and_width(release, entry, loader, sae_id, width) for sae_id in ids}
    acts = _activations(calibrate_on, [hook for hook, _ in planned.values()]) if calibrate_on is not None else {}
    for sae_id, (hook, d_sae) in planned.items():
        d_in = _fitting_width(release, sae_id, hook, model_cfg)
        architecture = "jumprelu" if loader == "gemma_2" else "standard"
        weights = random_weights(d_in, d_sae, architecture, (seed, release, sae_id))
        if hook in acts:
            calibrate(weights, acts[hook], l0, apply_b_dec_to_input=loader != "gemma_2")
        writers[loader](cache_dir, entry, sae_id, entry.saes_map[sae_id], hook, weights, cfg_overrides or {})
    return [hook for hook, _ in planned.values()]


def release_saes(
    release: str,
    model_cfg: HookedTransformerConfig,
    sae_ids: Iterable[str] | None = None,
    width: int | None = None,
    seed: int = 0,
    calibrate_on: HookedTransformer | None = None,
    l0: float = 32,
) -> SAESet:
    """Stand-ins for a release whose loader fixes a shape the stand-in model lacks (``gemma_2``:
    d_in from the repository's name), built in memory: for each id the loader's own config
    (its config getter, which reads no file, with the registry's overrides), d_in set to the
    model's width at the hook and d_sae to ``width`` (default: the release's), the SAE made by
    sae-lens's config class for the architecture, with `write_release`'s random weights
    (``calibrate_on``, ``l0``: as there)."""
    from sae_lens import SAE
    from sae_lens.loading.pretrained_sae_loaders import (
        NAMED_PRETRAINED_SAE_CONFIG_GETTERS,
        handle_config_defaulting,
    )
    from sae_lens.loading.pretrained_saes_directory import get_config_overrides

    entry = release_entry(release)
    loader = entry.conversion_func or "sae_lens"
    if loader != "gemma_2":
        raise CircuitsError(
            f"release {release!r} ({loader} loader) reads its config from files: use write_release and "
            "SAESet.from_release"
        )
    ids = _ids(release, entry, sae_ids)
    planned = {sae_id: _hook_and_width(release, entry, loader, sae_id, width, fixed=False) for sae_id in ids}
    acts = _activations(calibrate_on, [hook for hook, _ in planned.values()]) if calibrate_on is not None else {}
    saes = {}
    for sae_id, (hook, d_sae) in planned.items():
        d_in = _fitting_width(release, sae_id, hook, model_cfg)
        getter = NAMED_PRETRAINED_SAE_CONFIG_GETTERS[loader]
        cfg = getter(entry.repo_id, entry.saes_map[sae_id], "cpu", False, get_config_overrides(release, sae_id))
        cfg = handle_config_defaulting({**cfg, "d_in": d_in, "d_sae": d_sae})
        sae = SAE.from_dict(cfg)
        state = random_weights(d_in, d_sae, cfg["architecture"], (seed, release, sae_id))
        if hook in acts:
            calibrate(state, acts[hook], l0, apply_b_dec_to_input=cfg["apply_b_dec_to_input"])
        sae.process_state_dict_for_loading(state)
        sae.load_state_dict(state)
        if hook in saes:
            raise CircuitsError(f"release {release!r}: two of the chosen ids sit at {hook}; choose one per hook")
        saes[hook] = sae
    ordered = dict(sorted(saes.items(), key=lambda hs: Submodule.parse(hs[0]).order))
    return SAESet(ordered, entry.model)


def release_width(release: str, sae_id: str) -> int:
    """The width (d_sae) of ``sae_id`` in ``release`` as published, where known here."""
    entry = release_entry(release)
    return _hook_and_width(release, entry, entry.conversion_func or "sae_lens", sae_id, None, fixed=False)[1]


def random_weights(d_in: int, d_sae: int, architecture: str, key: tuple) -> dict[str, torch.Tensor]:
    """Random SAE parameters (sae-lens's names and layout: W_enc [d_in, d_sae], W_dec [d_sae,
    d_in]), the same for the same ``key``: unit decoder rows, the encoder their transpose
    scaled so that the reconstruction is about the input, small biases, JumpReLU thresholds
    near 0."""
    gen = torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))
    w_dec = torch.randn(d_sae, d_in, generator=gen)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    weights = {
        "W_enc": (w_dec.T * (2 * d_in / d_sae)).contiguous(),
        "W_dec": w_dec,
        "b_enc": 0.01 * torch.randn(d_sae, generator=gen),
        "b_dec": 0.02 * torch.randn(d_in, generator=gen),
    }
    if architecture == "jumprelu":
        weights["threshold"] = 1e-3 * torch.rand(d_sae, generator=gen)
    return weights


def calibrate(weights: dict[str, torch.Tensor], acts: torch.Tensor, l0: float, apply_b_dec_to_input: bool) -> None:
    """Make the encoder the decoder's transpose and set its biases (JumpReLU: the thresholds,
    biases 0) so that about ``l0`` of the latents fire on an average row of ``acts`` (``[tokens,
    d_in]``): each latent's pre-activation is about normal over tokens, so the cut sits ``z`` of
    its standard deviations above its mean, z the normal quantile of 1 - l0 / d_sae."""
    weights["W_enc"] = weights["W_dec"].T.contiguous()  # a latent's value: its direction's share of x
    x = acts - weights["b_dec"] if apply_b_dec_to_input else acts
    pre = x @ weights["W_enc"]
    d_sae = pre.shape[1]
    z = torch.special.ndtri(torch.tensor(1 - min(l0, d_sae / 2) / d_sae))
    cut = pre.mean(0) + z * pre.std(0)
    if "threshold" in weights:
        weights["b_enc"] = torch.zeros(d_sae)
        weights["threshold"] = cut.clamp_min(1e-6)
    else:
        weights["b_enc"] = -cut


CALIBRATION_TEXT = ("standins/calibrate", 16, 32)  # corpus key, sequences, tokens per sequence


@torch.no_grad()
def _activations(model: HookedTransformer, hooks: list[str]) -> dict[str, torch.Tensor]:
    """``[tokens, width]`` activations at ``hooks`` (heads concatenated at attn.hook_z) on
    toy-language text, BOS excluded."""
    from tasks.corpus import corpus_tokens

    key, n_seqs, seq_len = CALIBRATION_TEXT
    tokens = corpus_tokens(model.tokenizer, key, n_seqs, min(seq_len, model.cfg.n_ctx))
    present = [h for h in hooks if h in model.hook_dict]
    _, cache = model.run_with_cache(tokens, names_filter=present)
    rows = {h: cache[h][:, 1:] for h in present}
    return {h: a.reshape(-1, a[0, 0].numel()) for h, a in rows.items()}


def _ids(release: str, entry, sae_ids: Iterable[str] | None) -> list[str]:
    ids = list(entry.saes_map) if sae_ids is None else list(sae_ids)
    unknown = [i for i in ids if i not in entry.saes_map]
    if unknown:
        raise CircuitsError(f"release {release!r} has no SAE {unknown[0]!r}")
    return ids


# res-jb: 32 x GPT-2 small's d_model; res-sm: 64 x Pythia-70M's
RELEASE_WIDTHS = {"gpt2-small-res-jb": 24576, "pythia-70m-deduped-res-sm": 32768}


def _hook_and_width(
    release: str, entry, loader: str, sae_id: str, width: int | None, fixed: bool = True
) -> tuple[str, int]:
    """The hook of ``sae_id`` and its d_sae (``width``, else the release's). ``fixed``: the
    loader's d_sae cannot be changed (gemma_2 reads it from the folder's name)."""
    path = entry.saes_map[sae_id]
    if loader == "gemma_2":
        from sae_lens.loading.pretrained_sae_loaders import get_gemma_2_config_from_hf

        cfg = get_gemma_2_config_from_hf(entry.repo_id, path, "cpu")
        if fixed and width is not None and width != cfg["d_sae"]:
            raise CircuitsError(
                f"{release}/{sae_id}: sae-lens's gemma_2 loader reads d_sae {cfg['d_sae']} from the folder's "
                f"name ({path}), so its stand-in cannot have width {width} (use release_saes)"
            )
        return cfg["hook_name"], width or cfg["d_sae"]
    if loader == "connor_rob_hook_z":
        hook = sae_id.replace(".hook_z", ".attn.hook_z")
        match = re.search(r"_ds(\d+)_", path)
        published = int(match[1]) if match else None
    else:
        hook, published = sae_id, RELEASE_WIDTHS.get(release)
    Submodule.parse(hook)  # one line for an id that is no hook circuits read
    if width is None and published is None:
        raise CircuitsError(f"{release}/{sae_id}: its width is not known here; give width=")
    return hook, width or published


def _fitting_width(release: str, sae_id: str, hook: str, cfg: HookedTransformerConfig) -> int:
    """The activation width at ``hook`` of a model of shape ``cfg`` (which must have it)."""
    layer = Submodule.parse(hook).layer
    if layer >= cfg.n_layers:
        raise CircuitsError(
            f"{release}/{sae_id} sits at {hook}, which the stand-in model ({cfg.n_layers} layers) does not have"
        )
    return activation_width(hook, cfg.d_model, cfg.d_mlp, cfg.n_heads * cfg.d_head)


def _write_sae_lens(cache_dir, entry, sae_id, path, hook, weights, overrides) -> None:
    d_sae, d_in = weights["W_dec"].shape
    style = _SAE_LENS_CONFIGS.get(entry.release, _sae_lens_6_config)
    cfg = {**style(entry, hook, d_in, d_sae), **overrides}
    put_file(cache_dir, entry.repo_id, f"{path}/cfg.json", _json_writer(cfg))
    put_file(cache_dir, entry.repo_id, f"{path}/sae_weights.safetensors", lambda dest: save_file(weights, str(dest)))
    if entry.release == "gpt2-small-res-jb":  # its folders hold each latent's log10 firing rate
        gen = torch.Generator().manual_seed(d_sae)
        sparsity = {"sparsity": -1 - 5 * torch.rand(d_sae, generator=gen)}
        put_file(cache_dir, entry.repo_id, f"{path}/sparsity.safetensors", lambda dest: save_file(sparsity, str(dest)))


def _res_jb_config(entry, hook: str, d_in: int, d_sae: int) -> dict:
    """Joseph Bloom's GPT-2 small residual SAEs: a pre-6.0 sae-lens training config (as sae-lens's
    own tests show blocks.0.hook_resid_pre's), no architecture or normalisation fields (the
    loader's defaults: standard, b_dec subtracted from the input, none)."""
    layer = max(Submodule.parse(hook).layer, 0)
    return {
        "model_name": entry.model,
        "hook_point": hook,
        "hook_point_layer": layer,
        "hook_point_head_index": None,
        "dataset_path": "Skylion007/openwebtext",
        "is_dataset_tokenized": False,
        "context_size": 128,
        "use_cached_activations": False,
        "cached_activations_path": f"activations/Skylion007_openwebtext/{entry.model}/{hook}",
        "d_in": d_in,
        "n_batches_in_buffer": 128,
        "total_training_tokens": 300_000_000,
        "store_batch_size": 32,
        "device": "mps",
        "seed": 42,
        "dtype": "torch.float32",
        "b_dec_init_method": "geometric_median",
        "expansion_factor": d_sae // d_in,
        "from_pretrained_path": None,
        "l1_coefficient": 8e-05,
        "lr": 0.0004,
        "lr_scheduler_name": None,
        "lr_warm_up_steps": 5000,
        "train_batch_size": 4096,
        "use_ghost_grads": False,
        "feature_sampling_window": 1000,
        "feature_sampling_method": None,
        "resample_batches": 1028,
        "feature_reinit_scale": 0.2,
        "dead_feature_window": 5000,
        "dead_feature_estimation_method": "no_fire",
        "dead_feature_threshold": 1e-08,
        "log_to_wandb": True,
        "wandb_project": "mats_sae_training_gpt2_small_resid_pre_5",
        "wandb_entity": None,
        "wandb_log_frequency": 100,
        "n_checkpoints": 10,
        "checkpoint_path": "checkpoints/standin",
        "d_sae": d_sae,
        "tokens_per_buffer": 67108864,
        "run_name": f"{d_sae}-L1-8e-05-LR-0.0004-Tokens-3.000e+08",
    }


def _res_sm_config(entry, hook: str, d_in: int, d_sae: int) -> dict:
    """Sam Marks's Pythia-70M-deduped dictionaries, converted to sae-lens's pre-6.0 format: a
    ReLU SAE that subtracts b_dec from its input, no normalisation."""
    return {
        "architecture": "standard",
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "model_name": entry.model,
        "hook_name": hook,
        "hook_layer": max(Submodule.parse(hook).layer, 0),
        "hook_head_index": None,
        "activation_fn_str": "relu",
        "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": False,
        "sae_lens_training_version": None,
        "prepend_bos": True,
        "dataset_path": "EleutherAI/the_pile_deduplicated",
        "context_size": 128,
        "dataset_trust_remote_code": True,
        "normalize_activations": "none",
    }


def _sae_lens_6_config(entry, hook: str, d_in: int, d_sae: int) -> dict:
    """What ``SAE.save_model`` writes today (releases this module knows no older format for)."""
    from importlib.metadata import version

    return {
        "architecture": "standard",
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "hook_z" if hook.endswith("hook_z") else "none",
        "metadata": {"model_name": entry.model, "hook_name": hook, "sae_lens_version": version("sae-lens")},
    }


_SAE_LENS_CONFIGS = {"gpt2-small-res-jb": _res_jb_config, "pythia-70m-deduped-res-sm": _res_sm_config}


def _write_hook_z(cache_dir, entry, sae_id, path, hook, weights, overrides) -> None:
    """Connor Kissane and Rob Krzyzanowski's attention-output SAEs: a state dict saved with
    torch (their format) and a training config beside it (what sae-lens reads: act_name,
    act_size, dict_size)."""
    d_sae, d_in = weights["W_dec"].shape
    layer = Submodule.parse(hook).layer
    cfg = {
        "seed": 49,
        "batch_size": 4096,
        "lr": 0.0012,
        "l1_coeff": 1.8,
        "dict_mult": d_sae // d_in,
        "seq_len": 128,
        "enc_dtype": "fp32",
        "model_name": entry.model,
        "site": "z",
        "layer": layer,
        "head": "cat",
        "concat_heads": True,
        "resample_scheme": "anthropic",
        "b_dec_init": "zeros",
        "act_name": hook,
        "act_size": d_in,
        "dict_size": d_sae,
        "name": f"{entry.model}_{layer}_{d_sae}_z",
        **overrides,
    }
    put_file(cache_dir, entry.repo_id, path.split(".pt")[0] + "_cfg.json", _json_writer(cfg))

    def write(dest: Path) -> None:
        with dest.open("wb") as f:
            torch.save(weights, f)

    put_file(cache_dir, entry.repo_id, path, write)


def _write_gemma_2(cache_dir, entry, sae_id, path, hook, weights, overrides) -> None:
    """Gemma Scope: one ``params.npz`` per SAE (the loader derives the config from the names)."""
    if overrides:
        raise CircuitsError(f"{entry.release}: Gemma Scope folders hold no config file to override")
    d_in = weights["W_dec"].shape[1]
    from sae_lens.loading.pretrained_sae_loaders import get_gemma_2_config_from_hf

    fixed = get_gemma_2_config_from_hf(entry.repo_id, path, "cpu")["d_in"]
    if d_in != fixed:
        raise CircuitsError(
            f"{entry.release}/{sae_id}: sae-lens's gemma_2 loader fixes d_in at {fixed} (from the repository "
            f"{entry.repo_id}), the stand-in model's width is {d_in} (use release_saes)"
        )

    def write(dest: Path) -> None:
        with dest.open("wb") as f:
            np.savez(f, **{k: v.numpy() for k, v in weights.items()})

    put_file(cache_dir, entry.repo_id, f"{path}/params.npz", write)
