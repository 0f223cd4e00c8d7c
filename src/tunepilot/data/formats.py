"""Record formats: detection, column mapping, and conversion of a raw record to a `Conversation`.

Formats (the `data.format` setting; with `auto` the first records that parse vote, see `detect`):

- alpaca: `instruction`, `input` (optional), `output`, `system` (optional), `history` (optional
  list of [user, assistant] pairs). The prompt is instruction + "\\n" + input, as LLaMA-Factory does.
- prompt_completion: `prompt` and `completion` (or `response`), `system` optional.
- messages: OpenAI-style `messages: [{role, content}]`, roles system/user/assistant/tool.
- sharegpt: `conversations: [{from, value}]`, roles human/gpt/system/function_call/observation.
- text: `text` only, for continued pretraining (every token trains).
- spans: span extraction (Restaurant8k): `userInput.text` + `labels[{slot, valueSpan}]`, trained
  as utterance -> JSON object of slot values; see `tunepilot.data.spans`.

Column mapping (`data.columns`) maps a format's field (canonical or native name) to your column:
`{prompt: question, response: answer}` or `{prompt: text, response: category}`. With `auto`,
a mapping that names `prompt`/`response` means prompt_completion. Without a mapping, detection
(`tunepilot.data.detect`) also reads well-known prompt/answer column pairs (question/answer,
text/category, ...) as prompt_completion and says so in an info finding; a `text` column next to
an unknown text column is refused as ambiguous, because guessing "pretraining text" would silently
drop that column.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tunepilot.data.records import Conversation
from tunepilot.errors import UserError
from tunepilot.registry import register_once

# Native field names map onto the canonical ones the converters read.
CANONICAL = {
    "instruction": "prompt",
    "input": "query",
    "output": "response",
    "completion": "response",
    "conversations": "messages",
    "prompt": "prompt",
    "query": "query",
    "response": "response",
    "system": "system",
    "history": "history",
    "messages": "messages",
    "text": "text",
    "labels": "labels",
    "context": "context",
}
ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "developer": "system",  # OpenAI's newer name for the system role
    "tool": "tool",
    "function_call": "assistant",
    "observation": "tool",
    "function": "tool",
    "ipython": "tool",
}


_SURROGATE = re.compile("[\ud800-\udfff]")


class Problem(Exception):
    """A record-level defect found while converting; becomes a finding with this code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class FormatSpec:
    name: str
    fields: dict[str, str]  # canonical field -> column in the record
    note: str | None = None  # how auto-detection decided, shown as an info finding
    system: str | None = None  # default system prompt (settings.system)
    # sharegpt keys and role values as LLaMA-Factory's dataset_info.json `tags` name them
    # (role_tag, content_tag, user_tag, assistant_tag, observation_tag, function_tag, system_tag)
    tags: dict[str, str] = field(default_factory=dict)


Converter = Callable[[dict[str, Any], FormatSpec], list[dict[str, str]] | str]
FORMATS: dict[str, tuple[dict[str, str], Converter]] = {}


def register_format(name: str, native: dict[str, str]) -> Callable[[Converter], Converter]:
    def wrap(fn: Converter) -> Converter:
        register_once(FORMATS, name, (native, fn), "data format")
        return fn

    return wrap


def make_spec(name: str, columns: dict[str, str], system: str | None = None, note: str | None = None) -> FormatSpec:
    if name not in FORMATS:
        raise UserError(f"data.format: unknown format {name!r}; use auto or one of {', '.join(sorted(FORMATS))}")
    fields = dict(FORMATS[name][0])
    fields.update(canonical_columns(columns))
    return FormatSpec(name, fields, note, system)


def canonical_columns(columns: dict[str, str]) -> dict[str, str]:
    out = {}
    for key, col in columns.items():
        if key not in CANONICAL:
            raise UserError(
                f"data.columns: unknown field {key!r}; map one of "
                f"{', '.join(sorted(set(CANONICAL)))} to a column of your data"
            )
        out[CANONICAL[key]] = col
    return out


