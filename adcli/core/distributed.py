"""Several processes training one model: PyTorch DistributedDataParallel, launched by `torchrun`.

`torchrun --nproc_per_node=N -m adcli train ...` starts N processes and tells each its place through
the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); `Ranks.from_environment` joins the
process group (NCCL on CUDA, gloo on CPU). A run in one process has `Ranks.single()` and never
touches torch.distributed.

How a global batch is shared: the training loop's epoch order is one permutation for every rank;
each global batch is cut into `world × accumulate` micro-batches (`micro_batches`), rank r takes
micro-batches r·accumulate … (r+1)·accumulate − 1, and every micro-batch draws its randomness from
(seed, epoch, step, micro-batch number). DDP averages the gradients of the ranks, accumulation those
of a rank's micro-batches, so N ranks with accumulate A compute the step a single process computes
with accumulate N·A (as a DistributedSampler over that permutation would share it, one global batch
at a time).
"""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np
import torch
import torch.distributed as dist

from adcli.core.errors import AdcliError


@dataclasses.dataclass(frozen=True)
class Ranks:
    """This process's place among the processes of one training run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this object joined the process group, and leaves it in close()

    @classmethod
    def single(cls) -> Ranks:
        return cls()

    @classmethod
    def from_environment(cls, device: torch.device) -> tuple[Ranks, torch.device]:
        """Join torchrun's process group when WORLD_SIZE > 1 (else a single process); -> (ranks, the
        device this rank trains on: cuda:LOCAL_RANK on a GPU machine)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls.single(), device
        rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            if local_rank >= torch.cuda.device_count():
                raise AdcliError(f"rank {rank}: LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA "
                                 "GPUs here (lower --nproc_per_node)")
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        owns = not dist.is_initialized()
        if owns:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(rank, world, local_rank, owns), device

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run folder and talks to the console."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def mean(self, values: dict[str, float], device: torch.device) -> dict[str, float]:
        """The mean over ranks of each value (epoch losses); unchanged in a single process."""
        if not self.distributed or not values:
            return values
        names = sorted(values)
        t = torch.tensor([values[k] for k in names], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(names, t.tolist())}

    def share(self, count: int) -> list[int]:
        """Which of `count` work items (reflow chunks) this rank does: every world-th, from its rank."""
        return list(range(self.rank, count, self.world))

    def owner(self, item: int) -> int:
        """The rank that does work item `item` under `share`."""
        return item % self.world

    def broadcast(self, tensor: torch.Tensor, source: int) -> torch.Tensor:
        """`source`'s tensor, on every rank, in place (same shape and dtype everywhere; on the rank's
        device: NCCL sends CUDA tensors only). Tensors only: nothing is pickled between processes."""
        if self.distributed:
            dist.broadcast(tensor, src=source)
        return tensor

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def micro_batches(indices: np.ndarray, world: int, accumulate: int, rank: int) -> list[tuple[int, np.ndarray]]:
    """Rank `rank`'s share of one global batch: [(micro-batch number, its indices)], `accumulate` of
    them, from the batch cut into world × accumulate near-equal parts in order."""
    count = world * accumulate
    if len(indices) < count:
        raise AdcliError(f"a batch of {len(indices)} cannot be shared by {world} process(es) × accumulate "
                         f"{accumulate}: each needs at least one image (raise the batch size)")
    parts = np.array_split(indices, count)
    return [(m, parts[m]) for m in range(rank * accumulate, (rank + 1) * accumulate)]


def torchrun_argv(argv: list[str], devices: int, python: str = sys.executable) -> list[str]:
    """`adcli ARGV --devices N` as the torchrun launch it stands for: N processes on this machine
    (`--standalone`: a free local port), each running `adcli ARGV` without --devices."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--devices":
            skip = True
        elif not arg.startswith("--devices="):
            rest.append(arg)
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}", "-m", "adcli", *rest]
