"""Multi-process training under torchrun, and where training runs (`--device`). No MLflow in here.

`torchrun --nproc-per-node N -m aqtrack train ...` starts N processes. Rank 0 does everything a single
process does (MLflow, the run lock, checkpoints, the report); the others train their share of each
batch, write nothing, and learn from rank 0 which run they are in and which state to start from. Without
torchrun's environment this is a world of one: no process group, no collectives, nothing changes.

Training with N processes is meant to be the same computation as with one: the same global batches
(see `Shards`), batch statistics over the whole batch (`GlobalBatchNorm1d`), the loss averaged over the
whole batch; only the order of floating-point reductions differs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import BatchSampler, DistributedSampler, Sampler

from aqtrack.config import flag
from aqtrack.errors import ConfigError, DistributedError, described
from aqtrack.training.model import MaskedBatchNorm1d

log = logging.getLogger(__name__)

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass
class World:
    """This process's place among the training processes (a world of one without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    planned: bool = field(default=False, compare=False)  # rank 0 has shared its plan

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over all processes, in place (alone: as it is)."""
        if self.size > 1:
            torch.distributed.all_reduce(tensor)
        return tensor

    def share(self, obj: Any = None) -> Any:
        """Rank 0's `obj`, on every rank. Pickled, so only between our own processes."""
        if self.size == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def share_plan(self, plan: Any) -> None:
        """Rank 0: tell the others what to train (after this, a failure reaches them through training)."""
        self.share(_Message(plan=plan))
        self.planned = True

    def refuse(self, error: BaseException) -> None:
        """Rank 0, failing before its plan was shared: tell the others why, so they stop now."""
        if self.size == 1 or not self.is_main or self.planned:
            return
        self.planned = True
        self.share(_Message(error=described(error)))
        # The others exit now, and torchrun then sends this process SIGTERM: say why first.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def await_plan(self) -> Any:
        """The others: rank 0's plan, or a DistributedError saying why rank 0 stopped."""
        message = self.share()
        if message.error is not None:
            raise DistributedError(f"rank {self.rank}: rank 0 stopped before training ({message.error})")
        return message.plan


SINGLE = World()


@dataclass
class _Message:
    plan: Any = None
    error: str | None = None


def world_from_env(env: dict[str, str] | os._Environ = os.environ) -> World:
    """The world torchrun describes in the environment; a world of one without it."""
    if "WORLD_SIZE" not in env:
        return World()
    try:
        rank, size, local = (int(env.get(name, "0")) for name in TORCHRUN_ENV)
    except ValueError as e:
        raise ConfigError(
            f"RANK, WORLD_SIZE and LOCAL_RANK must be integers ({e}); start aqtrack with torchrun, "
            "or unset them to train in one process"
        ) from None
    if not 0 <= rank < size:
        raise ConfigError(f"RANK={rank} is not in [0, WORLD_SIZE={size}); start aqtrack with torchrun")
    return World(rank, size, local)


@contextlib.contextmanager
def joined() -> Iterator[World]:
    """This process's world for the block: under torchrun, the process group joined and left again."""
    world = world_from_env()
    if world.size == 1:
        yield world
        return
    dist = torch.distributed
    if torch.cuda.is_available() and world.local_rank < torch.cuda.device_count():
        torch.cuda.set_device(world.local_rank)
    # gloo for CPU tensors, NCCL for CUDA ones: the device is a run setting that only rank 0 knows for
    # sure (a resumed run's own), and the plan that tells the others travels before it is used.
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    dist.init_process_group(backend)
    if world.is_main:
        log.info("training with %d processes (torchrun, %s)", world.size, backend)
    try:
        yield world
    finally:
        dist.destroy_process_group()


def lost_peer(error: BaseException) -> bool:
    """Whether a collective failed because another process is gone (gloo says so in a RuntimeError)."""
    text = str(error)
    gone = "closed by peer" in text or "reset by peer" in text
    return isinstance(error, torch.distributed.DistError) or gone


def resolve_device(name: str, world: World = SINGLE) -> torch.device:
    """`--device auto|cpu|cuda` as a torch device: under torchrun, CUDA device LOCAL_RANK."""
    cuda = torch.cuda.is_available()
    if name == "cpu" or (name == "auto" and not cuda):
        return torch.device("cpu")
    if not cuda:
        raise ConfigError(
            f"{flag('device')} cuda: no CUDA device is available (torch {torch.__version__}, CUDA build: "
            f"{torch.version.cuda or 'none'}); use {flag('device')} cpu or auto"
        )
    if world.local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"{flag('device')} {name}: local rank {world.local_rank} has no GPU of its own (this machine has "
            f"{torch.cuda.device_count()}); start at most that many processes per node, or use "
            f"{flag('device')} cpu"
        )
    return torch.device("cuda", world.local_rank)


