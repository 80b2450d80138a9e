"""Several processes, one pretraining: PyTorch's own launcher (torchrun) and DistributedDataParallel.

    torchrun --nproc_per_node=2 -m maehelpers pretrain --preset fast ...

Without a launcher (WORLD_SIZE unset or 1) nothing here does anything, and the single-process path
is unchanged. Under torchrun every rank draws the SAME global batch (order, crops and mask noise are
functions of seed and step) and keeps its own slice, so the global batch and its randomness do not
depend on the number of processes; the uniformity term sees the whole global batch through an
all-gather that keeps gradients. The backend follows the device asked for: NCCL for CUDA, gloo for
CPU (also on a machine with GPUs). Errors before training (a bad run folder, a checkpoint only some
ranks can see, a failed download) are agreed: every rank raises, none is left waiting at a barrier.
"""
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    group: bool = False     # a process group exists (torchrun, even with one process): collectives run

    @property
    def main(self) -> bool:
        return self.rank == 0

    def slice(self, n: int) -> slice:
        """This rank's part of a global batch of n (n divisible by the world size)."""
        per = n // self.size
        return slice(self.rank * per, (self.rank + 1) * per)


class AgreedError(RuntimeError):
    """Another rank failed before training; every rank stops with its message."""


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def world(device: torch.device | None = None) -> World:
    """The launcher's world (from torchrun's environment), initialised once for `device` (NCCL for
    CUDA, one GPU per local rank; gloo for CPU); 1 process without a launcher. Under torchrun a group
    is made even for one process, so a single GPU runs the NCCL code (DDP, the gathered uniformity)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        return World()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = device is not None and device.type == "cuda"
        if cuda:
            if local >= torch.cuda.device_count():
                raise ValueError(f"local rank {local} has no GPU of its own: this machine has "
                                 f"{torch.cuda.device_count()}; start at most that many processes per machine "
                                 "(--nproc_per_node) or train on the CPU (--device cpu)")
            torch.cuda.set_device(local)
        dist.init_process_group(backend_for(device or torch.device("cpu")),
                                device_id=torch.device("cuda", local) if cuda else None, **group_timeout())
    return World(dist.get_rank(), dist.get_world_size(), local, group=True)


def group_timeout() -> dict:
    """The process group's timeout from MAEHELPERS_PG_TIMEOUT_S (seconds), else PyTorch's default (NCCL
    10 minutes). No rank waits in a collective during a download (data.locked), so the default holds
    for a first run too; raise it for slow shared file systems."""
    seconds = os.environ.get("MAEHELPERS_PG_TIMEOUT_S")
    return {"timeout": timedelta(seconds=float(seconds))} if seconds else {}


def close_world() -> None:
    """At the end of a command under torchrun: wait until every rank is done, then destroy the
    process group (a rank that destroyed it while another still finished its last collective was
    seen to abort under gloo). Called on success only: after an error the launcher ends the job."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def gather_objects(w: World, obj) -> list:
    """Every rank's `obj`, in rank order ([obj] when alone)."""
    if not w.group:
        return [obj]
    out = [None] * w.size
    dist.all_gather_object(out, obj)
    return out


def agreed(w: World, fn):
    """fn() on every rank; if it raised on any rank, every rank raises (the failing rank its own
    error, the others AgreedError naming it), so no rank waits at a barrier for one that is gone."""
    try:
        out, error = fn(), None
    except Exception as e:  # noqa: BLE001 - passed on, never swallowed
        out, error = None, e
    failures = [(r, m) for r, m in enumerate(gather_objects(w, None if error is None else str(error))) if m]
    if error is not None:
        raise error
    if failures:
        rank, message = failures[0]
        raise AgreedError(f"rank {rank} failed before training: {message}")
    return out


def device_for(w: World, device: torch.device) -> torch.device:
    """Each rank on its own GPU (its local rank); CPU ranks share the CPU."""
    return torch.device("cuda", w.local_rank) if device.type == "cuda" and w.group else device


def barrier(w: World) -> None:
    if w.group:
        dist.barrier()


def mean_over_ranks(x: torch.Tensor, w: World) -> torch.Tensor:
    """The mean of a tensor over ranks (for logging the global loss); x itself when alone."""
    return sum_over_ranks(x, w) / w.size if w.group else x


def sum_over_ranks(x: torch.Tensor, w: World) -> torch.Tensor:
    """One all-reduce (sum) of a detached copy; x itself when alone."""
    if not w.group:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' rows of x in rank order, with gradients flowing back to each rank's own rows."""
    if not (dist.is_available() and dist.is_initialized()):
        return x
    from torch.distributed.nn.functional import all_gather
    return torch.cat(all_gather(x), dim=0)
