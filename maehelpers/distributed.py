"""Several processes, one pretraining: PyTorch's own launcher (torchrun) and DistributedDataParallel.

    torchrun --nproc_per_node=2 -m maehelpers pretrain --preset fast ...

Without a launcher (WORLD_SIZE unset or 1) nothing here does anything, and the single-process path
is unchanged. Under torchrun every rank draws the SAME global batch (order, crops and mask noise are
functions of seed and step) and keeps its own slice, so the global batch and its randomness do not
depend on the number of processes; the uniformity term sees the whole global batch through an
all-gather that keeps gradients. NCCL on CUDA, gloo on CPU.
"""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def slice(self, n: int) -> slice:
        """This rank's part of a global batch of n (n divisible by the world size)."""
        per = n // self.size
        return slice(self.rank * per, (self.rank + 1) * per)


def world() -> World:
    """The launcher's world (from torchrun's environment), initialised once; 1 process without it."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def device_for(w: World, device: torch.device) -> torch.device:
    """Each rank on its own GPU (its local rank); CPU ranks share the CPU."""
    return torch.device("cuda", w.local_rank) if device.type == "cuda" and w.size > 1 else device


def barrier(w: World) -> None:
    if w.size > 1:
        dist.barrier()


def mean_over_ranks(x: torch.Tensor, w: World) -> torch.Tensor:
    """The mean of a tensor over ranks (for logging the global loss); x itself when alone."""
    if w.size == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / w.size


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' rows of x in rank order, with gradients flowing back to each rank's own rows."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather
    return torch.cat(all_gather(x), dim=0)
