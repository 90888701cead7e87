"""Builders shared by the tests (tests never import each other; fixtures live in conftest).

sae_lens and transformer_lens are imported inside the builders that need them: the
circuits.core.parallel.run_local workers below import this module, and start seconds faster without.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import networkx as nx
import torch

from circuits.circuit.record import (
    CircuitRecord,
    ExampleRecord,
    FamilyRecord,
    HierarchyRecord,
    LevelRecord,
    ModelRecord,
    SiteRecord,
    attach,
    record_of,
)
from circuits.core.vocab import EMBED_HOOK, METRIC, Node, Site, Submodule
from tasks.tokenizer import build_tokenizer

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from circuits.export.cards import FeatureCard
    from circuits.toy.config import ToyModelConfig
    from sae.config import SAETrainConfig
    from sae.saeset import SAESet

TOK = build_tokenizer()


def random_saes(hooks, d_in=32, d_sae=64, k=8, *, first_seed=100, enc_bias=False, name_hooks=False) -> SAESet:
    """Random TopK SAEs at ``hooks`` (seeded per hook, random decoder and optionally encoder biases)."""
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    from sae.saeset import SAESet

    saes = {}
    for i, hook in enumerate(hooks):
        torch.manual_seed(first_seed + i)
        metadata = {"metadata": SAEMetadata(hook_name=hook)} if name_hooks else {}
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, **metadata))
        with torch.no_grad():
            sae.b_dec.normal_(0, 0.1)
            if enc_bias:
                sae.b_enc.normal_(0, 0.1)
        saes[hook] = sae
    return SAESet(saes)


def tiny_hooked_model(normalization: str | None = "LN", n_layers: int = 2, parallel: bool = False) -> HookedTransformer:
    """A random-weight tiny HookedTransformer (d_model 32) with the toy tokenizer;
    ``parallel``: attention and MLP read the block input (GPT-NeoX), with rotary positions."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=32,
        n_heads=2,
        d_head=16,
        d_mlp=64,
        n_ctx=32,
        d_vocab=len(TOK),
        act_fn="gelu",
        normalization_type=normalization,
        seed=0,
        **(dict(parallel_attn_mlp=True, positional_embedding_type="rotary", rotary_dim=8) if parallel else {}),
    )
    return HookedTransformer(cfg, tokenizer=TOK)


def tiny_config(**overrides) -> ToyModelConfig:
    """A 1-layer toy config that trains in about a second."""
    from circuits.toy.config import ToyModelConfig

    base = dict(
        n_layers=1,
        d_model=32,
        n_heads=2,
        d_mlp=64,
        n_ctx=32,
        seq_len=32,
        steps=6,
        batch_size=4,
        checkpoint_every=2,
        warmup=2,
    )
    base.update(overrides)
    return ToyModelConfig(**base)


def tiny_sae_config(**overrides) -> SAETrainConfig:
    """SAEs at two hooks of a 1-layer model: 4 training steps of 4 x 31 tokens, resampling
    latents dead for one step every 2 steps."""
    from sae.config import SAETrainConfig

    base = dict(
        kinds=("resid", "mlp"),
        width=64,
        k=4,
        n_tokens=4 * 124,
        seqs_per_batch=4,
        seq_len=32,
        n_checkpoints=0,
        resample_every=2,
        dead_window=1,
    )
    base.update(overrides)
    return SAETrainConfig(**base)


def node_attrs(
    hook: str | None, latent: int | None, position: int | None, label: str, effect: float, activation: float = 1.0
) -> dict:
    """Graph attributes of the node (hook None: the embeddings) at ``position`` labelled ``label``."""
    site = Site(Submodule.parse(hook or EMBED_HOOK), position, label)
    return Node(site, latent).attrs(effect, activation)


