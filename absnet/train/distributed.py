"""Multi-process training and evaluation on ``torch.distributed`` (one process per device).

Three ways in, one code path: ``absc train SPEC --nproc N`` starts N local workers through
torchrun's own launcher API (:func:`torch.distributed.launcher.api.elastic_launch`, a standalone
c10d rendezvous on a free port, so nothing races for a port), and ``torchrun --nproc_per_node N -m
absnet train SPEC`` (one node or several, with torchrun's rendezvous flags) starts them itself.
Either way each worker finds ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR`` in its
environment and :func:`init_from_env` joins the process group: NCCL on GPUs, gloo on CPUs.

What is split and what is shared (reference: PyTorch DDP): every rank draws the same per-epoch
permutation and takes a disjoint contiguous slice of each global batch (``batch`` B per rank ⇒
global batch N·B, see :class:`absnet.data.loader.Loader`); gradients are averaged by
DistributedDataParallel, weighted so the step equals one process on the whole global batch;
random goals and directives draw from per-rank streams (rank 0 keeps the single-process streams);
rank 0 alone writes metrics and checkpoints; tests split the test set and sum the counts.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from absnet.diagnostics import AbsnetError, Diagnostic

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: ``rank`` of ``world`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Whether there is more than one process (collectives are needed)."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes files (rank 0)."""
        return self.rank == 0


def info() -> DistInfo:
    """The current job: from the initialised process group, else a single process.

    >>> info()
    DistInfo(rank=0, world=1, local_rank=0)
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (or ``--nproc``) as one worker of several."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and "RANK" in os.environ


def init_from_env(device: str = "cpu") -> tuple[DistInfo, str]:
    """Join the process group torchrun described in the environment; return the job and this rank's device.

    ``device`` ``cuda`` becomes ``cuda:<LOCAL_RANK>`` (NCCL); ``cpu`` uses gloo. A single process
    (no torchrun variables, or ``WORLD_SIZE=1``) joins nothing.

    Raises:
        AbsnetError: E608 when a variable is missing or malformed, or the group cannot be joined.
    """
    import torch.distributed as dist

    if not launched_by_torchrun():
        return DistInfo(), device
    missing = [v for v in ENV_VARS if not os.environ.get(v)]
    if missing:
        raise _error(f"the torchrun environment is incomplete: {', '.join(missing)} not set",
                     help="start workers with torchrun (or absc train --nproc N), which sets RANK, WORLD_SIZE, "
                          "LOCAL_RANK, MASTER_ADDR and MASTER_PORT")
    try:
        rank, world, local = (int(os.environ[v]) for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError:
        raise _error(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers, got {os.environ['RANK']!r}/"
                     f"{os.environ['WORLD_SIZE']!r}/{os.environ['LOCAL_RANK']!r}",
                     help="let torchrun set them") from None
    if torch.device(device).type == "cuda":
        if not torch.cuda.is_available() or local >= torch.cuda.device_count():
            seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
            raise _error(f"rank {rank} has local rank {local} but torch sees {seen} CUDA device(s)",
                         help="start at most one process per GPU (--nproc / --nproc_per_node), or use --device cpu")
        torch.cuda.set_device(local)
        device, backend = f"cuda:{local}", "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, rank=rank, world_size=world)
        except (RuntimeError, ValueError) as e:
            raise _error(f"rank {rank} of {world} could not join the {backend} process group at "
                         f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}: {e}",
                         help="check that every node can reach MASTER_ADDR:MASTER_PORT and that all were started "
                              "with the same --nnodes/--nproc_per_node") from None
    return DistInfo(rank, world, local), device


def shutdown() -> None:
    """Leave the process group (if any)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------- collectives


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of ``t`` over all ranks (``t`` itself in a single process); float64 on the wire
    for counts, on the group's device (NCCL needs CUDA tensors)."""
    import torch.distributed as dist

    if not info().enabled:
        return t
    wire = t.detach().to(_wire_device(), torch.float64).clone()
    dist.all_reduce(wire)
    return wire.to(t.device, t.dtype)


