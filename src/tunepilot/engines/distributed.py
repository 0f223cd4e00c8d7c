"""This process's place in a data-parallel run: accelerate does the wrapping and the collectives.

`tunepilot train CONFIG --nproc N` (or `torchrun` / `accelerate launch` around `tunepilot train`)
starts N processes; each builds a `Distributed` from the launcher's environment. With one process
every method is the identity, so the training loop reads the same either way:

    dist = Distributed.from_env(device)      # accelerate's Accelerator when WORLD_SIZE > 1
    model, optimizer = dist.prepare(model, make_optimizer)  # DDP (accelerate.prepare)
    with dist.no_sync(model): ...            # accumulate without an all-reduce, sync on the last
    n = dist.sum(n_local)                    # global counts and losses

We write no parallelism of our own: DDP averages gradients over ranks, and the loop scales each
rank's loss by the world size so the synced gradient is the global token mean (see engines/run.py).
FSDP2 (`parallel.fsdp` / `fsdp_config`) shards through torch's `fully_shard` (engines/sharded.py):
its gradients are averaged the same way, and weights, checkpoints and the adapter go through the
state-dict helpers there. DeepSpeed ZeRO (`parallel.deepspeed`) trains through DeepSpeed's engine
(engines/zero.py), on one process too; the methods below hide which strategy runs.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch

from tunepilot.errors import UserError


class Distributed:
    def __init__(self, accelerator: Any | None = None, strategy: str = "single", parallel: Any = None):
        self.accelerator, self.strategy, self.parallel = accelerator, strategy, parallel
        self.zero: Any = None  # engines/zero.py's Zero once start_zero has run (DeepSpeed)

    @classmethod
    def from_env(cls, device: str, parallel: Any = None) -> Distributed:
        """One process, or the launcher's N: DDP by default, FSDP2 when the config asks for it."""
        strategy = parallel.resolved if parallel is not None else "ddp"
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(None, "deepspeed" if strategy == "deepspeed" else "single", parallel)
        from accelerate import Accelerator

        from tunepilot.models import resolve_device

        # `device: auto` on a machine without a GPU is CPU too: accelerate must be told (cpu=True), or it
        # finds no accelerator backend and makes every launched process a lone rank 0 of a world of 1,
        # each training the whole run and writing the one stream (two writers of metrics.jsonl)
        accelerator = Accelerator(cpu=resolve_device(device).type == "cpu")
        if accelerator.num_processes != world:
            raise UserError(
                f"train.device: {device!r}: the launcher started {world} processes but accelerate joined "
                f"{accelerator.num_processes} ({accelerator.distributed_type}); this device cannot train "
                "data-parallel here, use device: cpu or cuda"
            )
        return cls(accelerator, strategy, parallel)

    def start_zero(self, ds_config: dict[str, Any]) -> None:
        """DeepSpeed's process group and settings (the JSON with its "auto" values filled)."""
        from tunepilot.engines.zero import Zero

        self.zero = Zero.start(ds_config)

    @property
    def sharded(self) -> bool:
        return self.strategy == "fsdp"

    @property
    def partitions_weights(self) -> bool:
        """Every forward gathers weights from all ranks (FSDP2, ZeRO-3): the ranks run them together."""
        return self.sharded or (self.zero is not None and self.zero.partitions_weights)

    @property
    def world(self) -> int:
        return self.accelerator.num_processes if self.accelerator else 1

    @property
    def rank(self) -> int:
        return self.accelerator.process_index if self.accelerator else 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device | None:
        return self.accelerator.device if self.accelerator else None

    def prepare(self, model: torch.nn.Module, make_optimizer) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """What trains (DDP around the model, the model sharded in place by FSDP2, DeepSpeed's engine,
        or the model) and the optimizer over the trained weights (FSDP2's after sharding; DeepSpeed
        takes it as its client optimizer)."""
        if self.zero is not None:
            optimizer = make_optimizer(_trained(model))
            return self.zero.prepare(model, optimizer), optimizer
        if self.sharded:
            from tunepilot.engines.sharded import shard

            trains = shard(model, self.parallel, self.world, self.device)
        else:
            trains = self.accelerator.prepare(model) if self.accelerator else model
        return trains, make_optimizer(_trained(model))

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        """One micro-batch's backward; `last`: the step's last, whose gradients are synced."""
        if self.zero is not None:
            self.zero.backward(loss, last)
        else:
            loss.backward()

    def step(self, optimizer, params: list[torch.nn.Parameter], max_norm: float) -> float:
        """Clip, step and zero the gradients; returns the global gradient norm before clipping."""
        if self.zero is not None:  # clipping: the DeepSpeed JSON's gradient_clipping (max_grad_norm)
            return self.zero.step(params)
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return norm

    @contextlib.contextmanager
    def no_sync(self, model: torch.nn.Module):
        """Accumulate gradients locally; the next backward outside this block syncs them."""
        if self.zero is not None:  # DeepSpeed: the loop marks the accumulation boundary itself
            yield
        elif self.sharded:
            model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)
        elif self.accelerator:
            with self.accelerator.no_sync(model):
                yield
        else:
            yield

    # -- weights: every rank calls these; rank 0 writes ------------------------------------------
    def save_weights(self, path: Path, model: torch.nn.Module) -> None:
        from tunepilot.engines.checkpoint import save_state, save_weights

        if self.sharded or self.zero is not None:
            state = self.adapter_state(model)  # a collective: every rank takes part
            if self.is_main:
                save_state(path, state)
        elif self.is_main:
            save_weights(path, model)
        self.barrier()

    def load_weights(self, path: Path, model: torch.nn.Module) -> None:
        from safetensors.torch import load_file

        from tunepilot.engines.checkpoint import load_weights

        if self.zero is not None:  # ZeRO-3: rank 0's copy is scattered; ZeRO-0/1/2: every rank reads it
            read = self.is_main or not self.zero.partitions_weights
            state = load_file(str(path / "trainable.safetensors")) if read else {}
            self.zero.load_trainable_state(model, state, self.is_main)
            return
        if not self.sharded:
            load_weights(path, model)
            return

        from tunepilot.engines.sharded import load_full_trainable_state

        load_full_trainable_state(model, load_file(str(path / "trainable.safetensors")) if self.is_main else {})

    def adapter_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """The full trained weights for save_pretrained on rank 0 (None: the model's own state)."""
        if self.zero is not None:
            return self.zero.trainable_state(model, self.is_main)
        if not self.sharded:
            return None
        from tunepilot.engines.sharded import full_trainable_state

        return full_trainable_state(model)

    def save_checkpoint(self, path: Path, model, optimizer, scheduler, state) -> None:
        if self.zero is not None:  # every rank writes its partition
            self.zero.save_checkpoint(path, scheduler, state, self)
            return
        if self.sharded:  # every rank writes its shard
            from tunepilot.engines.sharded import save_sharded_checkpoint

            save_sharded_checkpoint(path, model, optimizer, scheduler, state, self)
            return
        if self.is_main:  # DDP keeps the ranks' weights and optimizer states equal: one copy
            from tunepilot.engines.checkpoint import save_checkpoint

            save_checkpoint(path, model, optimizer, scheduler, state)
        self.barrier()

    def load_checkpoint(self, path: Path, model, optimizer, scheduler):
        if (path / "zero").is_dir() != (self.zero is not None):
            kind = "a DeepSpeed" if (path / "zero").is_dir() else "a non-DeepSpeed"
            raise UserError(f"{path}: {kind} checkpoint; resume it with the same parallel settings it was written with")
        if self.zero is not None:
            return self.zero.load_checkpoint(path, scheduler, self.world)
        if (path / "sharded").is_dir():
            if not self.sharded:
                raise UserError(
                    f"{path}: a sharded (FSDP) checkpoint; resume it with the same fsdp settings and process count"
                )
            from tunepilot.engines.sharded import load_sharded_checkpoint

            return load_sharded_checkpoint(path, model, optimizer, scheduler)
        from tunepilot.engines.checkpoint import load_checkpoint

        return load_checkpoint(path, model, optimizer, scheduler)

    def sum(self, value: float) -> float:
        return self.sums(value)[0]

    def sums(self, *values: float) -> list[float]:
        """Each value summed over the ranks, in one all-reduce; the values themselves on one process."""
        if not self.accelerator:
            return list(values)
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        return self.accelerator.reduce(t, "sum").tolist()

    def from_main(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (a stop decision, a task-metric score)."""
        if not self.accelerator:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        """End the launcher's process group once the ranks are done with it. A gloo group left to
        interpreter exit can abort a rank after its work is done ("terminate called without an active
        exception"). A one-process DeepSpeed group stays: DeepSpeed keeps it for the process's next run
        (a sweep's next trial), and a destroyed one is not made again."""
        if self.accelerator and torch.distributed.is_initialized():
            self.barrier()
            torch.distributed.destroy_process_group()

    def barrier(self) -> None:
        if self.accelerator:
            self.accelerator.wait_for_everyone()


def _trained(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
