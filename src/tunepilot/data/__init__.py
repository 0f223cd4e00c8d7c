"""tunepilot.data: formats, templates, tokenization with label masking, and validation checks.

The training engines and `tunepilot validate` use the same code:

    prepare_datasets(settings, tokenizer, seed) -> PreparedData(train, eval, stats, findings)
    collate(examples, pad_token_id) -> {input_ids, attention_mask, labels}
    load_conversations(settings, "train" | "eval", seed) -> [Conversation]
    render_prompt(messages, tokenizer, settings) -> prompt text up to the generation point
"""

from tunepilot.data import jsonl as _jsonl  # noqa: F401  (registers the JSONL and JSON readers)
from tunepilot.data import spans as _spans  # noqa: F401  (registers the spans format)
from tunepilot.data.batching import collate, pack
from tunepilot.data.checks import dataset as _dataset  # noqa: F401  (declares dataset-level codes)
from tunepilot.data.checks import text as _text  # noqa: F401  (registers record checks)
from tunepilot.data.checks import tokens as _tokens  # noqa: F401  (registers token checks)
from tunepilot.data.prepare import PreparedData, load_conversations, prepare_datasets
from tunepilot.data.records import Conversation, DataFinding
from tunepilot.data.templates import TEMPLATES, render_prompt, template_names

__all__ = [
    "Conversation",
    "DataFinding",
    "PreparedData",
    "TEMPLATES",
    "collate",
    "load_conversations",
    "pack",
    "prepare_datasets",
    "render_prompt",
    "template_names",
]
