"""Record checks on the text itself: characters, placeholders, degenerate answers."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator

from tunepilot.data.checks.registry import record_check
from tunepilot.data.records import Conversation

# C0 controls except tab/newline/carriage return, DEL, and C1 controls.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Zero-width, bidi controls, BOM, soft hyphen, line/paragraph separators, private-use characters.
_INVISIBLE = re.compile(r"[\u00ad\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\ue000-\uf8ff]")
# UTF-8 bytes decoded as cp1252/latin-1: a lead byte char (Â..ï) followed by continuation-byte chars.
_CP1252_CONT = "".join(chr(b) if b >= 0xA0 else bytes([b]).decode("cp1252", "ignore") for b in range(0x80, 0xC0))
_MOJIBAKE = re.compile("[\u00c2-\u00ef][" + re.escape(_CP1252_CONT) + "]{1,2}")
_PLACEHOLDERS = {"nan", "none", "null", "undefined", "n/a", "#n/a", "na", "todo", "tbd"}
_REFUSAL = re.compile(
    r"\b(as an ai (language )?model|i'?m sorry, but i can(no|')t|i cannot (help|assist) with)", re.IGNORECASE
)
_TEMPLATE_LEFTOVER = re.compile(
    r"\{\{\s*\w+\s*\}\}|\{(instruction|input|output|question|answer|prompt|"
    r"response|text|query|context)\}"
)
# Template markup or a speaker label baked into the text by an earlier formatting step.
_MARKUP = re.compile(
    r"^\s*(assistant|gpt|bot|ai|answer|response|output)\s*:|### (instruction|response|input)\s*:|"
    r"<\|(assistant|user|system)\|>|\[/?INST\]|<</?SYS>>",
    re.IGNORECASE,
)
_WORD = re.compile(r"\w")
_UNBROKEN = re.compile(r"\S{300,}")
_HTML = re.compile(r"&(amp|lt|gt|quot|nbsp|#\d+);|<br\s*/?>|</?(div|span|p)>", re.IGNORECASE)


def fields(conv: Conversation) -> Iterator[tuple[str, str]]:
    """(name, text) of every text field of a record, named for messages."""
    if conv.is_text:
        yield "text", conv.text
    for i, m in enumerate(conv.messages):
        yield f"{m['role']} turn {i}", m["content"]


def _first(pattern: re.Pattern, text: str) -> str | None:
    m = pattern.search(text)
    return m.group(0) if m else None


@record_check(
    "control_characters",
    "error",
    "Text holds control characters (NUL, ESC, C1 ...) other than "
    "tab/newline: usually binary debris or a broken export.",
)
def control_characters(conv: Conversation) -> Iterator[str]:
    for name, text in fields(conv):
        hit = _first(_CONTROL, text)
        if hit:
            yield f"{name} contains control character U+{ord(hit):04X} ({unicodedata.name(hit, 'control')})"


@record_check(
    "replacement_character",
    "warning",
    "Text holds U+FFFD: it was decoded with errors somewhere upstream and the original characters are lost.",
)
def replacement_character(conv: Conversation) -> Iterator[str]:
    for name, text in fields(conv):
        if "\ufffd" in text:
            yield f"{name} contains U+FFFD replacement characters ({text.count(chr(0xFFFD))}x)"


def _is_mojibake(match: str) -> bool:
    return any(_redecodes(match[:n]) for n in (3, 2) if len(match) >= n)


def _redecodes(fragment: str) -> bool:
    try:
        fixed = fragment.encode("cp1252").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        try:
            fixed = fragment.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return False
    return fixed != fragment and len(fixed) < len(fragment)


@record_check(
    "mojibake",
    "warning",
    'Text looks like UTF-8 read as Windows-1252/Latin-1 ("cafÃ©", "donâ€™t"): re-decode the source as UTF-8.',
)
def mojibake(conv: Conversation) -> Iterator[str]:
    for name, text in fields(conv):
        for m in _MOJIBAKE.finditer(text):
            if _is_mojibake(m.group(0)):
                fixed = m.group(0).encode("cp1252", "ignore").decode("utf-8", "ignore")
                yield f"{name} contains mojibake {m.group(0)!r} (probably {fixed!r})"
                break


@record_check(
    "invisible_characters",
    "warning",
    "Text holds zero-width or bidirectional control "
    "characters (U+200B, U+202E, U+FEFF ...), invisible when reading the data.",
)
def invisible_characters(conv: Conversation) -> Iterator[str]:
    for name, text in fields(conv):
        hit = _first(_INVISIBLE, text)
        if hit:
            yield f"{name} contains invisible character U+{ord(hit):04X}"


@record_check(
    "placeholder_value",
    "warning",
    "An answer is a placeholder such as nan, None, null, N/A: often a missing value written out by pandas or a script.",
)
def placeholder_value(conv: Conversation) -> Iterator[str]:
    answer = conv.answer()
    if answer is not None and answer.strip().lower() in _PLACEHOLDERS:
        yield f"the answer is the placeholder {answer.strip()!r}"


@record_check(
    "template_leftover",
    "warning",
    "Text holds an unfilled template variable ({instruction}, "
    "{{question}}): the record was built by a broken formatting script.",
)
def template_leftover(conv: Conversation) -> Iterator[str]:
    for name, text in fields(conv):
        hit = _first(_TEMPLATE_LEFTOVER, text)
        if hit:
            yield f"{name} contains the unfilled placeholder {hit!r}"


@record_check(
    "html_markup",
    "info",
    "Text holds HTML entities or tags (&amp;, <br>): scraped text that may need cleaning.",
)
def html_markup(conv: Conversation) -> Iterator[str]:
    for name, text in fields(conv):
        hit = _first(_HTML, text)
        if hit:
            yield f"{name} contains HTML markup {hit!r}"


@record_check(
    "template_markup",
    "warning",
    'Text holds prompt-template markup or a speaker label ("### Response:", "Assistant:", [INST]) from '
    "an earlier formatting step: the template adds its own, so the model learns it twice.",
)
def template_markup(conv: Conversation) -> Iterator[str]:
    for name, text in fields(conv):
        hit = _first(_MARKUP, text)
        if hit:
            yield f"{name} contains template markup {hit.strip()!r}"
            return


@record_check(
    "unbroken_text",
    "warning",
    "Text holds a run of 300+ characters without a space (base64 data, a hash, minified code, a pasted "
    "blob): it costs many tokens and teaches nothing.",
)
def unbroken_text(conv: Conversation) -> Iterator[str]:
    for name, text in fields(conv):
        m = _UNBROKEN.search(text)
        if m:
            yield f"{name} holds {len(m.group())} characters without a space ({m.group()[:24]}...)"
            return


@record_check(
    "no_word_characters",
    "warning",
    'An answer has no letter or digit (".", "-", "???"); JSON answers such as {} are fine.',
)
def no_word_characters(conv: Conversation) -> Iterator[str]:
    answer = conv.answer()
    if answer and answer.strip() and not _WORD.search(answer) and answer.strip()[:1] not in "{[":
        yield f"the answer {answer.strip()[:20]!r} has no letter or digit"


@record_check("answer_equals_prompt", "warning", "The answer repeats the prompt verbatim: the model learns to copy.")
def answer_equals_prompt(conv: Conversation) -> Iterator[str]:
    answer, prompt = conv.answer(), conv.prompt_messages()
    if not (answer and prompt and prompt[-1]["role"] == "user"):
        return
    question = prompt[-1]["content"]
    if abs(len(answer) - len(question)) < 0.2 * len(question) + 4 and _norm(answer) == _norm(question):
        yield "the answer is the same text as the prompt"


@record_check(
    "refusal",
    "warning",
    'The answer is a refusal or AI boilerplate ("As an AI language model"): distilled data that teaches refusals.',
)
def refusal(conv: Conversation) -> Iterator[str]:
    answer = conv.answer()
    hit = _first(_REFUSAL, answer) if answer else None
    if hit:
        yield f"the answer contains refusal boilerplate {hit!r}"


@record_check(
    "repetition",
    "warning",
    "An answer repeats the same word or line many times in a row: degenerate generated text.",
)
def repetition(conv: Conversation) -> Iterator[str]:
    answer = conv.answer() or conv.text or ""
    words = answer.split()
    run, best, word = 1, 1, ""
    for a, b in zip(words, words[1:], strict=False):
        run = run + 1 if a == b else 1
        if run > best:
            best, word = run, b
    if best >= 8:
        yield f"the word {word!r} repeats {best} times in a row"
        return
    lines = [ln.strip() for ln in answer.splitlines() if ln.strip()]
    if len(lines) >= 6 and len(set(lines)) <= len(lines) // 3:
        yield f"the answer repeats the same lines ({len(lines)} lines, {len(set(lines))} distinct)"


@record_check(
    "surrounding_whitespace",
    "info",
    "An answer starts or ends with whitespace; most templates keep it, so the model learns to emit it.",
)
def surrounding_whitespace(conv: Conversation) -> Iterator[str]:
    answer = conv.answer()
    if answer and answer != answer.strip():
        yield "the answer has leading or trailing whitespace"


def _norm(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())
