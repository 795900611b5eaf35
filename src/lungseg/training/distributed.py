"""torch.distributed helpers: torchrun environment, process-group setup (NCCL on GPUs, gloo on CPU).

A single process started without torchrun works without a process group (rank 0 of world size 1).
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


class DistributedSetupError(RuntimeError):
    """The requested device / process layout cannot run on this machine."""


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job, from torchrun's environment variables."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value != "" else default
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def dist_env() -> DistEnv:
    """RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE as set by torchrun (defaults: one process)."""
    world = _env_int("WORLD_SIZE", 1)
    return DistEnv(
        rank=_env_int("RANK", 0),
        world_size=world,
        local_rank=_env_int("LOCAL_RANK", 0),
        local_world_size=_env_int("LOCAL_WORLD_SIZE", world),
    )


def is_distributed() -> bool:
    """Whether a process group is initialized."""
    return dist.is_available() and dist.is_initialized()


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a SLURM allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def select_device(env: DistEnv, device: str = "auto") -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` when CUDA is used, else ``cpu``.

    ``device`` is ``"auto"`` (CUDA when available), ``"cuda"`` or ``"cpu"``. Errors clearly when more
    processes run on this node than there are visible GPUs.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if not use_cuda:
        cores = available_cpus()
        if env.local_world_size > cores:
            raise DistributedSetupError(
                f"{env.local_world_size} processes per node but only {cores} CPU core(s) available to this job; "
                f"start torchrun with --nproc_per_node<={cores} (train.nproc_per_node), or train on GPUs"
            )
        return torch.device("cpu")
    n_gpus = torch.cuda.device_count()
    if n_gpus == 0:
        raise DistributedSetupError("device 'cuda' requested but no CUDA GPU is visible")
    if env.local_world_size > n_gpus or env.local_rank >= n_gpus:
        raise DistributedSetupError(
            f"{env.local_world_size} processes per node but only {n_gpus} visible GPU(s) "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); "
            f"start torchrun with --nproc_per_node<={n_gpus}, or train on CPU"
        )
    return torch.device("cuda", env.local_rank)


def init_distributed(device: str = "auto") -> tuple[DistEnv, torch.device]:
    """Set this process's device and, when WORLD_SIZE > 1, join the process group.

    Backend: NCCL when training on CUDA, gloo on CPU. Reuses an already initialized group.
    """
    env = dist_env()
    dev = select_device(env, device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if env.world_size > 1 and not is_distributed():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {}
        if dev.type == "cuda" and "device_id" in inspect.signature(dist.init_process_group).parameters:
            kwargs["device_id"] = dev
        dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size, **kwargs)
    return env, dev


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process)."""
    return rank() == 0


def barrier() -> None:
    """Wait for all processes (no-op without a process group)."""
    if not is_distributed():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place (no-op without a process group); returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``tensor`` over all processes, in place (no-op without a process group); returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy ``src``'s buffers (e.g. BatchNorm running statistics) to every process."""
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src)


def cleanup() -> None:
    """Leave the process group (no-op without one)."""
    if is_distributed():
        dist.destroy_process_group()


def gather_to_main(obj: object) -> list[object] | None:
    """Every process's ``obj`` as a list on rank 0 (``None`` elsewhere); ``[obj]`` without a group."""
    if not is_distributed():
        return [obj]
    out: list[object] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


@torch.no_grad()
def weighted_average_(module: torch.nn.Module, weight: float) -> None:
    """Federated averaging: replace every floating parameter and buffer by ``sum_k weight_k * value_k``
    over all processes (``weight`` = this process's n_k / n; the weights must sum to 1).

    Computed in float64 in one all-reduce and cast back, so the result is the n_k-weighted mean of the
    clients' values to the precision of the stored dtype. Integer buffers (BatchNorm's batch counter)
    take the maximum over clients. Without a process group the module is left as it is (weight 1).
    """
    if not is_distributed():
        return
    state = list(module.state_dict().values())
    _all_reduce_into([t for t in state if t.is_floating_point()], torch.float64, dist.ReduceOp.SUM, weight)
    _all_reduce_into([t for t in state if not t.is_floating_point()], torch.int64, dist.ReduceOp.MAX)


def _all_reduce_into(tensors: list[torch.Tensor], dtype: torch.dtype, op: dist.ReduceOp, scale: float = 1) -> None:
    """All-reduce ``tensors`` (each times ``scale``) as one flat ``dtype`` vector and copy the result back."""
    if not tensors:
        return
    flat = torch.cat([t.detach().reshape(-1).to(dtype) * scale for t in tensors])
    dist.all_reduce(flat, op=op)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t).to(t.dtype))
        offset += t.numel()
