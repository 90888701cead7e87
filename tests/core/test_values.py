"""NodeValues: one submodule's latents and error as one value, with the arithmetic attribution needs."""

import torch

from circuits.core.values import NodeValues, add_into, flat


def _random(lead=(2, 3), d_sae=5, d_err=4) -> NodeValues:
    return NodeValues(torch.randn(*lead, d_sae), torch.randn(*lead, d_err))


def test_arithmetic_acts_on_latents_and_error_alike():
    a, b = _random(), _random()
    for got, op in ((a + b, torch.add), (a - b, torch.sub), (a * b, torch.mul)):
        assert torch.equal(got.latents, op(a.latents, b.latents)) and torch.equal(got.error, op(a.error, b.error))
    half = a / 2
    assert torch.equal(half.latents, a.latents / 2) and torch.equal(half.error, a.error / 2)
    scaled = a * 3.0
    assert torch.equal(scaled.error, a.error * 3.0)


def test_delta_at_grad_is_the_effect_of_each_node():
    delta, grad = _random(), _random()
    effect = delta @ grad
    assert torch.equal(effect.latents, delta.latents * grad.latents)
    assert effect.error.shape == (2, 3)  # the error node's feature axis is summed away
    assert torch.allclose(effect.error, torch.einsum("bpd,bpd->bp", delta.error, grad.error))
    summed = effect.sum(0)
    assert summed.latents.shape == (3, 5) and torch.allclose(summed.error, effect.error.sum(0))


def test_mask_count_and_complement():
    mask = NodeValues.zeros((3,), 5).map(torch.Tensor.bool)
    mask.latents[1, 2] = True
    mask.error[0] = True
    assert mask.count() == (1, 1) and mask.complement().count() == (14, 2)


def test_leaves_running_sums_and_flat():
    v = _random()
    leaves = v.leaves()
    assert leaves.latents.requires_grad and leaves.error.requires_grad and leaves.latents.is_leaf
    sums = {"h": NodeValues.zeros((2, 3), 5, 4)}
    add_into(sums, {"h": v})
    add_into(sums, {"h": v})
    assert torch.allclose(sums["h"].latents, 2 * v.latents) and torch.allclose(sums["h"].error, 2 * v.error)
    assert [t.shape for t in flat(sums)] == [(2, 3, 5), (2, 3, 4)]