def all_reduce_sum_differentiable(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over all ranks with a backward (the gradient is summed over ranks too), for
    synchronised BatchNorm's per-channel counts and sums. Every rank must call it the same number of
    times in the same order, in the forward and in the backward."""
    from torch.distributed.nn.functional import all_reduce

    if not info().enabled:
        return t
    device = _wire_device()
    if t.device == device:
        return all_reduce(t)
    return all_reduce(t.to(device)).to(t.device)


def check_sync_bn(goal: Any) -> None:
    """E608 when a goal would make the ranks run different passes (a random choice of member per rank):
    synchronised BatchNorm's collectives would then wait for each other forever."""
    from absnet.goals.combinators import DProb

    random_choice = [g for g in goal.walk() if isinstance(g, DProb)]
    if random_choice:
        raise _error(f"sync_bn with the goal {goal}: {random_choice[0]} draws a member per process, so the processes "
                     "would run different BatchNorm passes", help="drop 'sync_bn true', or use Mix/LinMix instead")


def all_reduce_max(value: float) -> float:
    """The largest ``value`` over all ranks."""
    import torch.distributed as dist

    if not info().enabled:
        return value
    wire = torch.tensor([value], dtype=torch.float64, device=_wire_device())
    dist.all_reduce(wire, op=dist.ReduceOp.MAX)
    return float(wire)


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on any rank (every rank must call this at the same point)."""
    return all_reduce_max(1.0 if flag else 0.0) > 0


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects only: paths, small records)."""
    import torch.distributed as dist

    if not info().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
    import torch.distributed as dist

    if not info().enabled:
        return [obj]
    out: list[Any] = [None] * info().world
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait until every rank reaches this point."""
    import torch.distributed as dist

    if info().enabled:
        dist.barrier()


def _wire_device() -> torch.device:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def rank_stream(stream: str, rank: int) -> str:
    """The name of a per-rank random stream; rank 0 keeps the single-process name, so a 1-process run
    is the same with or without this module.

    >>> rank_stream("goal", 0), rank_stream("goal", 3)
    ('goal', 'goal/rank3')
    """
    return stream if rank == 0 else f"{stream}/rank{rank}"


# --------------------------------------------------------------------------- local launcher


def launch(entry: Callable[..., Any], args: tuple, nproc: int, *, quiet: bool = True) -> Any:
    """Run ``entry(*args)`` in ``nproc`` local worker processes, as torchrun would; return rank 0's result.

    The workers get the torchrun environment (they call :func:`init_from_env`); a standalone c10d
    rendezvous on port 0 picks a free port without races. If a worker fails, the others are stopped.
    Ctrl-C reaches the workers from the terminal (they share its process group) and is not also
    forwarded by the launcher, so a worker sees one SIGINT per Ctrl-C: the first checkpoints and
    stops, a second aborts (as in one process); SIGTERM is forwarded.
    ``quiet`` silences the launcher's own log (its tracebacks of failed workers) while it runs.

    Raises:
        AbsnetError: E608 when ``nproc`` is not positive or a worker fails without an absnet error.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise _error(f"--nproc expects a positive number of processes, got {nproc}", help="e.g. --nproc 2")
    if launched_by_torchrun():
        raise _error("--nproc was given inside a torchrun worker: the job would start processes twice",
                     help="drop --nproc (torchrun's --nproc_per_node already says how many), or run absc directly")
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1,
                          start_method="spawn", signals_to_handle="SIGTERM,SIGHUP,SIGQUIT")
    import logging

    elastic_log = logging.getLogger("torch.distributed.elastic")
    level = elastic_log.level
    if quiet:
        elastic_log.setLevel(logging.CRITICAL)
    import signal
    import threading

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _ignore) if main_thread else None  # not SIG_IGN: it would be inherited
    try:
        results = elastic_launch(config, entry)(*args)
    except ChildFailedError as e:
        messages = [str(f.message) for f in e.failures.values()]
        if any("_Reported" in m for m in messages):
            return 1  # rank 0 printed the diagnostics (launch_command's exit code)
        if any("KeyboardInterrupt" in m for m in messages):
            return 130  # a second Ctrl-C: the last complete checkpoint stays
        why = next((m.strip().splitlines()[-1] for m in messages if m.strip()), "no message")
        raise _error(f"a worker process failed: {why}",
                     help="rerun without --nproc to see the error of a single process (add --debug for the traceback)"
                     ) from None
    except SignalException as e:  # SIGTERM/SIGHUP: forwarded to the workers, which stopped
        return 128 + int(getattr(e, "sigval", signal.SIGTERM))
    finally:
        elastic_log.setLevel(level)
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return results.get(0)


def _ignore(signum: int, frame: Any) -> None:
    """The launcher's SIGINT handler while workers run: the workers handle Ctrl-C themselves."""


def launch_command(a: Any) -> int:
    """Run the ``absc`` sub-command of the parsed arguments ``a`` in ``a.nproc`` local workers."""
    import argparse

    if getattr(a, "engine", "torch") != "torch":
        raise _error(f"--engine {a.engine} trains in one process; --nproc {a.nproc} needs --engine torch",
                     help="drop --nproc, or use --engine torch")
    one = argparse.Namespace(**{**vars(a), "nproc": None})
    return int(launch(worker, (one,), a.nproc, quiet=not getattr(a, "debug", False)) or 0)


def worker(a: Any) -> int:
    """A ``--nproc`` worker: run the sub-command ``a.fn(a)`` with absc's error handling.

    An absnet error is printed by rank 0 and ends the worker with a failure, so the launcher stops
    the other workers (they may be waiting in a collective) and reports exit code 1."""
    rank = int(os.environ.get("RANK", "0"))
    try:
        return int(a.fn(a))
    except AbsnetError as e:
        if rank == 0:
            print(e.render(), file=sys.stderr, flush=True)
        raise _Reported(e.diagnostics[0].code if e.diagnostics else "") from None
    finally:
        shutdown()


class _Reported(RuntimeError):
    """An absnet error a worker already printed."""


def set_threads(threads: int | None, device: str) -> None:
    """``--threads``, or on the CPU under several local processes the cores shared out among them
    (torchrun's own default is one thread per process)."""
    if threads:
        torch.set_num_threads(threads)
    elif torch.device(device).type == "cpu" and int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1) > 1:
        local = int(os.environ["LOCAL_WORLD_SIZE"])
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))


def _error(message: str, help: str) -> AbsnetError:
    return AbsnetError(Diagnostic("E608", message, help=help))


__all__ = ["DistInfo", "all_gather_object", "all_reduce_max", "all_reduce_sum", "any_rank", "barrier",
           "broadcast_object", "info", "init_from_env", "launch", "launch_command", "launched_by_torchrun",
           "rank_stream", "set_threads", "shutdown", "worker"]