class Shards(Sampler[list[int]]):
    """This process's share of each global batch: its `rank::size` slice.

    The global batches are consecutive `batch_size` slices of a `DistributedSampler`'s order over the
    whole dataset (shuffled by (seed, epoch) when a seed is given; `set_epoch` before each epoch), so
    they are the same whatever the number of processes, and a resumed epoch's order follows from its
    number alone. Unlike a `DistributedSampler` with one replica per process, nothing is padded with
    repeated samples or dropped when the sizes don't divide: a process may get one sample less than
    another, or none of a short last batch; `global_sizes` lets the loss average over the whole batch.
    """

    def __init__(self, n: int, batch_size: int, world: World = SINGLE, seed: int | None = None) -> None:
        self.order = DistributedSampler(
            range(n),
            num_replicas=1,
            rank=0,
            shuffle=seed is not None,
            seed=seed or 0,  # type: ignore[arg-type]
        )
        self.batches = BatchSampler(self.order, batch_size, drop_last=False)
        self.world = world
        self.global_sizes = [min(batch_size, n - start) for start in range(0, n, batch_size)]

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            yield batch[self.world.rank :: self.world.size]

    def __len__(self) -> int:
        return len(self.global_sizes)


class GlobalBatchNorm1d(MaskedBatchNorm1d):
    """BatchNorm1d whose training statistics are those of the global batch, summed over all processes
    (torch's SyncBatchNorm does this on GPUs only; this works with gloo on CPU too). Sums are taken in
    float64 so mean and variance from E[x^2] - E[x]^2 lose nothing to cancellation. The all-reduce is
    differentiable: the backward pass sums the statistics' gradients over the processes the same way.
    With a mask (x [B, C, T], mask bool [B, T]; see `MaskedBatchNorm1d`) the sums and the count are
    over the real frames of every process, whatever length each process cut its share to. Evaluation
    uses the running statistics, identical on every process, with no communication."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # x [B, C(, T)]
        if not self.training:
            return super().forward(x)  # BatchNorm1d with the running statistics
        x64, dims = x.double(), [0, *range(2, x.dim())]  # statistics per channel (dim 1)
        if mask is None:
            count = x64.new_full((1,), x[:, 0].numel())
        else:  # padded frames (finite: convolutions of zeros) add exact zeros to both sums, and
            # nothing to the count; multiplying by the mask is much cheaper than torch.where on CPU
            x64, count = x64 * mask[:, None, :].to(x64.dtype), mask.sum().to(x64.dtype).view(1)
        local = torch.cat([x64.sum(dim=dims), x64.square().sum(dim=dims), count])
        # Every process calls this all-reduce once per forward, padded share or not (a collective).
        total = _AllReduce.apply(local)  # [2C + 1]: sum, sum of squares, count
        c, count = self.num_features, total[-1]
        mean = total[:c] / count
        var = (total[c : 2 * c] / count - mean.square()).clamp_min(0)
        self.update_running_stats(mean, var, count)
        scale = self.weight.double() * torch.rsqrt(var + self.eps)
        shift = self.bias.double() - mean * scale
        shape = (1, -1, *[1] * (x.dim() - 2))
        return x * scale.float().view(shape) + shift.float().view(shape)


class _AllReduce(torch.autograd.Function):
    """A sum over the processes that gradients flow through: the gradient of each process's input is
    the sum of the output gradients of all processes."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        torch.distributed.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm1d (masked or not) by a GlobalBatchNorm1d holding the same parameters and
    buffers, so state dicts, checkpoints and the optimizer's parameter list are unchanged."""
    for name, child in module.named_children():
        if type(child) in (nn.BatchNorm1d, MaskedBatchNorm1d):
            synced = GlobalBatchNorm1d(child.num_features, child.eps, child.momentum, device="meta")
            synced.weight, synced.bias = child.weight, child.bias
            for buffer in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(synced, buffer, getattr(child, buffer))
            synced.train(child.training)
            setattr(module, name, synced)
        else:
            sync_batchnorm(child)
    return module


def wrap(model: nn.Module, device: torch.device, world: World) -> nn.Module:
    """The module the training step calls: `model` itself alone; with others, `model` with global batch
    statistics inside DistributedDataParallel (which averages the gradients over the processes)."""
    if world.size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    sync_batchnorm(model)
    # The running statistics come out identical on every process (global batch statistics), so DDP
    # need not broadcast buffers before every forward pass (it still does once, here).
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False
    )
