"""Settings of task evaluation: the `evaluate` section of a run config.

    evaluate:
      metric: accuracy            # or exact_match, numeric_match, token_f1, field_f1, module:function
      labels_file: data/labels.json
      max_new_tokens: 16
      objective: true             # train/sweep: this metric, not eval loss, picks the best checkpoint

Eval loss stays the objective unless `objective` is true; `evaluate` always scores `metric`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EvalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    metric: str = Field(
        "exact_match",
        description="exact_match, numeric_match, accuracy, token_f1, field_f1, or a custom module:function.",
    )
    labels: list[str] | None = Field(
        None, description="Allowed answers for accuracy (default: labels_file, else the distinct references)."
    )
    labels_file: str | None = Field(None, description="JSON list, or one label a line, of allowed answers.")
    max_new_tokens: int = Field(64, gt=0, description="Most tokens generated per answer.")
    batch_size: int = Field(16, gt=0, description="Prompts generated together (left-padded, KV cache).")
    limit: int | None = Field(None, gt=0, description="Score at most this many eval records (`evaluate`).")
    subset_size: int = Field(
        64, gt=0, description="Records scored at each eval point during train/sweep; the full set is scored at the end."
    )
    few_shot: int = Field(0, ge=0, description="Train examples shown before each prompt (base-model baseline).")
    objective: bool = Field(
        False,
        description="Use the metric instead of eval loss to pick the best "
        "checkpoint and to report to the sweep pruner.",
    )
    direction: Literal["maximize", "minimize"] | None = Field(
        None, description="Better is higher (maximize) or lower; default: the metric's own."
    )
