"""Turn-order rules for chat records: what a conversation must look like to train on.

Allowed: an optional system message first, then a user turn; a user turn is answered by an
assistant; an assistant may call tools, whose results come back as tool turns and are followed by
an assistant turn; the conversation ends with an assistant turn (otherwise nothing trains).
"""

from __future__ import annotations

from tunepilot.data.formats import Problem

# role -> roles that may follow it
NEXT = {
    "start": {"user"},
    "system": {"user"},
    "user": {"assistant"},
    "assistant": {"user", "tool"},
    "tool": {"tool", "assistant"},
}


def check_turns(messages: list[dict[str, str]], column: str) -> None:
    if not messages:
        raise Problem("empty_field", f"field '{column}' is an empty list")
    prev = "start"
    for i, m in enumerate(messages):
        role = m["role"]
        if role == "system" and i == 0:
            prev = "system"
        elif role not in NEXT[prev]:
            after = "at the start" if prev == "start" else f"after {_a(prev)} turn"
            raise Problem(
                "bad_turn_order",
                f"{column}[{i}]: {_a(role)} turn {after}; expected {' or '.join(sorted(NEXT[prev]))}",
            )
        else:
            prev = role
        _check_content(m, i, column)
    if prev != "assistant":
        raise Problem(
            "no_final_assistant_turn",
            f"{column}: the last turn is {prev}, not assistant; there is no answer to train on",
        )


def _a(role: str) -> str:
    return f"an {role}" if role[0] in "aeiou" else f"a {role}"


def _check_content(m: dict[str, str], i: int, column: str) -> None:
    if m["content"].strip():
        return
    if m["role"] == "assistant":
        raise Problem("empty_assistant_turn", f"{column}[{i}]: the assistant turn is empty")
    if m["role"] == "user":
        raise Problem("empty_field", f"{column}[{i}]: the user turn is empty")