def toy_graph() -> nx.DiGraph:
    """A toy circuit: embed -> a -> b -> metric, c -> metric, d (no path to the metric), an error node."""
    g = attach(nx.DiGraph(), CircuitRecord(task="toy"))
    specs = {
        "embed@IO": (None, None, 2, -3.0),
        "blocks.0.hook_mlp_out/5@END": ("blocks.0.hook_mlp_out", 5, 14, -2.0),
        "blocks.1.hook_resid_post/7@END": ("blocks.1.hook_resid_post", 7, 14, -1.0),
        "blocks.1.hook_resid_post/err@END": ("blocks.1.hook_resid_post", None, 14, 0.5),
        "blocks.0.hook_attn_out/9@S2": ("blocks.0.hook_attn_out", 9, 10, -0.1),
    }
    for n, (hook, latent, pos, effect) in specs.items():
        g.add_node(n, **node_attrs(hook, latent, pos, n.split("@")[1], effect, 1.0))
    g.add_node(METRIC, effect=-3.0, kind="metric", latent=None, is_error=False)
    g.add_edge("embed@IO", "blocks.0.hook_mlp_out/5@END", weight=-2.0)
    g.add_edge("blocks.0.hook_mlp_out/5@END", "blocks.1.hook_resid_post/7@END", weight=-0.9)
    g.add_edge("blocks.1.hook_resid_post/7@END", METRIC, weight=-1.0)
    g.add_edge("blocks.1.hook_resid_post/err@END", METRIC, weight=0.5)
    return g


def all_reduced_arange() -> list[float]:
    """For circuits.core.parallel.run_local workers: each all-reduces [0., 1., 2.] and returns the result."""
    from circuits.core.parallel import all_reduce

    t = torch.arange(3, dtype=torch.float32)
    all_reduce([t])
    return t.tolist()


def fail_in_worker_1() -> None:
    """For circuits.core.parallel.run_local workers: worker 1 raises ValueError, the others return."""
    from circuits.core.parallel import rank_and_world

    if rank_and_world()[0] == 1:
        raise ValueError("planted failure")


NASTY = 'say "hi" <b>&amp; \\ back\\slash'


def nasty_graph() -> nx.DiGraph:
    """The toy circuit with quotes, tags and backslashes in its names and labels."""
    g = toy_graph()
    record = CircuitRecord(
        task='t"<x>',
        metric="logit_diff",
        total_effect=-3.0,
        saes={"blocks.0.hook_mlp_out": 8},
        position_labels=["a", "b"],
    )
    attach(g, record)
    g.add_node('blocks.0.hook_mlp_out/6@"<\\', **node_attrs("blocks.0.hook_mlp_out", 6, 1, '"<\\', -0.5, 1.0))
    g.add_edge('blocks.0.hook_mlp_out/6@"<\\', "blocks.1.hook_resid_post/7@END", weight=-0.2)
    return g


def card(hook="blocks.0.hook_mlp_out", latent=5) -> FeatureCard:
    """A feature card whose texts need escaping."""
    from circuits.export.cards import FeatureCard

    return FeatureCard(
        hook,
        latent,
        [{"tokens": ["x", NASTY, "</div>"], "index": 1, "activation": 1.5}],
        [1, 0, 2],
        1.5,
        0.1,
        [("<script>", 0.5)],
        [("\\", -0.4)],
    )


PLANTED_HOOK = "blocks.0.hook_resid_post"


def planted():
    """A 1-layer model with no LayerNorm (logits linear in the last residual stream) and one
    SAE latent whose decoder row writes a large logit(answer) - logit(wrong) and whose
    encoder reads the clean prompts' last token: the circuit is that latent (7) at END.
    Returns (model, SAE set, task restricted to the examples sharing one answer)."""
    from sae_lens import TopKSAE, TopKSAEConfig

    from sae.saeset import SAESet
    from tasks.builtin import make_task

    torch.manual_seed(0)
    model = tiny_hooked_model(normalization=None, n_layers=1)
    task = make_task("ioi", TOK, n=8, split="train")
    sae = TopKSAE(TopKSAEConfig(d_in=32, d_sae=16, k=4))
    with torch.no_grad():
        sae.W_dec.mul_(0.01)
        answer, wrong = task.answer[0, 0], task.wrong[0, 0]
        direction = model.W_U[:, answer] - model.W_U[:, wrong]
        sae.W_dec[7] = 50 * direction / direction.norm() ** 2
        _, cache = model.run_with_cache(task.clean, names_filter=[PLANTED_HOOK])
        end = cache[PLANTED_HOOK][:, -1].mean(0)
        sae.W_enc[:, 7] = 10 * end / end.norm()
    task = task.subset(task.answer[:, 0] == answer)  # examples sharing that answer
    return model, SAESet({PLANTED_HOOK: sae}), task


