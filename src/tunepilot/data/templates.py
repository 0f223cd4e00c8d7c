"""Prompt templates: render a conversation to text plus the character spans that train.

`auto` uses the tokenizer's own chat template. The trainable span of assistant turn i is found by
rendering twice: messages[:i] with the generation prompt (the prefix) and messages[:i+1] (the prefix
plus the answer and the end-of-turn marker). The difference is the answer + end-of-turn; trailing
whitespace after the end-of-turn token (ChatML's "\\n") does not train. A template whose prefix is not
a prefix of the full render (e.g. one that rewrites earlier turns) cannot be masked this way and is
reported as `template_render_failure`.

Named templates (alpaca, chatml, qwen, smollm2, llama3, llama2, mistral, zephyr, vicuna, gemma, phi3)
are written
out here as turn formats, so they mask exactly by construction. Label masking then maps the spans
to tokens through the fast tokenizer's character offsets.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from tunepilot.data.formats import Problem
from tunepilot.registry import register_once

Span = tuple[int, int]


@dataclass(frozen=True)
class Rendered:
    text: str
    spans: list[Span]  # trainable character ranges
    add_bos: bool = False  # prepend the tokenizer's BOS token id when tokenizing


@dataclass(frozen=True)
class NamedTemplate:
    name: str
    system: str  # "{content}" placeholders
    user: str
    assistant_prefix: str  # not trained
    assistant_suffix: str  # trained: the end-of-turn marker ("{eos}" = the tokenizer's EOS token)
    separator: str = ""  # after the suffix, not trained
    tool: str = ""
    default_system: str | None = None
    bos: bool = True  # prepend BOS when the tokenizer itself adds one (Llama-style)


TEMPLATES: dict[str, NamedTemplate] = {}


def register_template(t: NamedTemplate) -> NamedTemplate:
    return register_once(TEMPLATES, t.name, t, "template")


_ALPACA_SYSTEM = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
register_template(
    NamedTemplate(
        "alpaca",
        "{content}\n\n",
        "### Instruction:\n{content}\n\n",
        "### Response:\n",
        "{eos}",
        "\n\n",
        "### Input:\n{content}\n\n",
        default_system=_ALPACA_SYSTEM,
    )
)
register_template(
    NamedTemplate(
        "chatml",
        "<|im_start|>system\n{content}<|im_end|>\n",
        "<|im_start|>user\n{content}<|im_end|>\n",
        "<|im_start|>assistant\n",
        "<|im_end|>",
        "\n",
        "<|im_start|>tool\n{content}<|im_end|>\n",
        bos=False,
    )
)
# ChatML with a default system prompt, as LLaMA-Factory's `qwen` and `smollm2` templates (and the
# models' own chat templates) add one when a record has none.
register_template(
    NamedTemplate(
        "qwen",
        *(TEMPLATES["chatml"].system, TEMPLATES["chatml"].user, TEMPLATES["chatml"].assistant_prefix),
        *(TEMPLATES["chatml"].assistant_suffix, TEMPLATES["chatml"].separator, TEMPLATES["chatml"].tool),
        default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        bos=False,
    )
)
register_template(
    NamedTemplate(
        "smollm2",
        *(TEMPLATES["chatml"].system, TEMPLATES["chatml"].user, TEMPLATES["chatml"].assistant_prefix),
        *(TEMPLATES["chatml"].assistant_suffix, TEMPLATES["chatml"].separator, TEMPLATES["chatml"].tool),
        default_system="You are a helpful AI assistant named SmolLM, trained by Hugging Face.",
        bos=False,
    )
)
register_template(
    NamedTemplate(
        "llama3",
        "<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
        "<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "<|eot_id|>",
        "",
        "<|start_header_id|>ipython<|end_header_id|>\n\n{content}<|eot_id|>",
    )
)
register_template(
    NamedTemplate("llama2", "[INST] <<SYS>>\n{content}\n<</SYS>>\n\n", "[INST] {content} [/INST]", " ", "{eos}", "")
)
register_template(NamedTemplate("mistral", "{content}\n\n", "[INST] {content}[/INST]", "", "{eos}", ""))
register_template(
    NamedTemplate(
        "zephyr",
        "<|system|>\n{content}{eos}\n",
        "<|user|>\n{content}{eos}\n",
        "<|assistant|>\n",
        "{eos}",
        "\n",
    )
)
register_template(
    NamedTemplate(
        "vicuna",
        "{content} ",
        "USER: {content} ",
        "ASSISTANT:",
        "{eos}",
        "",
        default_system="A chat between a curious user and an artificial intelligence "
        "assistant. The assistant gives helpful, detailed, and polite answers to the "
        "user's questions.",
    )
)
register_template(
    NamedTemplate(
        "gemma",
        "<start_of_turn>user\n{content}\n\n",
        "<start_of_turn>user\n{content}<end_of_turn>\n",
        "<start_of_turn>model\n",
        "<end_of_turn>",
        "\n",
    )
)
register_template(
    NamedTemplate(
        "phi3",
        "<|system|>\n{content}<|end|>\n",
        "<|user|>\n{content}<|end|>\n",
        "<|assistant|>\n",
        "<|end|>",
        "\n",
    )
)


def template_names() -> list[str]:
    return ["auto", *sorted(TEMPLATES)]


_ADDS_BOS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> adds BOS itself


def _bos_wanted(tokenizer) -> bool:
    """Does this tokenizer put BOS in front of plain text itself (Llama-style)?"""
    cached = _ADDS_BOS.get(tokenizer)
    if cached is None:
        bos = tokenizer.bos_token_id
        ids = tokenizer("a", add_special_tokens=True)["input_ids"]
        cached = bos is not None and len(ids) > 0 and ids[0] == bos
        _ADDS_BOS[tokenizer] = cached
    return cached


def render_named(t: NamedTemplate, messages: list[dict[str, str]], tokenizer, last_only: bool) -> Rendered:
    eos = tokenizer.eos_token or ""
    parts: list[str] = []
    spans: list[Span] = []
    pos = 0
    if t.default_system and not (messages and messages[0]["role"] == "system"):
        messages = [{"role": "system", "content": t.default_system}, *messages]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant") if messages else -1
    for i, m in enumerate(messages):
        role, content = m["role"], m["content"]
        if role == "assistant":
            head = t.assistant_prefix
            body = content + t.assistant_suffix.replace("{eos}", eos)
            if not last_only or i == last:
                spans.append((pos + len(head), pos + len(head) + len(body)))
            piece = head + body + t.separator
        else:
            fmt = {"system": t.system, "user": t.user, "tool": t.tool or t.user}[role]
            piece = fmt.replace("{eos}", eos).replace("{content}", content)
        parts.append(piece)
        pos += len(piece)
    return Rendered("".join(parts), spans, add_bos=t.bos and _bos_wanted(tokenizer))


def prompt_named(t: NamedTemplate, messages: list[dict[str, str]], tokenizer) -> str:
    probe = [*messages, {"role": "assistant", "content": ""}]
    rendered = render_named(t, probe, tokenizer, last_only=True)
    start = rendered.spans[-1][0]
    bos = tokenizer.bos_token if rendered.add_bos and tokenizer.bos_token else ""
    return bos + rendered.text[:start]


def _apply(tokenizer, messages, generation: bool) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    except Exception as e:  # jinja raises TemplateError and plain exceptions from the template itself
        raise Problem("template_render_failure", f"the chat template failed: {e}") from e


def render_auto(messages: list[dict[str, str]], tokenizer, last_only: bool) -> Rendered:
    full = _apply(tokenizer, messages, False)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    spans = []
    for i in turns[-1:] if last_only else turns:
        prefix = _apply(tokenizer, messages[:i], True)
        upto = full if i == len(messages) - 1 else _apply(tokenizer, messages[: i + 1], False)
        if not (upto.startswith(prefix) and full.startswith(upto)):
            raise Problem(
                "template_render_failure",
                f"the chat template does not render turn {i} as a prefix "
                "of the conversation; choose a named data.template",
            )
        end = len(upto.rstrip())
        if end <= len(prefix):
            raise Problem("template_render_failure", f"the chat template drops the content of turn {i}")
        spans.append((len(prefix), end))
    return Rendered(full, spans)


def render(
    messages: list[dict[str, str]],
    tokenizer,
    template: str,
    last_only: bool = False,
    train_on_prompt: bool = False,
) -> Rendered:
    if template == "auto":
        if not getattr(tokenizer, "chat_template", None):
            raise Problem(
                "template_render_failure",
                f"the tokenizer has no chat template; set data.template to one of {', '.join(sorted(TEMPLATES))}",
            )
        out = render_auto(messages, tokenizer, last_only)
    else:
        out = render_named(TEMPLATES[template], messages, tokenizer, last_only)
    if train_on_prompt:
        out = Rendered(out.text, [(0, len(out.text))], out.add_bos)
    return out


def render_text(text: str, tokenizer) -> Rendered:
    """Plain text for continued pretraining: BOS if the model uses one, the text, EOS; all trains."""
    body = text + (tokenizer.eos_token or "")
    return Rendered(body, [(0, len(body))], add_bos=_bos_wanted(tokenizer))


def render_prompt(messages: list[dict[str, str]], tokenizer, settings) -> str:
    """The prompt text up to the generation point (messages without the last assistant turn)."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    head = messages[:last] if last is not None else list(messages)
    if settings.template == "auto":
        return _apply(tokenizer, head, True)
    return prompt_named(TEMPLATES[settings.template], head, tokenizer)
