"""This process's place in a data-parallel run: accelerate does the wrapping and the collectives.

`tunepilot train CONFIG --nproc N` (or `torchrun` / `accelerate launch` around `tunepilot train`)
starts N processes; each builds a `Distributed` from the launcher's environment. With one process
every method is the identity, so the training loop reads the same either way:

    dist = Distributed.from_env(device)      # accelerate's Accelerator when WORLD_SIZE > 1
    model = dist.wrap(model)                 # DDP (accelerate.prepare)
    with dist.no_sync(model): ...            # accumulate without an all-reduce, sync on the last
    n = dist.sum(n_local)                    # global counts and losses

We write no parallelism of our own: DDP averages gradients over ranks, and the loop scales each
rank's loss by the world size so the synced gradient is the global token mean (see engines/run.py).
FSDP2 (`parallel.fsdp` / `fsdp_config`) shards through torch's `fully_shard` (engines/sharded.py):
its gradients are averaged the same way, and weights, checkpoints and the adapter go through the
state-dict helpers there; the methods below hide which strategy runs.
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

    @classmethod
    def from_env(cls, device: str, parallel: Any = None) -> Distributed:
        """One process, or the launcher's N: DDP by default, FSDP2 when the config asks for it."""
        from tunepilot.parallel import check_launchable

        if parallel is not None:
            check_launchable(parallel, device)  # DeepSpeed asked for: refused where it cannot run, even on 1
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls(None)
        from accelerate import Accelerator

        strategy = parallel.resolved if parallel is not None else "ddp"
        return cls(Accelerator(cpu=device == "cpu"), strategy, parallel)

    @property
    def sharded(self) -> bool:
        return self.strategy == "fsdp"

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

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """What trains: DDP around the model, the model sharded in place (FSDP2), or the model."""
        if self.sharded:
            from tunepilot.engines.sharded import shard

            return shard(model, self.parallel, self.world, self.device)
        return self.accelerator.prepare(model) if self.accelerator else model

    @contextlib.contextmanager
    def no_sync(self, model: torch.nn.Module):
        """Accumulate gradients locally; the next backward outside this block syncs them."""
        if self.sharded:
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

        if self.sharded:
            from tunepilot.engines.sharded import full_trainable_state

            state = full_trainable_state(model)  # a collective: every rank takes part
            if self.is_main:
                save_state(path, state)
        elif self.is_main:
            save_weights(path, model)
        self.barrier()

    def load_weights(self, path: Path, model: torch.nn.Module) -> None:
        from tunepilot.engines.checkpoint import load_weights

        if not self.sharded:
            load_weights(path, model)
            return
        from safetensors.torch import load_file

        from tunepilot.engines.sharded import load_full_trainable_state

        load_full_trainable_state(model, load_file(str(path / "trainable.safetensors")) if self.is_main else {})

    def adapter_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """The full trained weights for save_pretrained on rank 0 (None: the model's own state)."""
        if not self.sharded:
            return None
        from tunepilot.engines.sharded import full_trainable_state

        return full_trainable_state(model)

    def save_checkpoint(self, path: Path, model, optimizer, scheduler, state) -> None:
        if self.sharded:  # every rank writes its shard
            from tunepilot.engines.sharded import save_sharded_checkpoint

            save_sharded_checkpoint(path, model, optimizer, scheduler, state, self)
            return
        if self.is_main:  # DDP keeps the ranks' weights and optimizer states equal: one copy
            from tunepilot.engines.checkpoint import save_checkpoint

            save_checkpoint(path, model, optimizer, scheduler, state)
        self.barrier()

    def load_checkpoint(self, path: Path, model, optimizer, scheduler):
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

    def barrier(self) -> None:
        if self.accelerator:
            self.accelerator.wait_for_everyone()
