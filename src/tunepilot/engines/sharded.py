"""FSDP2 through torch's own public API: `fully_shard` per decoder layer, `torch.distributed.checkpoint`
for sharded checkpoints, and the state-dict helpers for the full adapter weights.

accelerate drives DDP (engines/distributed.py); its FSDP path needs CUDA, while `fully_shard` runs on
CPU (gloo) as well as GPUs, so FSDP2 is wrapped here directly. Nothing here re-implements sharding.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from tunepilot.engines.checkpoint import LoopState, read_loop_state, reading_checkpoint
from tunepilot.errors import UserError
from tunepilot.io import atomic_write_dir, atomic_write_json

TRAINABLE = StateDictOptions(ignore_frozen_params=True)
FULL_TRAINABLE = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)


def shard(model: torch.nn.Module, parallel: Any, world: int, device: torch.device) -> torch.nn.Module:
    """Shard each decoder layer, then the root (FSDP2). Layers: `transformer_layer_cls_to_wrap`, or
    the classes transformers marks as not to be split (`_no_split_modules`). `shard_grad_op` (HF's
    ZeRO-2 like option) keeps the gathered weights from forward to backward."""
    fsdp_config = parallel.fsdp_config
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    classes = set(fsdp_config.transformer_layer_cls_to_wrap) or set(getattr(base, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in classes]
    if not layers:
        raise UserError(
            f"fsdp_config.transformer_layer_cls_to_wrap: no module of class {sorted(classes)} in "
            f"{type(base).__name__}; name its decoder layer class (e.g. LlamaDecoderLayer)"
        )
    mesh = init_device_mesh(device.type, (world,))
    reshard = fsdp_config.reshard_after_forward and "shard_grad_op" not in parallel.fsdp
    kwargs: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": reshard}
    if fsdp_config.offload_params:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    for layer in layers:
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model


def full_trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trained weights gathered on rank 0 (empty on the others), under the model's own names."""
    return get_model_state_dict(model, options=FULL_TRAINABLE)


def load_full_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Rank 0's full trained weights, sharded back into every rank's part."""
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, ignore_frozen_params=True, strict=False)
    set_model_state_dict(model, state, options=options)


def save_sharded_checkpoint(path: Path, model, optimizer, scheduler, state: LoopState, dist) -> None:
    """Every rank writes its shard of the weights and optimizer (torch.distributed.checkpoint) into a
    staging folder; rank 0 then swaps it into place with the schedule and loop state, atomically."""
    staging = path.with_name(f".{path.name}.sharded")
    if dist.is_main:
        shutil.rmtree(staging, ignore_errors=True)
    dist.barrier()
    dcp.save(
        {
            "model": get_model_state_dict(model, options=TRAINABLE),
            "optim": get_optimizer_state_dict(model, optimizer, options=TRAINABLE),
        },
        checkpoint_id=str(staging),
    )
    dist.barrier()
    if dist.is_main:

        def fill(tmp: Path) -> None:
            os.replace(staging, tmp / "sharded")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            atomic_write_json(tmp / "state.json", asdict(state))

        atomic_write_dir(path, fill)
    dist.barrier()


def load_sharded_checkpoint(path: Path, model, optimizer, scheduler) -> LoopState:
    """Every rank's shard of the weights and optimizer, the schedule and the loop state; a damaged
    checkpoint is a UserError naming it, on every rank (dcp.load fails on all ranks together)."""
    state = {
        "model": get_model_state_dict(model, options=TRAINABLE),
        "optim": get_optimizer_state_dict(model, optimizer, options=TRAINABLE),
    }
    with reading_checkpoint(path):
        _read_metadata(path / "sharded")
        dcp.load(state, checkpoint_id=str(path / "sharded"))
        set_model_state_dict(model, state["model"], options=StateDictOptions(ignore_frozen_params=True, strict=False))
        set_optimizer_state_dict(model, optimizer, state["optim"], options=TRAINABLE)
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        return read_loop_state(path)


def _read_metadata(folder: Path) -> None:
    """Read the checkpoint's `.metadata` first, on every rank: missing or unreadable, it is an error
    here, before dcp.load, which would fall back to per-rank metadata files (never written by
    save_sharded_checkpoint) and log each failed read's traceback as a warning on its way to failing."""
    try:
        dcp.FileSystemReader(str(folder)).read_metadata()
    except FileNotFoundError:
        raise
    except Exception as e:  # garbage unpickles into any error (or into an object that is no Metadata)
        raise ValueError(f"{folder / '.metadata'} is not a torch.distributed.checkpoint metadata file ({e!r})") from e
