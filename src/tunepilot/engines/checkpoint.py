"""Checkpoints: the trained weights, optimizer, scheduler and loop state, swapped in atomically.

A checkpoint directory holds `trainable.safetensors` (LoRA adapters, or all weights for full
fine-tuning), `optimizer.pt`, `scheduler.pt` and `state.json`. It is written to a temporary
sibling and renamed into place, so a kill at any moment leaves either the old or the new one.
"""

from __future__ import annotations

import contextlib
import json
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tunepilot.errors import UserError
from tunepilot.io import atomic_write_dir, atomic_write_json
from tunepilot.models import load_trainable_state, trainable_state


@dataclass
class LoopState:
    step: int = 0  # optimizer steps completed
    tokens: int = 0  # trained tokens so far
    seconds: float = 0.0  # wall-clock seconds of the run so far, evaluations included (across resumes)
    train_seconds: float = 0.0  # the part spent in optimizer steps (for tokens per second)
    best_eval: float | None = None  # best objective value (eval loss, or the task metric)
    best_eval_loss: float | None = None  # lowest eval loss seen
    best_step: int | None = None
    evals_without_gain: int = 0
    extra: dict = field(default_factory=dict)


def save_checkpoint(path: Path, model, optimizer, scheduler, state: LoopState) -> None:
    def fill(tmp: Path) -> None:
        save_file(_contiguous(trainable_state(model)), tmp / "trainable.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        atomic_write_json(tmp / "state.json", asdict(state))

    atomic_write_dir(path, fill)


def save_weights(path: Path, model) -> None:
    """Only the trained weights (the best-so-far copy)."""
    save_state(path, trainable_state(model))


def save_state(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Trained weights already gathered (a sharded model's full state) as a best/ copy."""
    atomic_write_dir(path, lambda tmp: save_file(_contiguous(state), tmp / "trainable.safetensors"))


def load_weights(path: Path, model) -> None:
    load_trainable_state(model, load_file(str(path / "trainable.safetensors")))


def find_checkpoint(path: Path) -> Path | None:
    """The checkpoint dir, or the previous one if a kill landed between the two renames of a swap."""
    for candidate in (path, path.with_name(f".{path.name}.old")):
        if (candidate / "state.json").exists():
            return candidate
    return None


def load_checkpoint(path: Path, model, optimizer, scheduler) -> LoopState:
    """Restore a checkpoint; a damaged one (truncated, overwritten, foreign) is a UserError naming it."""
    with reading_checkpoint(path):
        load_weights(path, model)
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        return read_loop_state(path)


def read_loop_state(path: Path) -> LoopState:
    return LoopState(**json.loads((path / "state.json").read_text(encoding="utf-8")))


@contextlib.contextmanager
def reading_checkpoint(path: Path):
    """Reading checkpoint `path`: a damaged one (truncated, overwritten, foreign, a file missing) is a
    UserError naming it, for every strategy's checkpoint."""
    from safetensors import SafetensorError
    from torch.distributed.checkpoint.api import CheckpointException

    damage = (
        SafetensorError,
        pickle.UnpicklingError,
        EOFError,
        UnicodeDecodeError,
        ValueError,
        TypeError,
        KeyError,
        RuntimeError,
        FileNotFoundError,
    )
    try:
        yield
    except damage as e:
        raise UserError(_damaged(path, f"{type(e).__name__}: {str(e)[:200]}")) from e
    except CheckpointException as e:
        # torch.distributed.checkpoint (FSDP2's sharded checkpoints) gathers every rank's failure and
        # raises this on all ranks at once: a BaseException, not an Exception, whose str() holds each
        # rank's formatted traceback. So it is caught by name here, for every strategy, and reported
        # by its first rank's own error. Its AssertionErrors are dcp's findings about the files (no
        # readable .metadata, a tensor of another shape); anything else (Ctrl-C on a rank) stays as is.
        if not e.failures or not all(isinstance(f, (*damage, AssertionError)) for f, _ in e.failures.values()):
            raise
        rank, (cause, _) = min(e.failures.items())
        raise UserError(_damaged(path, f"rank {rank}: {type(cause).__name__}: {str(cause)[:200]}")) from e


def _damaged(path: Path, why: str) -> str:
    return (
        f"{path}: the checkpoint is damaged and cannot be resumed ({why}); start afresh without --resume "
        "(overwrite_output_dir: true)"
    )


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.contiguous().cpu() for k, v in tensors.items()}
