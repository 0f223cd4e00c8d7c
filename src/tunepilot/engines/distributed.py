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
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch


class Distributed:
    def __init__(self, accelerator: Any | None = None):
        self.accelerator = accelerator

    @classmethod
    def from_env(cls, device: str) -> Distributed:
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls(None)
        from accelerate import Accelerator

        return cls(Accelerator(cpu=device == "cpu"))

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
        return self.accelerator.prepare(model) if self.accelerator else model

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.accelerator.unwrap_model(model) if self.accelerator else model

    def no_sync(self, model: torch.nn.Module):
        return self.accelerator.no_sync(model) if self.accelerator else contextlib.nullcontext()

    def sum(self, value: float) -> float:
        if not self.accelerator:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        return float(self.accelerator.reduce(t, "sum").item())

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
