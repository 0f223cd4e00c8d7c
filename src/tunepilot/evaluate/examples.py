"""What evaluation reads: a prompt conversation, the reference answer, and where the record came from.

An eval example is a training conversation cut before its last assistant turn: the turns before it
are the prompt (rendered with the model's chat template, as in training), its content is the
reference. So the eval set is any data file the trainer reads, with nothing to add.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tunepilot.errors import UserError

Message = dict[str, str]


@dataclass(frozen=True)
class EvalExample:
    messages: tuple[Message, ...]  # the prompt: system/user/assistant turns, ending before the answer
    reference: str
    source: str = ""  # "file:line", for messages and the results file


def from_conversation(messages: Sequence[Message], source: str = "") -> EvalExample:
    """Split a conversation at its last assistant turn."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    if last is None:
        raise UserError(f"{source or 'eval record'}: no assistant turn to use as the reference answer")
    return EvalExample(tuple(dict(m) for m in messages[:last]), messages[last]["content"], source)


def fixed_subset(examples: Sequence[EvalExample], size: int) -> list[EvalExample]:
    """`size` examples spread evenly over the set, the same ones every call: eval points of one run and
    trials of one sweep are scored on the same records, and the subset covers the whole file (not
    just its head, which is often sorted by class or source)."""
    n = len(examples)
    if size >= n:
        return list(examples)
    return [examples[(i * n) // size] for i in range(size)]


def with_shots(example: EvalExample, shots: Sequence[EvalExample]) -> list[Message]:
    """The prompt with few-shot examples as earlier user/assistant turns, after any system message."""
    head = [m for m in example.messages[:1] if m.get("role") == "system"]
    rest = list(example.messages[len(head) :])
    turns: list[Message] = []
    for shot in shots:
        turns += [m for m in shot.messages if m.get("role") != "system"]
        turns.append({"role": "assistant", "content": shot.reference})
    return [*head, *turns, *rest]


def spread_sample(examples: Sequence[EvalExample], n: int | None, seed: int = 0) -> list[EvalExample]:
    """At most `n` examples, seeded, spread over the whole split instead of its head (files are often
    sorted by class: the first 100 BANKING77 records are one intent). Where references repeat
    (classification), classes take turns in a seeded order, so every class is represented as far as
    `n` allows; otherwise a seeded uniform sample. The result keeps file order."""
    if n is None or n >= len(examples):
        return list(examples)
    import random

    rng = random.Random(seed)
    by_class: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        by_class.setdefault(e.reference.strip(), []).append(i)
    if len(by_class) > len(examples) // 2:  # mostly unique answers (generation): uniform sample
        return [examples[i] for i in sorted(rng.sample(range(len(examples)), n))]
    queues = [rng.sample(idx, len(idx)) for idx in by_class.values()]
    rng.shuffle(queues)
    chosen: list[int] = []
    while len(chosen) < n:
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(q.pop())
    return [examples[i] for i in sorted(chosen)]
