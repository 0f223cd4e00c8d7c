"""Batched greedy generation with the KV cache.

Prompts are sorted by length and cut into batches so a batch holds prompts of similar length (less
padding, fewer wasted positions); they are left-padded so every row's next token sits at the last
position, which is what `generate` with a KV cache needs. Results come back in the input order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Generation:
    text: str  # the answer, special tokens removed, stripped
    tokens: int  # tokens generated, the stop token included


def stop_token_ids(model, tokenizer) -> list[int]:
    """EOS ids from the model's generation config and the tokenizer (chat models often end a turn with
    a token, e.g. <|im_end|>, that is not the tokenizer's eos)."""
    ids: list[int] = []
    for source in (getattr(model, "generation_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        for i in value if isinstance(value, (list, tuple)) else [value]:
            if i is not None and i not in ids:
                ids.append(int(i))
    return ids


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()  # not inference_mode: tensors a model caches here may be reused in training
def generate_batch(model, tokenizer, prompts: Sequence[str], max_new_tokens: int) -> list[Generation]:
    """Greedy answers for one batch of rendered prompts (their special tokens are already in the text)."""
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    enc = {k: v.to(_device_of(model)) for k, v in enc.items()}
    stops = stop_token_ids(model, tokenizer)
    out = model.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        use_cache=True,
        num_beams=1,
        temperature=None,
        top_p=None,
        top_k=None,
        eos_token_id=stops,
        pad_token_id=tokenizer.pad_token_id,
    )
    new = out[:, enc["input_ids"].shape[1] :]
    # A row that stopped early is padded to the batch's longest answer: count up to its first stop.
    is_stop = torch.isin(new, torch.tensor(stops, device=new.device)).int()
    after_stop = (is_stop.cumsum(dim=1) - is_stop) > 0
    counts = (~after_stop).sum(dim=1)
    texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    return [Generation(t.strip(), int(n)) for t, n in zip(texts, counts.tolist(), strict=True)]


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> list[Generation]:
    """Greedy answers for all prompts, batched by length; the model's train/eval mode and the tokenizer's
    padding side are restored afterwards (evaluation runs inside training too)."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    answers: list[Generation] = [Generation("", 0)] * len(prompts)
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = generate_batch(model, tokenizer, [prompts[i] for i in idx], max_new_tokens)
            for i, answer in zip(idx, batch, strict=True):
                answers[i] = answer
            if progress:
                progress(len(idx))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return answers
