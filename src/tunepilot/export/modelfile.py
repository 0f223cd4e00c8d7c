"""An Ollama Modelfile beside the GGUF: `ollama create NAME -f Modelfile`.

Ollama templates are Go templates, not the tokenizer's Jinja chat template, so the Jinja template is
recognised by its markers (ChatML, Llama 3, Gemma, Mistral) and written as the Go template of the
same format. A template of another shape gets no TEMPLATE line: Ollama then reads the chat template
that the converter stored in the GGUF metadata (`tokenizer.chat_template`). Stop tokens are the
format's end-of-turn marker and the tokenizer's EOS token.
"""

from __future__ import annotations

GO_TEMPLATES = {
    "chatml": (
        "<|im_start|>",
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
        ["<|im_end|>"],
    ),
    "llama3": (
        "<|start_header_id|>",
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
        "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
        ["<|eot_id|>"],
    ),
    "gemma": (
        "<start_of_turn>",
        '{{- range .Messages }}<start_of_turn>{{ if eq .Role "assistant" }}model{{ else }}{{ .Role }}{{ end }}\n'
        "{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n",
        ["<end_of_turn>"],
    ),
    "mistral": (
        "[INST]",
        '{{- range .Messages }}{{ if eq .Role "user" }}[INST] {{ .Content }}[/INST]'
        '{{ else if eq .Role "assistant" }} {{ .Content }}</s>{{ end }}{{ end }}',
        ["</s>"],
    ),
}


def template_family(chat_template: str | None) -> str | None:
    if not chat_template:
        return None
    return next((name for name, (marker, _, _) in GO_TEMPLATES.items() if marker in chat_template), None)


def modelfile(gguf_name: str, chat_template: str | None, eos_token: str | None, system: str | None) -> str:
    family = template_family(chat_template)
    lines = ["# Ollama Modelfile written by tunepilot export: ollama create <name> -f Modelfile", f"FROM ./{gguf_name}"]
    stops: list[str] = []
    if family is not None:
        _, template, stops = GO_TEMPLATES[family]
        lines.append(f'TEMPLATE """{template}"""')
    else:
        lines.append("# chat template: Ollama reads it from the GGUF metadata (tokenizer.chat_template)")
    for stop in [*stops, *([eos_token] if eos_token and eos_token not in stops else [])]:
        lines.append(f'PARAMETER stop "{stop}"')
    if system:
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n"
