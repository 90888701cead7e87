"""Data parallelism over prompt batches with torch.distributed (gloo on CPU, nccl on GPU).

Every stage that streams over prompt batches (metrics, node effects, mean activations,
edges) takes the batches ``rank, rank + world, ...`` and all-reduces its sums, so every
process ends with the same totals and makes the same choices; rank 0 writes the results.
With torch.distributed not initialised all of this is a no-op (one process).

Launch: ``circuits discover --nproc N`` on one machine, or ``torchrun --nnodes M
--nproc-per-node N -m circuits.cli discover ...`` across machines (torchrun sets RANK,
WORLD_SIZE, MASTER_ADDR, MASTER_PORT; the CLI joins that group).
"""

from __future__ import annotations

import os
import socket
import traceback
from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist

from circuits.core.errors import CircuitsError


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_and_world()[0] == 0


def batch_starts(n_examples: int, batch_size: int) -> range:
    """This process's share of the batch start indices."""
    rank, world = rank_and_world()
    return range(rank * batch_size, n_examples, world * batch_size)


def all_reduce(tensors: Iterable[torch.Tensor]) -> None:
    """Sum each tensor over the processes, in place (no-op in one process)."""
    if rank_and_world()[1] == 1:
        return
    on_gpu = dist.get_backend() == "nccl"  # nccl reduces GPU tensors only; our sums live on the CPU
    for t in tensors:
        if on_gpu:
            g = t.cuda()
            dist.all_reduce(g, op=dist.ReduceOp.SUM)
            t.copy_(g.cpu())
        else:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


def all_reduce_floats(values: list[float]) -> list[float]:
    if rank_and_world()[1] == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    all_reduce([t])
    return t.tolist()


def join_from_environment() -> bool:
    """Join the process group torchrun describes in the environment (True if it did)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized():
        if torch.cuda.is_available():  # one GPU per process: "cuda" then means this one
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return True
    return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, fn: Callable, args: tuple, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or world) // world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out = fn(*args)
        if rank == 0:
            results.put(("ok", out))
    except BaseException as err:  # every worker's failure reaches the parent as one line
        results.put(("error", f"worker {rank}: {type(err).__name__}: {err}", traceback.format_exc(limit=3)))
        raise
    finally:
        dist.destroy_process_group()


def check_nproc(nproc: int) -> None:
    cores = os.cpu_count() or 1
    if nproc < 1:
        raise CircuitsError(f"--nproc must be at least 1, got {nproc}")
    if nproc > cores:
        raise CircuitsError(f"--nproc {nproc} is more than this machine's {cores} cores")


def run_local(nproc: int, fn: Callable, *args):
    """Run ``fn(*args)`` in ``nproc`` local processes joined by gloo; return rank 0's result.
    A failed worker stops them all and raises one CircuitsError."""
    check_nproc(nproc)
    ctx = torch.multiprocessing.get_context("spawn")
    results = ctx.SimpleQueue()
    items: list = []

    def drain() -> None:  # a result larger than the pipe's buffer blocks its worker until read
        while not results.empty():
            items.append(results.get())

    workers = torch.multiprocessing.start_processes(
        _worker, args=(nproc, _free_port(), fn, args, results), nprocs=nproc, join=False, start_method="spawn"
    )
    try:
        while True:
            drain()
            if workers.join(timeout=0.05):
                break
    except torch.multiprocessing.ProcessRaisedException:
        pass  # the worker's message is on the queue
    except torch.multiprocessing.ProcessExitedException as err:
        raise CircuitsError(f"a worker process died ({err}); nothing was written") from None
    drain()
    errors, out = [], None
    for item in items:
        if item[0] == "error":
            errors.append(item[1])
        else:
            out = item[1]
    if errors:
        raise CircuitsError(f"{errors[0]} (all workers stopped; nothing was written)")
    return out