CARRIERS, DECOY = (3, 4), 9  # latents of ``planted_two_paths``


def planted_two_paths():
    """Two redundant paths from one SAE to the answer, and a decoy attribution prefers.
    The model's MLP output bias writes, at every position, a vector that puts the answer's
    logit 14 above every other token's; the SAE explains it as two latents ``CARRIERS``, 1 on
    every prompt, clean and corrupt, each writing half: either alone saturates the
    probability difference (the task's metric here), so the circuit needs one of them, not
    both. Patching them to their
    corrupt values changes nothing, so their attribution is 0. Latent ``DECOY`` is 0 on
    every clean prompt and fires on corrupt ones, writing the same direction: attribution
    ranks it first, yet ablating it on clean prompts does nothing. The other latents never
    fire. 1 layer, no LayerNorm."""
    from sae_lens import StandardSAE, StandardSAEConfig

    from sae.saeset import SAESet
    from tasks.builtin import make_task

    torch.manual_seed(0)
    model = tiny_hooked_model(normalization=None, n_layers=1)
    task = make_task("ioi", TOK, n=64, split="train", metric="prob_diff")
    answer = task.answer[0, 0]
    task = task.subset(task.answer[:, 0] == answer)
    sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=16))
    with torch.no_grad():
        unit = model.W_U[:, answer] / model.W_U[:, answer].norm()
        scores = model.W_U.T @ unit
        margin = scores[answer] - torch.cat([scores[:answer], scores[answer + 1 :]]).max()
        assert margin > 0, "the answer's unembedding is not its own best match"
        half = 7 / margin * unit  # one carrier: the answer 7 logits above the rest
        model.blocks[0].mlp.b_out += 2 * half
        _, clean = model.run_with_cache(task.clean, names_filter=[PLANTED_HOOK])
        _, corrupt = model.run_with_cache(task.corrupt, names_filter=[PLANTED_HOOK])
        x_clean, x_corrupt = clean[PLANTED_HOOK][:, -1], corrupt[PLANTED_HOOK][:, -1]
        sae.b_dec.zero_()
        sae.W_enc.zero_()
        sae.b_enc.fill_(-1.0)
        sae.W_dec.normal_(0, 0.01)
        for c in CARRIERS:
            sae.b_enc[c] = 1.0
            sae.W_dec[c] = half
        v = x_corrupt.mean(0) - x_clean.mean(0)
        v = v / v.norm()
        sae.W_enc[:, DECOY] = v
        sae.b_enc[DECOY] = -float((x_clean @ v).max())  # off on every clean prompt
        sae.W_dec[DECOY] = half
    assert float((x_corrupt @ v).max()) > float((x_clean @ v).max()), "the decoy never fires"
    return model, SAESet({PLANTED_HOOK: sae}), task


EXAMPLE_TOKENS = "<bos> When Mary and John went to the store , John gave a".split() + ['say "hi"', "to"]


def example_graph() -> nx.DiGraph:
    """The toy circuit as discover writes it today: model, SAE widths, metric, position labels
    and the first clean prompt with the answer's probabilities (its record's ``example``);
    15 tokens, the circuit's embedding only at position 2."""
    g = toy_graph()
    labels = ["BOS", "intro", "IO", "and", "S1", "m1", "m2", "the", "PLACE", ",", "S2", "give", "a", "OBJ", "END"]
    record = CircuitRecord(
        task="ioi",
        metric="logit_diff",
        total_effect=-3.0,
        position_labels=labels,
        model=ModelRecord(name="toy", n_layers=2, d_model=32, d_vocab=300),
        saes={f"blocks.{layer}.hook_{k}": 64 for layer in (0, 1) for k in ("attn_out", "mlp_out", "resid_post")},
        example=ExampleRecord(
            prompt_tokens=list(EXAMPLE_TOKENS),
            corrupt_tokens=list(EXAMPLE_TOKENS),
            answer="Mary",
            answer_prob=0.734,
            wrong_answer="John",
            wrong_prob=0.0123,
            top_outputs=[("Mary", 0.734), ("John", 0.0123)],
        ),
    )
    attach(g, record)
    g.add_edge("blocks.0.hook_attn_out/9@S2", "blocks.1.hook_resid_post/7@END", weight=0.05)
    return g