def get_field(record: dict[str, Any], column: str) -> Any:
    """A column, where a dotted name reaches into nested objects (userInput.text)."""
    if column in record:
        return record[column]
    value: Any = record
    for part in column.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def to_conversation(record: Any, spec: FormatSpec, line: int, source: str) -> Conversation:
    """Convert one parsed record; raises Problem (code, message) for a structural defect."""
    if not isinstance(record, dict):
        raise Problem("wrong_top_level_type", f"expected a JSON object per record, got {_tname(record)}")
    out = FORMATS[spec.name][1](record, spec)
    texts = [out] if isinstance(out, str) else [m["content"] for m in out]
    for text in texts:
        hit = _SURROGATE.search(text)
        if hit:
            # json accepts "\ud800" escapes; such a string is not valid Unicode and cannot be tokenized.
            raise Problem(
                "invalid_encoding",
                f"text holds a lone UTF-16 surrogate U+{ord(hit.group()):04X} "
                "(a broken \\u escape); it is not valid Unicode",
            )
    if isinstance(out, str):
        return Conversation(line, [], source, text=out)
    return Conversation(line, out, source)


def _tname(value: Any) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def required_str(record: dict[str, Any], spec: FormatSpec, name: str, allow_empty: bool = False) -> str:
    column = spec.fields[name]
    value = get_field(record, column)
    if value is None:
        what = "is null" if column in record else "is missing"
        near = difflib.get_close_matches(column, [k for k in record if isinstance(k, str)], n=1, cutoff=0.7)
        hint = f" (the record has '{near[0]}': a misspelt key?)" if near and column not in record else ""
        raise Problem("missing_field", f"required field '{column}' {what}{hint}")
    if not isinstance(value, str):
        raise Problem("wrong_type", f"field '{column}' must be a string, got {_tname(value)}")
    if not allow_empty and not value.strip():
        code = "empty_assistant_turn" if name == "response" else "empty_field"
        raise Problem(code, f"field '{column}' is empty")
    return value


def optional_str(record: dict[str, Any], spec: FormatSpec, name: str) -> str | None:
    column = spec.fields.get(name)
    value = get_field(record, column) if column else None
    if value is None:
        return None
    if not isinstance(value, str):
        raise Problem("wrong_type", f"field '{column}' must be a string, got {_tname(value)}")
    return value


def _system_messages(record: dict[str, Any], spec: FormatSpec) -> list[dict[str, str]]:
    system = optional_str(record, spec, "system")
    system = system if system and system.strip() else spec.system
    return [{"role": "system", "content": system}] if system else []


def _history(record: dict[str, Any], spec: FormatSpec) -> list[dict[str, str]]:
    column = spec.fields.get("history")
    value = get_field(record, column) if column else None
    if value is None:
        return []
    if not isinstance(value, list):
        raise Problem("wrong_type", f"field '{column}' must be a list of [user, assistant] pairs")
    out = []
    for i, pair in enumerate(value):
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise Problem("wrong_type", f"{column}[{i}] must be a [user, assistant] pair of strings")
        if not pair[1].strip():
            raise Problem("empty_assistant_turn", f"{column}[{i}] has an empty assistant reply")
        out += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return out


def _pair(record: dict[str, Any], spec: FormatSpec) -> list[dict[str, str]]:
    # An empty instruction is a defect even when `input` has text: the task itself is missing.
    prompt = required_str(record, spec, "prompt")
    query = optional_str(record, spec, "query")
    if query and query.strip():
        prompt = f"{prompt}\n{query}"
    response = required_str(record, spec, "response")
    return [
        *_system_messages(record, spec),
        *_history(record, spec),
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": response},
    ]


register_format(
    "alpaca",
    {
        "prompt": "instruction",
        "query": "input",
        "response": "output",
        "system": "system",
        "history": "history",
    },
)(_pair)
register_format("prompt_completion", {"prompt": "prompt", "response": "completion", "system": "system"})(_pair)


