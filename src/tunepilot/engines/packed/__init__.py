"""The packed engine: many LoRA trials on one frozen base model in one process.

lora.py     MultiLoraLinear: base output once, each slot's LoRA delta on its own rows
stack.py    the LoRA bank: all slots' weights of all layers in one parameter; per-layer and per-trial views
inject.py   wrap a model's linear layers; add/remove a slot's adapters; PEFT key names
loss.py     chunked lm_head + cross-entropy over trained positions only
pack.py     the packed forward pass (mask-free causal attention): per-slot summed losses
trial.py    one trial's optimizer, schedule, data order and counters
memory.py   per-trial memory estimates; K from GPU memory
export.py   a trial's adapter as a PEFT adapter folder
engine.py   PackedEngine: the Engine interface over K slots
"""

from tunepilot.engines.packed.engine import PackedEngine

__all__ = ["PackedEngine"]
