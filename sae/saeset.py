"""An SAE set: one sae-lens `SAE` per TransformerLens hook point, saved and loaded together.

On disk a set is a folder with ``manifest.json`` and one sub-folder per hook, named by the
hook (``blocks.0.hook_resid_post/``), in sae-lens's own format (``cfg.json`` +
``sae_weights.safetensors``, loadable by ``SAE.load_from_disk``).
"""

from __future__ import annotations

import difflib
import json
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TypeVar

import torch
from sae_lens import SAE
from safetensors import SafetensorError
from transformer_lens import HookedTransformer

from circuits.core.errors import CircuitsError
from circuits.core.files import replace_dir
from circuits.core.hub import hub_reachable, offline
from circuits.core.vocab import BLOCK_KINDS, Submodule, activation_width

MANIFEST = "manifest.json"
SAE_CFG, SAE_WEIGHTS = "cfg.json", "sae_weights.safetensors"
FORMAT = "sae-circuits/sae-set/1"
T = TypeVar("T")


def check_hooks(model: HookedTransformer, hooks: list[str]) -> None:
    """Raise naming the first hook the model does not have, with the close ones."""
    for hook in hooks:
        if hook not in model.hook_dict:
            close = difflib.get_close_matches(hook, list(model.hook_dict), n=3)
            hint = f" (close: {', '.join(close)})" if close else ""
            raise CircuitsError(f"the model has no hook {hook!r}{hint}")


def hook_width(model: HookedTransformer, hook: str) -> int:
    """Activation width at a hook point (d_model for the residual stream, mlp_out, attn_out;
    n_heads x d_head at attn.hook_z)."""
    return activation_width(hook, model.cfg.d_model, model.cfg.d_mlp, model.cfg.n_heads * model.cfg.d_head)


# sae-lens normalisations that rescale each activation by its own statistics: decoding then
# depends on the input as well as the latents, so the decoder is not the fixed affine map
# that splicing and edges rely on (docs/design.md, "Splicing").
_PER_INPUT_NORMS = ("constant_norm_rescale", "layer_norm")


def check_fits(model: HookedTransformer, hook: str, d_in: int, norm: str | None, what: str = "") -> None:
    """Raise, in one line, unless an SAE at ``hook`` with input width ``d_in`` and
    normalisation ``norm`` fits ``model`` (a hook circuits read, which the model computes, of
    width d_in; a decoder that is a fixed map); ``what`` names the SAE (default: by its hook)."""
    what = what or f"SAE for {hook}"
    try:
        Submodule.parse(hook)  # hooks circuits are not defined on
    except CircuitsError as err:
        raise CircuitsError(f"{what}: {err}") from None
    name = model.cfg.model_name or "the model"
    _check_computed(model, hook, what)
    width = hook_width(model, hook)
    if d_in != width and hook.endswith("attn.hook_z"):
        raise CircuitsError(
            f"{what} has d_in {d_in} but {name}'s heads there are "
            f"{model.cfg.n_heads} x d_head {model.cfg.d_head} = {width}"
        )
    if d_in != width:
        raise CircuitsError(
            f"{what} has d_in {d_in} but the model's activation there has width {width} ({name}'s d_model)"
        )
    if norm in _PER_INPUT_NORMS:
        raise CircuitsError(
            f"{what} has normalize_activations={norm!r}: it rescales each activation by "
            "its own norm, so its decoder is not a fixed map and circuits cannot splice it "
            "(supported: 'none', and 'expected_average_only_in', which sae-lens folds into the weights)"
        )


def _check_computed(model: HookedTransformer, hook: str, what: str) -> None:
    """One line for a resid_mid SAE on a model without a middle to its blocks."""
    if hook.endswith("hook_resid_mid") and (model.cfg.parallel_attn_mlp or model.cfg.attn_only):
        why = "runs attention and MLP in parallel" if model.cfg.parallel_attn_mlp else "is attention-only"
        name = model.cfg.model_name or "the model"
        raise CircuitsError(f"{what}: {name} {why}, so it never computes {hook}")