@register_format("text", {"text": "text"})
def _text(record: dict[str, Any], spec: FormatSpec) -> str:
    return required_str(record, spec, "text")


def _chat(record: dict[str, Any], spec: FormatSpec) -> list[dict[str, str]]:
    from tunepilot.data.turns import check_turns

    column = spec.fields["messages"]
    value = get_field(record, column)
    if value is None:
        raise Problem("missing_field", f"required field '{column}' is missing")
    if not isinstance(value, list):
        raise Problem("wrong_type", f"field '{column}' must be a list of messages, got {_tname(value)}")
    messages = [_message(m, f"{column}[{i}]", spec.tags) for i, m in enumerate(value)]
    if not any(m["role"] == "system" for m in messages):
        messages = _system_messages(record, spec) + messages
    check_turns(messages, column)
    return messages


_TAG_ROLES = {
    "user_tag": "user",
    "assistant_tag": "assistant",
    "observation_tag": "tool",
    "function_tag": "assistant",
    "system_tag": "system",
}


def _message(m: Any, where: str, tags: dict[str, str] | None = None) -> dict[str, str]:
    if not isinstance(m, dict):
        raise Problem("wrong_type", f"{where} must be an object, got {_tname(m)}")
    if tags:
        return _tagged_message(m, where, tags)
    # Either key style is accepted in either format (many "sharegpt" files use role/content).
    rk, ck = ("from", "value") if "from" in m and "role" not in m else ("role", "content")
    if m.get(rk) is None:
        raise Problem("missing_field", f"{where} has no '{rk}'")
    if m.get(ck) is None and not m.get("tool_calls"):
        raise Problem("missing_field", f"{where} has no '{ck}'")
    role = m[rk]
    if not isinstance(role, str):
        raise Problem("wrong_type", f"{where}.{rk} must be a string, got {_tname(role)}")
    if role not in ROLE_ALIASES:
        raise Problem("unknown_role", f"{where} has unknown role {role!r}; use system, user, assistant or tool")
    return {"role": ROLE_ALIASES[role], "content": _content(m.get(ck) or "", f"{where}.{ck}")}


def _tagged_message(m: dict[str, Any], where: str, tags: dict[str, str]) -> dict[str, str]:
    """A message read with a dataset's own tags (LLaMA-Factory sharegpt `tags`), defaults from/value."""
    rk, ck = tags.get("role_tag", "from"), tags.get("content_tag", "value")
    roles = {
        tags.get(t, default): role
        for t, role in _TAG_ROLES.items()
        for default in [
            {
                "user_tag": "human",
                "assistant_tag": "gpt",
                "observation_tag": "observation",
                "function_tag": "function_call",
                "system_tag": "system",
            }[t]
        ]
    }
    if m.get(rk) is None:
        raise Problem("missing_field", f"{where} has no '{rk}' (the dataset's role_tag)")
    if m.get(ck) is None:
        raise Problem("missing_field", f"{where} has no '{ck}' (the dataset's content_tag)")
    role = m[rk]
    if role not in roles:
        raise Problem(
            "unknown_role", f"{where} has role {role!r}, not one of the dataset's tags {', '.join(map(repr, roles))}"
        )
    return {"role": roles[role], "content": _content(m[ck], f"{where}.{ck}")}


def _content(content: Any, where: str) -> str:
    """A string, or OpenAI content parts [{"type": "text", "text": ...}] joined (text parts only)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        if all(p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            return "".join(p["text"] for p in content)
        raise Problem("wrong_type", f"{where} has non-text content parts; only text can be trained")
    raise Problem("wrong_type", f"{where} must be a string, got {_tname(content)}")


@register_format("messages", {"messages": "messages"})
def _messages(record: dict[str, Any], spec: FormatSpec) -> list[dict[str, str]]:
    return _chat(record, spec)


@register_format("sharegpt", {"messages": "conversations", "system": "system"})
def _sharegpt(record: dict[str, Any], spec: FormatSpec) -> list[dict[str, str]]:
    return _chat(record, spec)
