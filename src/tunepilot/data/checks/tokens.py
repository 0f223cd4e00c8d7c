"""Checks on the rendered and tokenized example: masking, truncation, special tokens, unknown tokens."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from tunepilot.data.checks.registry import declare, token_check
from tunepilot.data.checks.text import fields
from tunepilot.data.records import Conversation, Example
from tunepilot.data.templates import Rendered

declare(
    "truncated_to_zero",
    "warning",
    "The answer lies entirely beyond cutoff_len: the record has no trainable token left and is dropped from training.",
    "tokens",
)
declare("truncation_rate", "warning", "More than 5% of the records are truncated at cutoff_len.", "dataset")
declare(
    "low_trainable_share",
    "warning",
    "Under 2% of all tokens train: prompts dwarf the answers, or the template masks them.",
    "dataset",
)


@dataclass(frozen=True)
class TokenContext:
    cutoff_len: int
    specials: tuple[str, ...]  # the tokenizer's special-token strings
    unk_id: int | None


# Without a tokenizer: control tokens of the common chat templates. "<s>"/"</s>" are left out on
# purpose, since they are also HTML (strikethrough).
GENERIC_SPECIALS = (
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<|assistant|>",
    "<|user|>",
    "<|system|>",
    "<|end|>",
)


def token_context(tokenizer, cutoff_len: int) -> TokenContext:
    if tokenizer is None:
        return TokenContext(cutoff_len, GENERIC_SPECIALS, None)
    specials = {s for s in tokenizer.all_special_tokens if s}
    specials |= {
        str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if getattr(t, "special", False)
    }
    unk = tokenizer.unk_token_id if tokenizer.unk_token_id != tokenizer.pad_token_id else None
    return TokenContext(cutoff_len, tuple(sorted(specials, key=len, reverse=True)), unk)


@token_check(
    "truncated",
    "warning",
    "The record is longer than cutoff_len and its answer is cut (some trainable tokens remain).",
)
def truncated(conv: Conversation, r: Rendered, ex: Example, ctx: TokenContext) -> Iterator[str]:
    if ex.truncated and ex.trainable > 0:
        yield f"truncated to cutoff_len={ctx.cutoff_len}; the end of the answer is cut"


@token_check(
    "no_trainable_tokens",
    "error",
    "The rendered record has no trainable token (the template masks the whole answer).",
)
def no_trainable_tokens(conv: Conversation, r: Rendered, ex: Example, ctx: TokenContext) -> Iterator[str]:
    if ex.trainable == 0 and not ex.truncated:
        yield "no token of this record is trained: the template masks the whole answer"


@token_check(
    "special_token_in_text",
    "error",
    "The text holds a special token of the tokenizer "
    "(<|im_end|>, </s> ...): it is tokenized as a control token and breaks the turn structure.",
)
def special_token_in_text(conv: Conversation, r: Rendered, ex: Example, ctx: TokenContext) -> Iterator[str]:
    for name, text in fields(conv):
        if "<" not in text and "[" not in text:
            continue  # every special token of the common tokenizers has one of these
        for tok in ctx.specials:
            if tok in text:
                yield f"{name} contains the special token {tok!r}"
                return


@token_check(
    "unknown_tokens",
    "warning",
    "The tokenizer maps some characters to its unknown token: the model cannot read or write them.",
)
def unknown_tokens(conv: Conversation, r: Rendered, ex: Example, ctx: TokenContext) -> Iterator[str]:
    if ctx.unk_id is not None and ctx.unk_id in ex.input_ids:
        yield f"{ex.input_ids.count(ctx.unk_id)} characters map to the unknown token"


@token_check(
    "template_alters_answer",
    "warning",
    "The text that trains for the last turn does not contain the answer as written: the template rewrites it.",
)
def template_alters_answer(conv: Conversation, r: Rendered, ex: Example, ctx: TokenContext) -> Iterator[str]:
    answer = conv.answer()
    if answer and r.spans and answer.strip() not in r.text[r.spans[-1][0] : r.spans[-1][1]]:
        yield "the rendered answer differs from the record's answer"


declare(
    "template_tokens_not_special",
    "warning",
    "A named template's markers (<|im_start|>, <|eot_id|> ...) "
    "are not single tokens of this tokenizer: the model sees them as ordinary text and learns to stop "
    "poorly; use the model's own template (auto) or add the tokens.",
    "dataset",
)
declare(
    "end_of_turn_not_eos",
    "warning",
    "Answers end with a token that is not the tokenizer's EOS: "
    "generation stops only if that token is among the model's generation eos_token_id.",
    "dataset",
)

_MARKERS = re.compile(r"<[|/]?[\w|]+[|]?>|\[/?INST\]|<</?SYS>>")


def template_marker_problems(tokenizer, template: str) -> list[str]:
    """Markers of a named template that this tokenizer splits into several tokens."""
    from tunepilot.data.templates import TEMPLATES

    t = TEMPLATES.get(template)
    if t is None:
        return []
    text = " ".join((t.system, t.user, t.assistant_prefix, t.assistant_suffix, t.tool))
    markers = sorted({m for m in _MARKERS.findall(text) if m != "{eos}"})
    return [m for m in markers if len(tokenizer(m, add_special_tokens=False)["input_ids"]) > 1]


def end_token_problem(tokenizer, example: Example) -> str | None:
    last = next((t for t in reversed(example.labels) if t != -100), None)
    if last is None or example.truncated or last == tokenizer.eos_token_id:
        return None
    name = tokenizer.convert_ids_to_tokens(last)
    if not (isinstance(name, str) and name.startswith("<") and name.endswith(">")):
        return None  # the answer ends in text: no end-of-turn token at all is a template matter
    return (
        f"answers end with {name!r} (id {last}) but the tokenizer's EOS is {tokenizer.eos_token!r}; "
        f"make sure generation stops on {name!r}"
    )