# architectures whose latents are each a function of the input alone, so the first m of them
# are what an SAE of width m with those rows computes (TopK latents compete for k slots)
PREFIXABLE = ("jumprelu", "standard", "gated")


def prefix_sae(sae: SAE, width: int, hook: str = "") -> SAE:
    """The SAE of ``sae``'s first ``width`` latents: the same encoder and decoder rows (and
    thresholds, gates), the same decoder bias; its latents equal the first ``width`` of
    ``sae``'s on every input (a Matryoshka SAE, saved as JumpReLU, is trained for this)."""
    arch = sae.cfg.architecture()
    where = f"SAE for {hook}" if hook else "SAE"
    if arch not in PREFIXABLE:
        raise CircuitsError(f"{where}: a {arch} SAE has no prefix SAEs (use {', '.join(PREFIXABLE)}, or matryoshka)")
    if not 0 < width <= sae.cfg.d_sae:
        raise CircuitsError(f"{where}: prefix width {width} is not in 1..{sae.cfg.d_sae}")
    cfg = type(sae.cfg).from_dict({**sae.cfg.to_dict(), "d_sae": width})
    out = type(sae)(cfg)
    state = {}
    for name, t in sae.state_dict().items():
        if name == "W_enc":
            state[name] = t[:, :width]
        elif name == "W_dec" or (t.dim() == 1 and name != "b_dec" and t.shape[0] == sae.cfg.d_sae):
            state[name] = t[:width]
        else:
            state[name] = t
    out.load_state_dict({k: v.clone() for k, v in state.items()})
    return out.to(sae.W_dec.device)