def hierarchical_graph() -> nx.DiGraph:
    """A small hierarchical circuit on the prompt "<bos> Mary John John to" (slots BOS A B S2
    END). Sites (``hierarchy.sites``): L0 attn, L0 mlp (six latents: more than a picture's
    cap of four), L1 resid at END, L0 attn at A (its only path to the metric is a weak edge)
    and L1 mlp at END (a skeleton site with no node kept); the embeddings at S2 (relied on)
    and A (a positive edge). The site edge L0 attn -> L1 resid at END is weak and not needed.
    The position B has no site."""
    labels = ["BOS", "A", "B", "S2", "END"]
    record = CircuitRecord(
        task="ioi",
        metric="logit_diff",
        total_effect=-2.0,
        clean_metric=2.5,
        corrupt_metric=0.5,
        position_labels=labels,
        example=ExampleRecord(["<bos>", "Mary", "John", "John", "to"], answer="Mary", wrong_answer="John"),
    )
    g = attach(nx.DiGraph(), record)
    attn, mlp, resid = "blocks.0.hook_attn_out", "blocks.0.hook_mlp_out", "blocks.1.hook_resid_post"

    def add(hook, latent, pos, effect):
        node = Node.at(hook or EMBED_HOOK, pos, latent, labels)
        g.add_node(node.id, **node.attrs(effect, 1.0))
        return node.id

    s2, a = add(None, None, 3, -2.0), add(None, None, 1, 0.4)
    a1, a8 = add(attn, 1, 4, -1.5), add(attn, 8, 1, 0.05)
    add(attn, None, 4, -0.2)
    mlps = [add(mlp, 10 + i, 4, -0.6 + 0.1 * i) for i in range(6)]
    m_err = add(mlp, None, 4, -0.3)
    r3, r_err = add(resid, 3, 4, -1.8), add(resid, None, 4, -0.1)
    g.add_node(METRIC, effect=-2.0, kind="metric", layer=2, latent=None, is_error=False)
    edges = [(s2, a1, -2.0), (a, a1, 0.5), (a1, mlps[0], -1.0), (a1, r3, -0.01), (m_err, r3, -0.1), (a8, r3, 0.02)]
    edges += [(m, r3, -0.2) for m in mlps] + [(r3, METRIC, -1.8), (r_err, METRIC, -0.1)]
    for u, v, w in edges:
        g.add_edge(u, v, weight=w)
    sites = [
        Site.at(h, p, labels) for h, p in [(attn, 4), (mlp, 4), (resid, 4), (attn, 1), ("blocks.1.hook_mlp_out", 4)]
    ]
    features = [n for n in g if n != METRIC and not g.nodes[n]["kind"] == "embed"]
    hierarchy = HierarchyRecord(
        ablation="mean",
        start_layer=0,
        target=0.9,
        m_model=2.5,
        m_empty=0.4,
        n_held_out=16,
        sites=[SiteRecord.of(s) for s in sites],
        site_level=level(5, 0.97, ranking="attribution"),
        features=features,
        feature_level=level(9, 0.91, 3),
        attribution=level(11, 0.92, 3, ranking="attribution"),
        optimised=level(9, 0.91, 3),
    )
    return attach(g, replace(record, hierarchy=hierarchy))


def level(n_nodes: int, faithfulness: float, n_error_nodes: int = 0, ranking: str = "optimised") -> LevelRecord:
    """A hierarchical circuit's level without a curve (target 0.9)."""
    return LevelRecord(ranking, n_nodes, n_error_nodes, faithfulness, 0.05, 0.01, faithfulness >= 0.9)


