"""Tiny models and tokenizers for tests and examples: built in about a second, no download.

`tiny_tokenizer()` trains a byte-level BPE on a few sentences and gives it a ChatML chat template;
`tiny_model_dir(path)` writes a random-weight Llama (or Qwen2) model and that tokenizer to a local
directory that loads like any Hugging Face model directory.
"""

from __future__ import annotations

from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "How many clips did Natalia sell altogether in April and May? #### 72",
    "I still have not received my new card, I ordered over a week ago.",
    "Book a table for 4 people at 7pm tomorrow under the name Smith.",
    "The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ( ) { } [ ] : , . ? !",
    "system user assistant question answer instruction input output",
]


def tiny_tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def tiny_config(arch: str = "llama", vocab_size: int = 512, hidden: int = 32, layers: int = 2):
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    if arch == "qwen2":
        return Qwen2Config(**common)
    return LlamaConfig(**common)


def tiny_model_dir(path: str | Path, arch: str = "llama", seed: int = 0, **config_overrides) -> Path:
    """Write a random-weight tiny causal LM and its tokenizer to `path`; return the path."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    tok = tiny_tokenizer()
    config = tiny_config(arch, vocab_size=len(tok), **config_overrides)
    config.pad_token_id = tok.pad_token_id
    config.eos_token_id = tok.eos_token_id
    config.bos_token_id = tok.bos_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_arithmetic_chat(path: str | Path, n: int, seed: int = 0, answer: str = "{a} + {b} = {c}") -> Path:
    """Hand-made addition questions in the `messages` format: learnable, so a loss can fall.

    `answer` is formatted with a, b and c = a + b (e.g. "{a} + {b} = {c}. #### {c}").
    """
    import json

    rows = []
    for i in range(n):
        a, b = (i * 7 + seed) % 13, (i * 5 + 3 * seed) % 11
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"What is {a} + {b}?"},
                    {"role": "assistant", "content": answer.format(a=a, b=b, c=a + b)},
                ]
            }
        )
    path = Path(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
