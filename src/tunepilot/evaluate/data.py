"""Eval examples through the trainer's own data code: readers, format detection, columns, split.

Same file, same format, same column mapping and system prompt as training: an eval set is any
file `tunepilot train` reads. Without a file, the eval split is the trainer's `val_size` hold-out
(same seed, same records). Records with structural errors are refused all at once, as training
refuses them, since a silently skipped record would change the score.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path

from tunepilot.config import DataSettings
from tunepilot.errors import ExitCode, UserError
from tunepilot.evaluate.examples import EvalExample, from_conversation

MAX_LISTED = 10


def _examples(conversations, path) -> list[EvalExample]:
    out = []
    for c in conversations:
        if c.is_text:
            raise UserError(
                f"{path}: plain-text records have no answer to score; evaluation needs "
                "prompt/response records (set data.format or data.columns)"
            )
        out.append(from_conversation(c.messages, f"{c.source}:{c.line}"))
    if not out:
        raise UserError(f"{path}: no records to evaluate")
    return out


def load_examples(path: str | Path, data: DataSettings, limit: int | None = None) -> list[EvalExample]:
    """The first `limit` records of `path` (all when None) as prompt + reference examples."""
    from tunepilot.data.parse import ParseState, iter_conversations

    state = ParseState()
    conversations = list(islice(iter_conversations(str(path), data.format, data.columns, data.system, state), limit))
    return _checked(conversations, state, path)


def load_split_examples(data: DataSettings, which: str = "train", limit: int | None = None) -> list[EvalExample]:
    """data.train or data.eval as examples: a file, or the named datasets of dataset_info.json."""
    from tunepilot.data.parse import ParseState, iter_split
    from tunepilot.data.sources import describe

    state = ParseState()
    conversations = list(iter_split(data, which, state, limit))
    return _checked(conversations, state, describe(data, which))


def _checked(conversations, state, path) -> list[EvalExample]:
    errors = [f"{f.where()}: {f.code}: {f.message}" for f in state.findings if f.severity == "error"]
    if errors:
        shown = errors[:MAX_LISTED] + ([f"... and {len(errors) - MAX_LISTED} more"] if len(errors) > MAX_LISTED else [])
        raise UserError(
            f"{path}: {len(errors)} record(s) cannot be evaluated; fix them or run `tunepilot validate` for details",
            ExitCode.USAGE,
            shown,
        )
    return _examples(conversations, path)


def load_eval_split(data: DataSettings, seed: int, limit: int | None = None) -> list[EvalExample]:
    """The trainer's eval split: data.eval, or the val_size hold-out of data.train made with `seed`."""
    if data.eval:
        return load_split_examples(data, "eval", limit)
    if data.val_size <= 0:
        raise UserError("no eval data: pass --data FILE, or set data.eval (or data.val_size) in the config")
    from tunepilot.data import load_conversations

    return _examples(load_conversations(data, "eval", seed)[:limit], f"{data.train} (val_size hold-out)")