def with_record(graph: nx.DiGraph, **changes) -> nx.DiGraph:
    """``graph`` with its record's fields ``changes`` replaced."""
    return attach(graph, replace(record_of(graph), **changes))


def discover_argv(model_dir, sae_dir, *flags: str, task: str = "ioi") -> list[str]:
    """``circuits discover`` on a saved model and SAE set, with more ``flags``."""
    return ["discover", "--task", str(task), "--model", str(model_dir), "--saes", str(sae_dir), *flags]


def in_float64(model: HookedTransformer, saes: SAESet) -> tuple[HookedTransformer, SAESet]:
    """The model and SAEs in float64 (in place), where sums in another order agree to ~1e-12."""
    model.to(torch.float64, print_details=False)
    for hook in saes:
        saes[hook].to(torch.float64)
    return model, saes


def _digest(ids: list[str]) -> str:
    """A short fingerprint of a list of ids (results return through a pipe of limited size)."""
    import hashlib

    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def ablation_figures(batch_size: int) -> dict:
    """For circuits.core.parallel.run_local workers (and one process): what the streamed
    validation engine measures on a tiny float64 model, per ablation convention."""
    import random

    from circuits.circuit.ablation import Ablator
    from circuits.circuit.config import ABLATIONS, AblationSpec
    from circuits.circuit.faithfulness import cut, live_pool, measure, model_sites
    from circuits.core.vocab import hook_names
    from tasks.builtin import make_task

    model, saes = in_float64(tiny_hooked_model(), random_saes(hook_names(["resid", "mlp"], range(2))))
    task = make_task("ioi", TOK, n=8, split="train")
    circuit = [Node.at("blocks.0.hook_mlp_out", 3, 5), Node.at("blocks.1.hook_resid_post", task.n_pos - 1)]
    out = {}
    for how in ABLATIONS:
        ab = Ablator(model, saes, task, AblationSpec(how, seed=1), batch_size=batch_size)
        pool = live_pool(ab, model_sites(ab), random.Random(0))
        ranking = [*circuit, Site.at("blocks.1.hook_mlp_out", task.n_pos - 1), *pool.latents[:20]]
        out[how] = {
            "ends": [ab.ref.m_model, ab.ref.m_empty],
            "circuit": measure(ab, circuit, pool, n_random=2).to_dict(),
            "pool": [len(pool.latents), len(pool.errors), _digest([n.id for n in pool.latents + pool.errors])],
            "cut": cut(ab, ranking, 0.5, pool, n_random=2).to_dict() | {"seconds": 0.0},
        }
    return out


def large_result(n_bytes: int) -> bytes:
    """For `run_local`: a result far larger than a pipe's buffer (64 KiB on Linux)."""
    return b"x" * n_bytes


def families_graph() -> nx.DiGraph:
    """``hierarchical_graph`` with feature families: at L0 mlp@END the four strongest latents
    track IO (F1, validated), the other two are minor (F3); L0 attn@END's latent 1 tracks S (F2).
    Member nodes carry their family's id, as discovery writes them."""
    g = hierarchical_graph()
    mlp, attn = "blocks.0.hook_mlp_out", "blocks.0.hook_attn_out"
    specs = [
        ("F1", "IO identity at L0 mlp@END, supports", f"{mlp}@END", "IO", [f"{mlp}/{10 + i}@END" for i in range(4)]),
        ("F2", "S identity at L0 attn@END, supports", f"{attn}@END", "S", [f"{attn}/1@END"]),
        ("F3", "minor latents at L0 mlp@END", f"{mlp}@END", None, [f"{mlp}/{14 + i}@END" for i in range(2)]),
    ]
    families = []
    for fid, name, site, variable, members in specs:
        for m in members:
            g.nodes[m]["family"] = fid
        effect = sum(g.nodes[m]["effect"] for m in members)
        validated = {"interchange": 0.8, "interchange_random": 0.05} if variable else {}
        families.append(FamilyRecord(fid, name, site, variable, members, effect, 0.9, ablation_ratio=1.05, **validated))
    h = replace(record_of(g).hierarchy, families=families, family_level=level(3, 0.92, 3, ranking="families"))
    return with_record(g, hierarchy=h)
