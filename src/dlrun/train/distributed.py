"""Data-parallel training: the ranks torchrun starts, their process group, shards and sums.

`torchrun --nproc_per_node=N -m dlrun train ...` (or `dlrun train trainer.devices=N`, which
starts the same through torch.distributed's launcher API) runs N copies of `dlrun train`. Each
builds the same model and data, takes its shard of every global batch (data.batch_size / N
samples) and DistributedDataParallel averages the gradients, so the N ranks together take the
steps one process would take on the whole batch. Rank 0 alone writes the run directory.

The process group is gloo for CPU tensors and, where CUDA and NCCL are there, NCCL for CUDA
tensors: DDP's gradients go through NCCL on GPUs, and the small host-side agreements (the run
directory, a signal's stop) through gloo without touching the GPU.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from dlrun.errors import UserError


@dataclass(frozen=True)
class World:
    """This process's place among the ranks (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that logs, writes checkpoints, TensorBoard events and summary.json."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """The elementwise sum of `values` over the ranks (in place; the tensor itself when alone)."""
        if self.size > 1:
            dist.all_reduce(values)
        return values

    def any(self, flag: bool) -> bool:
        """Whether any rank's flag is set: every rank gets the same answer (a gloo all-reduce, no GPU sync)."""
        if self.size == 1:
            return flag
        value = torch.tensor([int(flag)])
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out


def from_env() -> World:
    """The World that torchrun's environment describes (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(rank=int(os.environ["RANK"]), size=size, local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                 local_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(size))))


def init_process_group(world: World) -> None:
    """Join torchrun's rendezvous (MASTER_ADDR/PORT): gloo for CPU tensors, NCCL for CUDA ones where available."""
    if not world.distributed or dist.is_initialized():
        return
    cuda = torch.cuda.is_available() and dist.is_nccl_available()
    if cuda:  # NCCL binds a rank to its GPU: set it before the first collective
        torch.cuda.set_device(world.local_rank % torch.cuda.device_count())
    dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo")


def destroy_process_group() -> None:
    """Shut the group down before the interpreter does: a process that exits with it still up can
    abort in gloo's threads ("terminate called without an active exception")."""
    if dist.is_initialized():
        dist.destroy_process_group()


NOW = re.compile(r"\$\{now:([^}]*)\}")


def shared_run_dir(pattern: str, when: datetime.datetime) -> str:
    """A hydra.run.dir pattern with its ${now:FORMAT} resolved at `when`: rank 0's clock for every rank."""
    return NOW.sub(lambda m: when.strftime(m.group(1)), pattern)


def refuse_sweep(args: list[str]) -> None:
    """-m under torchrun or trainer.devices: one line (each of a sweep's trials runs on one process)."""
    if "-m" in args or "--multirun" in args:
        raise UserError("torchrun (or trainer.devices) runs one training on several processes; a sweep (-m) "
                        "is not launched under it: drop -m (or trainer.devices), or run the sweep without torchrun")


def rank_overrides(args: list[str], world: World) -> list[str]:
    """The overrides that put every rank in one run directory and let rank 0 alone write there.

    Hydra resolves ${now:...} in each process, so N ranks would make N run directories: rank 0
    resolves the pattern once and broadcasts it. The other ranks write neither .hydra/ nor a log
    file (their warnings and errors still reach stderr). A mistake rank 0 finds here (a run
    directory that already holds a run) ends every rank, and one of them prints it (dlrun.say.say_once).
    """
    from omegaconf import OmegaConf

    from dlrun.paths import CONFIG_DIR

    refuse_sweep(args)
    given = [a for a in args if a.startswith("hydra.run.dir=")]
    message: list[Any] = [None, None]
    if world.main:
        try:
            from dlrun.rundir import refuse_reuse_before_hydra

            refuse_reuse_before_hydra(args)
            if given:
                pattern = given[-1].split("=", 1)[1]
            else:  # unresolved: ${now:...} is Hydra's resolver, not registered yet
                train_yaml = OmegaConf.to_container(OmegaConf.load(os.path.join(CONFIG_DIR, "train.yaml")))
                pattern = train_yaml["hydra"]["run"]["dir"]
            message = [shared_run_dir(pattern, datetime.datetime.now()), None]
        except UserError as exc:
            message = [None, str(exc)]
    dist.broadcast_object_list(message, src=0)
    run_dir, error = message
    if error is not None:
        raise UserError(error)  # on every rank: dlrun.say.say_once prints it from one
    mine = ("hydra.run.dir=",) if world.main else ("hydra.run.dir=", "hydra.output_subdir=", "hydra/job_logging=")
    out = [a for a in args if not a.startswith(mine)] + [f"hydra.run.dir='{run_dir}'"]
    if not world.main:
        out += ["hydra.output_subdir=null", "hydra/job_logging=disabled"]
    return out


def launch(devices: int, args: list[str]) -> int:
    """`dlrun train trainer.devices=N`: what `torchrun --standalone --nproc_per_node=N -m dlrun train ARGS`
    does, through torch.distributed's launcher API; returns the exit status.

    The ranks print their own lines (one of them a mistake's one line, dlrun.say.say_once), so the launcher's own report
    of a failed worker is silenced; a signal is passed on to the ranks, which save last.pt.
    """
    import logging
    import uuid

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # Each of torch elastic's modules sets its own logger's level (WARNING) when imported, which the
    # parent logger's level does not override: "Received 2 death signal, shutting down workers"
    # would come before a Ctrl-C's one line.
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("torch.distributed.elastic")]:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=devices, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    try:
        elastic_launch(config, sys.executable)("-m", "dlrun", "train", *args)
    except ChildFailedError as exc:
        codes = [failure.exitcode for _, failure in sorted(exc.failures.items())]
        return next((code for code in codes if code > 0), 1)  # a rank's own status, e.g. 2 (a mistake)
    except SignalException as exc:  # the ranks got the signal too, and saved their place
        return 130 if exc.sigval == signal.SIGINT else 143
    return 0
