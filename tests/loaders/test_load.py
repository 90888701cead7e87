"""The resolvers: a task spec's held-out split (the next seed, or a file's halves) and the
record a circuit keeps of it; the SAE set restricted to some hook kinds."""

import json

import pytest
import torch

from circuits.circuit.record import HeldOut
from circuits.core.errors import CircuitsError
from circuits.loaders import MIN_HELD_OUT, TaskSpec, hook_kinds, restrict
from tasks.builtin import make_task
from tasks.tokenizer import build_tokenizer

TOK = build_tokenizer()
ROW = {"clean": "When Mary and John went", "corrupt": "When Alice and Bob went", "answer": "to", "wrong_answer": "and"}


def test_a_built_in_task_is_held_out_by_the_next_seed():
    discovery, held_out, record = TaskSpec("ioi", n=8, seed=3).split(TOK)
    assert torch.equal(discovery.clean, make_task("ioi", TOK, n=8, seed=3).clean)
    assert torch.equal(held_out.clean, make_task("ioi", TOK, n=8, seed=4).clean)
    assert record == HeldOut("ioi", n=8, seed=4)


def test_a_prompt_file_is_held_out_by_its_second_half(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({**ROW, "answer": a}) + "\n" for a in ["to", "and", "the"] * 3))
    discovery, held_out, record = TaskSpec(str(path)).split(TOK)
    assert (discovery.n_examples, held_out.n_examples) == (4, 5)
    assert torch.equal(torch.cat([discovery.answer, held_out.answer]), make_task(str(path), TOK).answer)
    assert record == HeldOut(str(path), rows=(4, 9))


def test_too_few_prompts_to_hold_out_half_is_one_line(tmp_path):
    path = tmp_path / "few.jsonl"
    path.write_text((json.dumps(ROW) + "\n") * (2 * MIN_HELD_OUT - 1))
    with pytest.raises(CircuitsError, match="7 prompt pairs are too few to hold out half") as err:
        TaskSpec(str(path)).split(TOK)
    assert len(str(err.value).splitlines()) == 1


def test_restrict_to_hook_kinds():
    from circuits.core.vocab import hook_names
    from tests.helpers import random_saes

    saes = random_saes(hook_names(["resid", "mlp", "attn"], [0]), d_sae=8, k=2)
    assert hook_kinds(" resid, mlp ,") == ("resid", "mlp")
    assert list(restrict(saes, "mlp")) == ["blocks.0.hook_mlp_out"]
    assert restrict(saes, None) is saes
    with pytest.raises(CircuitsError, match=r"^--hooks: unknown kind\(s\) foo"):
        restrict(saes, "resid,foo")
