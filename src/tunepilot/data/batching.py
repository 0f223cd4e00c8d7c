"""Collation (right-padding) and optional packing of tokenized examples."""

from __future__ import annotations

from tunepilot.data.tokenize import IGNORE


def collate(examples: list[dict], pad_token_id: int) -> dict:
    """Right-pad to the longest example: input_ids, attention_mask, labels (-100 on padding)."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"], dtype=torch.long)
        labels[i, :n] = torch.tensor(e["labels"], dtype=torch.long)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pack(examples: list[dict], cutoff_len: int) -> list[dict]:
    """Greedy packing in order: examples are concatenated into sequences of at most cutoff_len tokens
    and never split (each is already <= cutoff_len). Attention is not blocked between packed
    examples (as in plain concatenation packing); each example starts after the previous one's
    end-of-turn token, so its prompt is still masked from the loss."""
    packed: list[dict] = []
    ids: list[int] = []
    labels: list[int] = []
    for e in examples:
        if ids and len(ids) + len(e["input_ids"]) > cutoff_len:
            packed.append({"input_ids": ids, "labels": labels})
            ids, labels = [], []
        ids = ids + e["input_ids"]
        labels = labels + e["labels"]
    if ids:
        packed.append({"input_ids": ids, "labels": labels})
    return packed
