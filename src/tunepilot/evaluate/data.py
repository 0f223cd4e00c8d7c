"""Eval examples from a data file, through the trainer's own data code (readers, formats, columns).

Same file, same format detection, same column mapping and system prompt as training: an eval set is
any file `tunepilot train` reads. Records that do not convert are listed all at once (as `validate`
would report them), since a silently skipped record would change the score.
"""

from __future__ import annotations

from pathlib import Path

from tunepilot.config import DataSettings
from tunepilot.errors import UserError
from tunepilot.evaluate.examples import EvalExample, from_conversation

MAX_LISTED = 10


def load_examples(path: str | Path, data: DataSettings, limit: int | None = None) -> list[EvalExample]:
    """The first `limit` records of `path` (all when None) as prompt + reference examples."""
    from tunepilot.data.detect import detect_format
    from tunepilot.data.formats import Problem, to_conversation
    from tunepilot.data.readers import read_records

    examples: list[EvalExample] = []
    problems: list[str] = []
    spec = None
    for raw in read_records(path):
        where = f"{raw.source}:{raw.line}"
        if raw.error:
            problems.append(f"{where}: {raw.error}")
            continue
        spec = spec or detect_format(raw.value, data.format, data.columns, data.system, where)
        try:
            conversation = to_conversation(raw.value, spec, raw.line, raw.source)
        except Problem as e:
            problems.append(f"{where}: {e.message}")
            continue
        if conversation.is_text:
            raise UserError(f"{path}: plain-text records have no answer to score; evaluation needs "
                            "prompt/response records (set data.format or data.columns)")
        examples.append(from_conversation(conversation.messages, where))
        if limit is not None and len(examples) >= limit:
            break
    if problems:
        shown = problems[:MAX_LISTED] + ([f"... and {len(problems) - MAX_LISTED} more"]
                                         if len(problems) > MAX_LISTED else [])
        raise UserError(f"{path}: {len(problems)} record(s) cannot be evaluated; run `tunepilot validate` "
                        "for details", problems=shown)
    if not examples:
        raise UserError(f"{path}: no records to evaluate")
    return examples
