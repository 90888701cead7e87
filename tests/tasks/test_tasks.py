import pytest
import torch

from circuits.core.errors import CircuitsError
from tasks import language as L
from tasks.builtin import BUILTIN_TASKS, make_task
from tasks.task import Task
from tasks.tokenizer import build_tokenizer

TOK = build_tokenizer()


@pytest.mark.parametrize("name", list(BUILTIN_TASKS))
def test_builtin_task_shapes(name):
    task = make_task(name, TOK, n=40, seed=1)
    assert task.clean.shape == task.corrupt.shape
    assert task.clean.shape[0] == 40
    assert (task.clean[:, 0] == TOK.bos_token_id).all()
    assert len(task.position_labels) == task.n_pos
    assert len(task.prompts) == 40
    # answers are single tokens of the vocabulary (or -1 padding)
    valid = task.answer[task.answer >= 0]
    assert valid.numel() > 0 and (valid < len(TOK)).all()
    assert (task.clean != task.corrupt).any(dim=1).all(), "every corrupt prompt differs from its clean one"


def test_builtin_tasks_are_deterministic():
    a, b = make_task("ioi", TOK, n=10, seed=3), make_task("ioi", TOK, n=10, seed=3)
    assert torch.equal(a.clean, b.clean) and torch.equal(a.corrupt, b.corrupt)
    assert not torch.equal(a.clean, make_task("ioi", TOK, n=10, seed=4).clean)


def test_ioi_roles_and_abc_corruption():
    task = make_task("ioi", TOK, n=50, seed=0)
    for i in range(50):
        io, s1, s2 = (task.clean[i, task.roles[r][i]].item() for r in ("IO", "S1", "S2"))
        assert io == task.answer[i, 0] and s1 == s2 == task.wrong[i, 0]
        names = set(task.corrupt[i, [2, 4, 10]].tolist())
        assert len(names) == 3 and not names & {io, s1}
    templates = {tuple(p.split()[i] for i in (0, 4, 5, 6, 10)) for p in task.prompts}
    heldout = {(t[0], *t[1], t[2]) for t in L.IOI_HELDOUT_TEMPLATES}
    assert templates <= heldout


def test_sva_corrupt_flips_subject_number():
    task = make_task("sva", TOK, n=30)
    for clean, corrupt, good, bad in zip(
        task.prompts, task.corrupt_prompts, task.answer[:, 0], task.wrong[:, 0], strict=True
    ):
        n1, n1c = clean.split()[1], corrupt.split()[1]
        assert (n1 in L.NOUNS_PL) != (n1c in L.NOUNS_PL)
        verb = TOK.convert_ids_to_tokens(int(good))
        assert (verb in L.VERBS_PL) == (n1 in L.NOUNS_PL)
        assert TOK.convert_ids_to_tokens(int(bad)) != verb


def _logits_with(values: dict[int, float], vocab: int = len(TOK), n_pos: int = 3) -> torch.Tensor:
    logits = torch.zeros(1, n_pos, vocab)
    for i, v in values.items():
        logits[0, -1, i] = v
    return logits


def test_logit_diff_metric():
    task = Task(
        "t",
        torch.zeros(1, 3, dtype=torch.long),
        torch.ones(1, 3, dtype=torch.long),
        answer=torch.tensor([[5]]),
        wrong=torch.tensor([[6]]),
    )
    logits = _logits_with({5: 2.0, 6: -1.5})
    assert task.metric_per_example(logits).item() == pytest.approx(3.5)
    assert task.correct_per_example(logits).item() == 1.0


def test_prob_diff_metric_ignores_padding():
    task = Task(
        "t",
        torch.zeros(1, 3, dtype=torch.long),
        torch.ones(1, 3, dtype=torch.long),
        answer=torch.tensor([[5, 6, -1]]),
        wrong=torch.tensor([[7, -1, -1]]),
        metric="prob_diff",
    )
    logits = _logits_with({5: 10.0, 6: 10.0, 7: 10.0}, vocab=8)
    probs = logits[0, -1].softmax(-1)
    expected = (probs[5] + probs[6] - probs[7]).item()
    assert task.metric_per_example(logits).item() == pytest.approx(expected)


def test_induction_logprob_metric():
    task = make_task("induction", TOK, n=2)
    logits = torch.zeros(2, task.n_pos, len(TOK))
    for k, pos in enumerate(task.score_pos.tolist()):
        logits[torch.arange(2), pos, task.answer[:, k]] = 100.0
    assert task.metric_per_example(logits) == pytest.approx(torch.zeros(2), abs=1e-4)
    assert task.correct_per_example(logits).tolist() == [1.0, 1.0]


def test_task_too_long_for_model():
    task = make_task("induction", TOK, n=2)
    with pytest.raises(CircuitsError, match=r"prompts are 20 tokens but the model's n_ctx is 16"):
        task.check_fits(16)


def test_bad_task_inputs():
    with pytest.raises(CircuitsError, match="unknown task 'iio'"):
        make_task("iio", TOK)
    with pytest.raises(CircuitsError, match="differ in shape"):
        Task(
            "t",
            torch.zeros(1, 3, dtype=torch.long),
            torch.zeros(1, 4, dtype=torch.long),
            answer=torch.tensor([[1]]),
            wrong=torch.tensor([[2]]),
        )