class SAESet(Mapping[str, SAE]):
    """Hook name -> sae-lens SAE, in the model's forward order."""

    def __init__(self, saes: Mapping[str, SAE], model_name: str = ""):
        self.saes = dict(saes)
        self.model_name = model_name
        for sae in self.saes.values():
            # Activations at attn.hook_z reach SAEs with the heads already concatenated
            # (``circuits.attribution.splice.flat``), so sae-lens must not reshape them again.
            if getattr(sae, "hook_z_reshaping_mode", False):
                sae.turn_off_forward_pass_hook_z_reshaping()

    def __getitem__(self, hook: str) -> SAE:
        if hook not in self.saes:
            raise CircuitsError(f"no SAE for hook {hook!r}; the set covers {', '.join(self.saes) or 'nothing'}")
        return self.saes[hook]

    def __contains__(self, hook: object) -> bool:
        return hook in self.saes

    def __iter__(self) -> Iterator[str]:
        return iter(self.saes)

    def __len__(self) -> int:
        return len(self.saes)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> SAESet:
        """Move every SAE (in place) to ``device`` and/or ``dtype``; returns the set."""
        for sae in self.saes.values():
            sae.to(**{k: v for k, v in {"device": device, "dtype": dtype}.items() if v is not None})
        return self

    def restrict(self, kinds: Iterable[str]) -> SAESet:
        """The sub-set of SAEs at hooks of ``kinds`` (resid, mlp, attn), in the same order."""
        wanted = set(kinds)
        bad = wanted - set(BLOCK_KINDS)
        if bad:
            raise CircuitsError(f"unknown kind(s) {', '.join(sorted(bad))} (use {', '.join(BLOCK_KINDS)})")
        kept = {h: sae for h, sae in self.saes.items() if _kind(h) in wanted}
        if not kept:
            raise CircuitsError(
                f"the SAE set has no {', '.join(sorted(wanted))} hooks (it covers {', '.join(self.saes) or 'nothing'})"
            )
        return SAESet(kept, self.model_name)

    def prefix(self, width: int) -> SAESet:
        """Every SAE cut to its first ``width`` latents (`prefix_sae`): a Matryoshka set's
        inner level, a coarser dictionary whose error terms take what the rest reconstructed."""
        return SAESet({h: prefix_sae(sae, width, h) for h, sae in self.saes.items()}, self.model_name)

    def check_model(self, model: HookedTransformer) -> None:
        """Raise if a hook is missing from (or never computed by) ``model``, an SAE's d_in
        does not match it, or an SAE normalises each input by its own statistics."""
        for hook in self.saes:
            _check_computed(model, hook, f"SAE for {hook}")
        check_hooks(model, list(self.saes))
        for hook, sae in self.saes.items():
            check_fits(model, hook, sae.cfg.d_in, getattr(sae.cfg, "normalize_activations", "none"))

    def save(self, folder: str | Path) -> Path:
        """Write the set atomically (`replace_dir`: a temporary folder renamed into place)."""
        with replace_dir(folder) as tmp:
            for hook, sae in self.saes.items():
                sae.save_model(tmp / hook)
            write_manifest(tmp, list(self.saes), self.model_name)
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path, model: HookedTransformer | None = None, device: str = "cpu") -> SAESet:
        """Load a saved set; with ``model``, also check hooks and widths against it."""
        folder = Path(folder)
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            raise CircuitsError(f"{folder}: no {MANIFEST} (not a saved SAE set)")
        try:
            manifest = json.loads(manifest_path.read_text())
            hooks = list(manifest["hooks"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise CircuitsError(f"{manifest_path}: not a valid SAE-set manifest ({err})") from None
        saes = {hook: load_sae_folder(folder / hook, device) for hook in hooks}
        result = cls(saes, manifest.get("model", ""))
        if model is not None:
            result.check_model(model)
        return result

    @classmethod
    def from_release(
        cls,
        release: str,
        sae_ids: Iterable[str] | Mapping[str, str] | None = None,
        model: HookedTransformer | None = None,
        device: str = "cpu",
    ) -> SAESet:
        """Published SAEs through ``SAE.from_pretrained(release, sae_id)`` (sae-lens's registry):
        every SAE of the release, or those ``sae_ids`` names (a mapping: hook -> id). Each sits
        at the hook its config names. Every config is read first (the config file alone, or
        nothing for loaders that derive it from names): two SAEs at one hook, a hook circuits
        do not read and an architecture sae-lens does not know are one-line errors before any
        weights are read, and so, with ``model``, are hooks the model lacks and widths that do
        not fit it. Unknown names and an unreachable hub are one-line errors; SAEs in the
        local Hugging Face cache load offline."""
        entry = release_entry(release)
        ids = (
            list(entry.saes_map)
            if sae_ids is None
            else list(sae_ids.values() if isinstance(sae_ids, Mapping) else sae_ids)
        )
        for sae_id in ids:
            _check_release_id(release, entry, sae_id)
        if model is not None:
            _check_release_hooks(release, ids, model)
        reachable = hub_reachable()  # once: an unreachable hub may take seconds to say so
        configs = {sae_id: release_config(release, sae_id, device, reachable) for sae_id in ids}
        hooks = _release_hooks(release, configs)
        if model is not None:
            _check_release_fits(release, configs, hooks, model)
        saes = {hooks[sae_id]: load_release_sae(release, sae_id, device, reachable) for sae_id in ids}
        result = cls(dict(sorted(saes.items(), key=lambda hs: Submodule.parse(hs[0]).order)), entry.model)
        if model is not None:
            result.check_model(model)
        return result


def release_entry(release: str):
    """sae-lens's registry entry for ``release``; an unknown name is one line with close ones."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if release not in directory:
        close = difflib.get_close_matches(release, list(directory), n=3)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise CircuitsError(f"unknown SAE release {release!r}{hint}")
    return directory[release]


def _check_release_id(release: str, entry, sae_id: str) -> None:
    if sae_id not in entry.saes_map:
        close = difflib.get_close_matches(sae_id, list(entry.saes_map), n=3)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise CircuitsError(f"release {release!r} has no SAE {sae_id!r}{hint}")


def _check_release_hooks(release: str, ids: list[str], model: HookedTransformer) -> None:
    """Before downloading anything: every id that names a hook (most releases' ids do) must
    be a hook of ``model``."""
    name = model.cfg.model_name or "the model"
    for sae_id in ids:
        hook = (
            sae_id.replace(".hook_z", ".attn.hook_z")
            if sae_id.endswith(".hook_z") and ".attn." not in sae_id
            else sae_id
        )
        if hook.startswith("blocks.") and hook not in model.hook_dict:
            raise CircuitsError(
                f"release {release!r} has an SAE at {hook}, which {name} ({model.cfg.n_layers} layers) does not have"
            )


def write_manifest(folder: Path, hooks: list[str], model_name: str) -> None:
    """Write ``manifest.json`` for the per-hook SAE folders already saved in ``folder``."""
    entries = {}
    for hook in hooks:
        cfg = json.loads((folder / hook / SAE_CFG).read_text())
        entries[hook] = {k: cfg.get(k) for k in ("architecture", "d_in", "d_sae")}
    manifest = {"format": FORMAT, "model": model_name, "hooks": entries}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))


def load_sae_folder(folder: Path, device: str = "cpu") -> SAE:
    """``SAE.load_from_disk`` with one-line errors for missing or corrupt files."""
    for name in (SAE_CFG, SAE_WEIGHTS):
        if not (folder / name).is_file():
            raise CircuitsError(f"{folder}: {name} is missing")
    try:
        json.loads((folder / SAE_CFG).read_text())
    except json.JSONDecodeError as err:
        raise CircuitsError(f"{folder / SAE_CFG}: not valid JSON ({err})") from None
    try:
        return SAE.load_from_disk(folder, device=device)
    except SafetensorError as err:
        raise CircuitsError(f"{folder / SAE_WEIGHTS}: corrupt weights file ({err})") from None
    except (KeyError, ValueError, RuntimeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CircuitsError(f"{folder}: cannot load this SAE ({first})") from None


def release_config(release: str, sae_id: str, device: str = "cpu", reachable: bool | None = None) -> dict:
    """The config sae-lens's loader for ``release`` gives ``sae_id`` (its config getter: the
    config file alone, or nothing where the loader derives the config from names), with the
    registry's overrides; one-line errors as `load_release_sae`. ``reachable``: whether the
    hub answers (default: ask it)."""
    from sae_lens.loading.pretrained_sae_loaders import load_sae_config_from_huggingface
    from sae_lens.registry import SAE_CLASS_REGISTRY

    _check_release_id(release, release_entry(release), sae_id)
    cfg = _from_hub(release, sae_id, reachable, lambda: load_sae_config_from_huggingface(release, sae_id, device))
    architecture = cfg.get("architecture", "standard")
    if architecture not in SAE_CLASS_REGISTRY:
        raise CircuitsError(_unknown_architecture(release, sae_id, architecture))
    return cfg


def _config_hook(cfg: dict) -> str | None:
    """The hook a sae-lens config names (in its metadata since sae-lens 6)."""
    return (cfg.get("metadata") or {}).get("hook_name") or cfg.get("hook_name")


def _release_hooks(release: str, configs: dict[str, dict]) -> dict[str, str]:
    """id -> the hook its config names; one line for a hook circuits do not read and for two
    SAEs at one hook (a release with several widths per layer)."""
    hooks = {sae_id: _config_hook(cfg) or sae_id for sae_id, cfg in configs.items()}
    for sae_id, hook in hooks.items():
        try:
            Submodule.parse(hook)
        except CircuitsError as err:
            raise CircuitsError(f"release {release!r}, SAE {sae_id!r}: {err}") from None
    by_hook: dict[str, list[str]] = {}
    for sae_id, hook in hooks.items():
        by_hook.setdefault(hook, []).append(sae_id)
    for hook, ids in by_hook.items():
        if len(ids) > 1:
            listed = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
            raise CircuitsError(
                f"release {release!r} has {len(ids)} SAEs at {hook} ({listed}): name one per hook "
                f"(--saes {release}:ID,ID)"
            )
    return hooks


def _check_release_fits(release: str, configs: dict[str, dict], hooks: dict[str, str], model) -> None:
    """Before any weights are read: every SAE's hook is the model's, its d_in fits."""
    name = model.cfg.model_name or "the model"
    for sae_id, hook in hooks.items():
        _check_computed(model, hook, f"SAE {release}/{sae_id}")
        if hook not in model.hook_dict:
            raise CircuitsError(
                f"release {release!r} has an SAE at {hook} ({sae_id}), which {name} "
                f"({model.cfg.n_layers} layers) does not have"
            )
    for sae_id, hook in hooks.items():
        cfg = configs[sae_id]
        what = f"SAE {release}/{sae_id}" + ("" if sae_id == hook else f" (at {hook})")
        check_fits(model, hook, cfg["d_in"], cfg.get("normalize_activations") or "none", what)


def load_release_sae(release: str, sae_id: str, device: str = "cpu", reachable: bool | None = None) -> SAE:
    """One SAE of a sae-lens release, with unknown names, unknown architectures, weights that
    do not fit their config and offline hubs as one-line errors. ``reachable``: whether the
    hub answers (default: ask it)."""
    entry = release_entry(release)
    _check_release_id(release, entry, sae_id)
    return _from_hub(release, sae_id, reachable, lambda: _from_pretrained(release, sae_id, device))


def _from_hub(release: str, sae_id: str, reachable: bool | None, load: Callable[[], T]) -> T:
    """``load()`` from the hub, or from the local cache alone when the hub is unreachable
    (one line when the files are not there)."""
    if reachable is None:
        reachable = hub_reachable()
    if reachable:
        return _one_line_errors(release, sae_id, load)
    with offline():
        try:
            return _one_line_errors(release, sae_id, load)
        except (OSError, ValueError) as err:
            if not _not_cached(err):
                raise
    raise CircuitsError(
        f"cannot download SAE {release}/{sae_id}: the Hugging Face hub is unreachable and it "
        f"is not in the local cache (train SAEs here with `circuits train-saes`)"
    )


def _one_line_errors(release: str, sae_id: str, load: Callable[[], T]) -> T:
    from sae_lens.registry import SAE_CLASS_REGISTRY

    try:
        return load()
    except KeyError as err:  # the config's architecture is not in sae-lens's registry
        if err.args and isinstance(err.args[0], str) and err.args[0] not in SAE_CLASS_REGISTRY:
            raise CircuitsError(_unknown_architecture(release, sae_id, err.args[0])) from None
        raise
    except RuntimeError as err:  # load_state_dict: the weights' shapes are not the config's
        mismatch = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
        if mismatch:
            raise CircuitsError(
                f"SAE {release}/{sae_id}: its weights do not fit its config ({mismatch[0].rstrip('.')})"
            ) from None
        raise


def _unknown_architecture(release: str, sae_id: str, architecture: str) -> str:
    from sae_lens.registry import SAE_CLASS_REGISTRY

    return (
        f"SAE {release}/{sae_id}: architecture {architecture!r} is not one sae-lens "
        f"{_sae_lens_version()} knows ({', '.join(sorted(SAE_CLASS_REGISTRY))})"
    )


def _from_pretrained(release: str, sae_id: str, device: str) -> SAE:
    with warnings.catch_warnings():
        # Released configs may ask for a model loaded with folded LayerNorm and centred writing
        # weights (``model_from_pretrained_kwargs``), which is how load_model loads pretrained
        # models; sae-lens warns about it on every load, in several lines.
        warnings.filterwarnings("ignore", r"\s*This SAE has non-empty model_from_pretrained_kwargs")
        return SAE.from_pretrained(release, sae_id, device=device)


def _not_cached(err: BaseException) -> bool:
    """Whether ``err`` says a file is not in the local cache (huggingface_hub, offline)."""
    names = {type(e).__name__ for e in (err, err.__cause__, err.__context__) if e is not None}
    return bool(names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "EntryNotFoundError"}) or (
        "offline" in str(err).lower() or "local cache" in str(err).lower()
    )


def _sae_lens_version() -> str:
    from importlib.metadata import version

    return version("sae-lens")


def _kind(hook: str) -> str:
    """A hook's kind as ``--hooks`` names it (the embeddings' SAE reads resid_pre)."""
    sub = Submodule.parse(hook)
    return "resid_pre" if sub.is_embed else sub.kind
