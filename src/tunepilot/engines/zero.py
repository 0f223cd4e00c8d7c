"""DeepSpeed ZeRO (stages 0-3) through DeepSpeed's own public API, with the training loop kept in view.

    zero = Zero.start(ds_config)                # the process group (created here for one process)
    engine = zero.prepare(model, optimizer)      # deepspeed.initialize with the filled JSON
    zero.backward(loss, last=i == n - 1)         # per micro-batch; the boundary is set by the loop
    grad_norm = zero.step(params)                # reduce, clip, optimizer step, zero the gradients

The user's JSON (`deepspeed: ds_z3_config.json`, as LLaMA-Factory and Axolotl write it) has its
"auto" values filled from the run config (parallel.deepspeed_config). The optimizer and the
schedule are the run's own: the optimizer is handed to `deepspeed.initialize` as a client
optimizer and the loop steps its schedule, so `lr_scheduler_type`, warmup and phases mean the same
as without DeepSpeed. Gradient accumulation boundaries are set by the loop (DeepSpeed's
`set_gradient_accumulation_boundary`), and the loss is already the global token mean, so DeepSpeed
does not divide it again (`scale_wrt_gas=False`).

Weights: ZeRO-3 partitions every parameter; the trained ones are gathered with
`deepspeed.zero.GatheredParameters` to save the best copy and the PEFT adapter, and checkpoints are
DeepSpeed's own (`save_checkpoint`, every rank its partition, the frozen base left out).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from tunepilot.engines.checkpoint import LoopState, read_loop_state, reading_checkpoint
from tunepilot.errors import UserError
from tunepilot.io import atomic_write_dir, atomic_write_json
from tunepilot.parallel import zero_stage

TAG = "zero"  # the one checkpoint tag inside a run's checkpoint/zero folder


class Zero:
    def __init__(self, ds_config: dict[str, Any]):
        self.ds_config = ds_config
        self.engine: Any = None

    @classmethod
    def start(cls, ds_config: dict[str, Any]) -> Zero:
        """Join the launcher's process group (accelerate made it), or make a one-process group: DeepSpeed
        runs inside torch.distributed even alone (NCCL on GPUs, gloo on CPU, DeepSpeed's choice)."""
        if not torch.distributed.is_initialized():
            import deepspeed

            # DeepSpeed reads the launcher's variables; one process started without a launcher has none
            for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
                os.environ.setdefault(key, value)
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
            deepspeed.init_distributed(auto_mpi_discovery=False, verbose=False)
        return cls(ds_config)

    @property
    def stage(self) -> int:
        return zero_stage(self.ds_config)

    @property
    def partitions_weights(self) -> bool:
        """ZeRO-3: every forward gathers the weights, so every rank must run as many forwards."""
        return self.stage == 3

    def prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> torch.nn.Module:
        """The DeepSpeed engine that trains `model`; `optimizer` (the run's own, a client optimizer to
        DeepSpeed) keeps its param groups, so the loop's schedule still sets their learning rates."""
        import deepspeed

        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=self.ds_config, dist_init_required=False
        )
        return self.engine

    # -- one optimizer step --------------------------------------------------------------------------
    def backward(self, loss: torch.Tensor, last: bool) -> None:
        self.engine.set_gradient_accumulation_boundary(last)  # reduce (and step) on the last micro-batch
        self.engine.backward(loss, scale_wrt_gas=False)  # the loop's loss is already the global mean

    def step(self, params: list[torch.nn.Parameter]) -> float:
        """Clip (the JSON's gradient_clipping), step the optimizer, zero the gradients; the global
        gradient norm before clipping. ZeRO-0 keeps full gradients on the parameters: measured there."""
        local = None
        if self.stage == 0:
            grads = [p.grad for p in params if p.grad is not None]
            local = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else local if local is not None else float("nan")

    # -- weights -------------------------------------------------------------------------------------
    def trainable_state(self, model: torch.nn.Module, is_main: bool) -> dict[str, torch.Tensor]:
        """The trained weights, whole, on rank 0 (empty elsewhere); a collective under ZeRO-3."""
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        with self._gathered([p for _, p in named], modifier_rank=None):
            return {n: p.detach().cpu().clone() for n, p in named} if is_main else {}

    def load_trainable_state(self, model: torch.nn.Module, state: dict[str, torch.Tensor], is_main: bool) -> None:
        """Rank 0's weights written into every rank's partition (ZeRO-3) or copy."""
        named = {n: p for n, p in model.named_parameters() if p.requires_grad}
        with self._gathered(list(named.values()), modifier_rank=0), torch.no_grad():
            if is_main or self.stage < 3:
                for name, value in state.items():
                    named[name].copy_(value.to(named[name].device, named[name].dtype))

    def _gathered(self, params: list[torch.nn.Parameter], modifier_rank: int | None):
        if self.stage < 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)

    # -- checkpoints ---------------------------------------------------------------------------------
    def save_checkpoint(self, path: Path, scheduler, state: LoopState, dist) -> None:
        """DeepSpeed writes every rank's partition (the frozen base left out) into a staging folder;
        rank 0 swaps it into place with the schedule and loop state, atomically."""
        staging = path.with_name(f".{path.name}.zero")
        if dist.is_main:
            shutil.rmtree(staging, ignore_errors=True)
        dist.barrier()
        self.engine.save_checkpoint(str(staging), tag=TAG, save_latest=False, exclude_frozen_parameters=True)
        dist.barrier()
        if dist.is_main:

            def fill(tmp: Path) -> None:
                os.replace(staging, tmp / "zero")
                torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
                atomic_write_json(tmp / "zero.json", {"stage": self.stage, "world": dist.world})
                atomic_write_json(tmp / "state.json", asdict(state))

            atomic_write_dir(path, fill)
        dist.barrier()

    def load_checkpoint(self, path: Path, scheduler, world: int) -> LoopState:
        """DeepSpeed's partitions and optimizer state, the schedule and the loop state; a damaged
        checkpoint, or one of another stage or process count, is a UserError naming it."""
        with reading_checkpoint(path):
            saved = json.loads((path / "zero.json").read_text(encoding="utf-8"))
            if not isinstance(saved, dict):
                raise TypeError("zero.json does not hold an object")
            same = saved == {"stage": self.stage, "world": world}
        if not same:
            raise UserError(
                f"{path}: a ZeRO-{saved.get('stage')} checkpoint of {saved.get('world')} process(es); resume it "
                f"with the same deepspeed config and process count (now ZeRO-{self.stage}, {world})"
            )
        with reading_checkpoint(path):
            loaded, _ = self.engine.load_checkpoint(
                str(path / "zero"), tag=TAG, load_module_strict=False, load_lr_scheduler_states=False
            )
            if loaded is None:
                raise FileNotFoundError(f"no DeepSpeed checkpoint under {path / 'zero'}")
            scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
            return read_loop_state(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
