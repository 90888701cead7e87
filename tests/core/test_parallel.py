"""circuits.core.parallel: no-ops in one process, one-line errors, and two real gloo processes."""

import os

import pytest
import torch

from circuits.core.errors import CircuitsError
from circuits.core.parallel import all_reduce, all_reduce_floats, batch_starts, check_nproc, run_local
from tests.helpers import all_reduced_arange, fail_in_worker_1, large_result


def test_batch_starts_in_one_process():
    assert batch_starts(10, 4) == range(0, 10, 4)
    assert list(batch_starts(8, 4)) == [0, 4]
    assert list(batch_starts(0, 4)) == []


def test_all_reduce_is_a_no_op_in_one_process():
    t = torch.tensor([1.0, -2.0, 3.5])
    all_reduce([t])
    assert torch.equal(t, torch.tensor([1.0, -2.0, 3.5]))
    assert all_reduce_floats([1.5, 2.0]) == [1.5, 2.0]


@pytest.mark.parametrize(
    "nproc, message",
    [
        (0, "--nproc must be at least 1, got 0"),
        (-3, "--nproc must be at least 1, got -3"),
        ((os.cpu_count() or 1) + 1, f"--nproc {(os.cpu_count() or 1) + 1} is more than this machine's"),
    ],
)
def test_bad_nproc_is_one_line(nproc, message):
    with pytest.raises(CircuitsError) as err:
        check_nproc(nproc)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores")
def test_two_processes_sum_and_return_rank_0s_result():
    assert run_local(2, all_reduced_arange) == [0.0, 2.0, 4.0]  # twice [0, 1, 2]


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores")
def test_a_failing_worker_is_one_error_naming_it():
    with pytest.raises(CircuitsError) as err:
        run_local(2, fail_in_worker_1)
    message = str(err.value)
    assert message.startswith("worker 1: ValueError: planted failure") and "\n" not in message


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores")
def test_a_result_larger_than_the_pipe_comes_back():
    # the parent reads results while it waits: a worker blocked on a full pipe never exits
    assert run_local(2, large_result, 4_000_000) == b"x" * 4_000_000
