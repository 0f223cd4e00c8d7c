"""One frozen base model shared by every slot: the packed forward pass and per-slot losses.

`Pack.losses({slot: examples})` pads every slot's micro-batch to one length, concatenates them along
the batch dimension, runs the base model once with each wrapped layer adding each slot's LoRA delta
on that slot's rows, and returns each slot's summed token loss and token count. The caller turns
those into per-trial mean losses and runs one backward for their sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tunepilot.engines.packed.inject import wrap_linears
from tunepilot.engines.packed.lora import PackContext, _mix_seed
from tunepilot.engines.packed.loss import (
    IGNORE_INDEX,
    ce_chunk,
    ce_chunk_fused,
    chunked_ce_sums,
    token_scores,
    trained_positions,
)
from tunepilot.engines.packed.norms import fuse_rms_norms
from tunepilot.errors import UserError

Example = dict[str, Any]  # {"input_ids": [...], "labels": [...]}


@dataclass
class Batch:
    """One packed forward pass's inputs, on the model's device, and where its losses come from."""

    inputs: dict[str, torch.Tensor]  # input_ids [rows, length], attention_mask only with padding
    segments: list[tuple[int, int, int]]  # (slot, first row, end row), slot order
    keep: torch.Tensor  # flat positions (row * length + t) whose next token is trained
    targets: torch.Tensor  # the token each kept position predicts
    owner: torch.Tensor  # each kept position's segment (index into `segments`)
    counts: list[int]  # trained tokens per segment


def _compiled_chunk():
    """The loss chunk compiled: fixed-size chunks (the loss pads to whole ones), one graph per grad mode."""
    return torch.compile(ce_chunk_fused, dynamic=False)


class Pack:
    def __init__(
        self,
        model: nn.Module,
        pad_id: int,
        chunk_rows: int = 4096,
        gradient_checkpointing: bool = False,
        compile: bool | str = False,
        fuse_norms: bool | None = None,
        compile_loss: bool = False,
    ):
        """`compile`: torch.compile the decoder layers and the loss chunk (a string: the layers' mode).
        `compile_loss`: the loss chunk alone, with eager layers (`compile: auto` on CUDA)."""
        if getattr(model.config, "final_logit_softcapping", None) or getattr(model.config, "logit_scale", None):
            raise UserError(
                f"{model.config.model_type}: logits are soft-capped or scaled after lm_head; the "
                "packed engine's fused loss does not do that; use engine: standard"
            )
        self.model = model
        self.pad_id = pad_id
        self.chunk_rows = chunk_rows
        self.context = PackContext()
        self.wrapped = wrap_linears(model, self.context)
        self.bank = self.context.bank
        self.decoder = getattr(model, model.base_model_prefix)
        self.head = model.get_output_embeddings()
        self.device = self.head.weight.device
        self.gradient_checkpointing = gradient_checkpointing
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.eval()
        self.mask_free = _mask_free_attention(model, self.decoder)
        self.chunk_fn = ce_chunk
        # eager on GPU: one fused kernel per RMSNorm (None: on CUDA only; on CPU it gains nothing);
        # compiled, inductor fuses transformers' own form
        fuse = self.device.type == "cuda" if fuse_norms is None else fuse_norms
        self.fused_norms = fuse_rms_norms(model) if fuse and not compile else 0
        self.compiled = bool(compile)
        if compile:
            self._compile(None if compile is True else compile)
        elif compile_loss:
            self.chunk_fn = _compiled_chunk()

    def _compile(self, mode: str | None) -> None:
        """torch.compile each decoder layer and the loss chunk (opt-in), with torch's automatic dynamic
        shapes (dynamic=None).

        Inductor fuses what eager runs as separate memory-bound kernels: RMSNorm with its fp32
        upcast, rotary embeddings, SiLU x up, residual adds, the LoRA scaling, and the loss chunk's
        softmax / one-hot / cast. The matmuls and attention stay cuBLAS / flash kernels. A pack of
        one composition (the fixed-length throughput benchmark) compiles once, static. Real data
        changes the length every step, and sweeps change the rows: the first change recompiles with
        symbolic sizes, and later ones need no new graph. (With dynamic=False every length compiled
        anew until torch's recompile limit, 8, sent the layers back to eager: tested on CPU.) A new
        set of active slots needs no new graph: `_prepare` selects the slots' adapters outside the
        layers (`LoraStack.prepare_pass`), so the layers see tensor sizes, not Python values."""
        # A layer's graph has a bounded set of variants: training or eval (grad mode), the first
        # layer's input without grad, dropout drawn or not, and the first change of each size (rows,
        # rank cap, length) that makes it dynamic. A mixed pack of the tiny model needs ~10, past
        # torch's default limit of 8, after which a layer would run eager for the rest of the process.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
        for layer in getattr(self.decoder, "layers", []):
            layer.compile(dynamic=None, mode=mode)
        self.chunk_fn = _compiled_chunk()

    def batch(self, micro: dict[int, list[Example]]) -> Batch:
        """Pad and concatenate slots' examples (slot order); the loss positions chosen on the host."""
        length = max(len(e["input_ids"]) for exs in micro.values() for e in exs)
        ids, labels, mask, segments, owner_of_row = [], [], [], [], []
        for k, slot in enumerate(sorted(micro)):
            for e in micro[slot]:
                pad = length - len(e["input_ids"])
                ids.append(list(e["input_ids"]) + [self.pad_id] * pad)
                labels.append(list(e["labels"]) + [IGNORE_INDEX] * pad)
                mask.append([1] * len(e["input_ids"]) + [0] * pad)
            segments.append((slot, len(owner_of_row), len(owner_of_row) + len(micro[slot])))
            owner_of_row += [k] * len(micro[slot])
        host_labels = torch.tensor(labels)
        keep = trained_positions(host_labels)
        owner = torch.tensor(owner_of_row)[keep // length]
        inputs = {"input_ids": torch.tensor(ids)}
        # No padding: no mask, so SDPA takes its causal fast path (flash attention on GPU). With the
        # mask-free attention, padded rows need none either (see `_mask_free_attention`).
        if not self.mask_free and any(0 in m for m in mask):
            inputs["attention_mask"] = torch.tensor(mask)
        send = self._to_device
        return Batch(
            {k: send(v) for k, v in inputs.items()},
            segments,
            send(keep),
            send(host_labels.reshape(-1)[keep + 1]),
            send(owner),
            torch.bincount(owner, minlength=len(segments)).tolist(),
        )

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """Host tensor to the model's device without making the host wait for the GPU (pinned memory,
        asynchronous copy; a plain copy from pageable memory synchronises the stream)."""
        if self.device.type != "cuda":
            return t.to(self.device)
        return t.pin_memory().to(self.device, non_blocking=True)

    def losses(
        self, micro: dict[int, list[Example]], training: bool, seeds: dict[int, int] | None = None
    ) -> dict[int, tuple[torch.Tensor, int]]:
        """Per slot: (sum of token losses, number of trained tokens) of one packed forward pass.

        Nothing here waits for the GPU: the sums stay on the device until the caller reads them."""
        b = self.batch(micro)
        self.context.dropout_seeds = {s: _mix_seed(*k) for s, k in (seeds or {}).items()}
        hidden = self._hidden(b, micro, training)
        h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, b.keep)
        totals = chunked_ce_sums(
            h,
            b.targets,
            b.owner,
            len(b.segments),
            self.head,
            self.chunk_rows,
            self.chunk_fn,
            fixed=self.chunk_fn is not ce_chunk,
        )
        return {slot: (totals[i], b.counts[i]) for i, (slot, _, _) in enumerate(b.segments)}

    @torch.no_grad()
    def eval_scores(self, micro: dict[int, list[Example]]) -> dict[int, torch.Tensor]:
        """Per slot, one device vector of one eval forward pass: [sum of token losses, trained
        tokens, tokens predicted exactly (argmax), examples whose every answer token is the argmax,
        examples]. An example all of whose answer tokens are the argmax given the tokens before is
        one that greedy decoding reproduces exactly (under teacher forcing the two are the same
        test), so `greedy_match` is exact-match accuracy of greedy generation, from one pass."""
        b = self.batch(micro)
        hidden = self._hidden(b, micro, training=False)
        h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, b.keep)
        losses, correct = token_scores(h, b.targets, self.head, self.chunk_rows)
        length = b.inputs["input_ids"].shape[1]
        example = b.keep // length  # the row (example) of each trained position
        rows = b.inputs["input_ids"].shape[0]
        wrong = torch.zeros(rows, device=h.device).index_add_(0, example, (~correct).float())
        trained = torch.zeros(rows, device=h.device).index_add_(0, example, torch.ones_like(losses))
        exact = (wrong == 0) & (trained > 0)
        out = {}
        for i, (slot, first, end) in enumerate(b.segments):
            mine = b.owner == i
            out[slot] = torch.stack(
                [
                    losses[mine].sum(),
                    mine.sum().float(),
                    correct[mine].sum().float(),
                    exact[first:end].sum().float(),
                    (trained[first:end] > 0).sum().float(),
                ]
            )
        return out

    def _hidden(self, b: Batch, micro: dict[int, list[Example]], training: bool) -> torch.Tensor:
        ctx = self.context
        ctx.segments, ctx.training = b.segments, training
        ctx.widths = {s: max(len(e["input_ids"]) for e in exs) for s, exs in micro.items()}
        self._prepare(b.segments, b.inputs["input_ids"].shape[0])
        self.model.train(training and self.gradient_checkpointing)  # HF checkpoints only in train mode
        return self.decoder(
            input_ids=b.inputs["input_ids"], attention_mask=b.inputs.get("attention_mask"), use_cache=False
        ).last_hidden_state

    def _prepare(self, segments: list, rows: int) -> None:
        """Before a forward pass: cast the LoRA bank once and hand each layer its views and its
        slots' selection (`LoraStack.prepare_pass`: host work kept out of a compiled layer)."""
        dtype = self.head.weight.dtype
        dropout = self._dropout_rows(segments, rows) if self.compiled and self.context.training else None
        for layer, views in zip(self.wrapped.values(), self.bank.views(dtype), strict=True):
            layer.stack.current = views
            layer.stack.prepare_pass(segments, rows, self.context.training, dtype, self.device, self.compiled, dropout)

    def _dropout_rows(self, segments: list, rows: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A compiled training pass's dropout: each row's seed (its trial's seed of this micro-step
        and its row within the trial) and its trial's rate, [rows, 1, 1] on the device (`hashed_keep`)."""
        rates = {slot: self._dropout_rate(slot) for slot, _, _ in segments}
        if not any(rates.values()):
            return None
        seeds, p = [0] * rows, [0.0] * rows
        for slot, first, end in segments:
            for row in range(first, end):
                seeds[row] = _mix_seed(self.context.dropout_seeds.get(slot, 0), row - first) >> 1  # + salt < 2^63
                p[row] = rates[slot]
        return self._rows_tensor(seeds, torch.int64), self._rows_tensor(p, torch.float32)

    def _dropout_rate(self, slot: int) -> float:
        """A trial's LoRA dropout (the same in every layer it adapts): its first adapted layer's."""
        for layer in self.wrapped.values():
            adapter = layer.stack.adapters.get(slot)
            if adapter is not None:
                return adapter.dropout
        return 0.0

    def _rows_tensor(self, values: list, dtype: torch.dtype) -> torch.Tensor:
        return self._to_device(torch.tensor(values, dtype=dtype).view(-1, 1, 1))

    def logits(self, slot: int, input_ids: torch.Tensor) -> torch.Tensor:
        """Full logits of one slot's adapted model (for checks against PEFT), no dropout."""
        ctx = self.context
        ctx.segments, ctx.training = [(slot, 0, input_ids.shape[0])], False
        self.model.eval()
        with torch.no_grad():
            self._prepare(ctx.segments, input_ids.shape[0])
            return self.model(input_ids=input_ids.to(self.device), use_cache=False).logits


MASK_FREE = "tunepilot_causal_sdpa"


def _causal_sdpa(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, causal through `is_causal`, never with a mask tensor."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, None, **kwargs)


def _mask_free_attention(model: nn.Module, decoder: nn.Module) -> bool:
    """Run the model's attention as SDPA without a mask; True if it now does.

    Rows are right-padded, so a causal mask alone is exact for every position that carries a loss:
    a real token only sees earlier, real tokens, and padding (after them) influences nothing that
    is trained. The decoder builds no mask for an attention function registered without a mask
    function (transformers' AttentionInterface). Building one would check the position ids for
    packed sequences, or the padding mask for padding, on the GPU, and make the host wait for the GPU
    at the start of every forward pass: the GPU would then run dry while the host launches the next
    kernels. Only for causal SDPA models without sliding-window layers (those need their mask)."""
    from transformers import AttentionInterface

    config = model.config
    if (
        config._attn_implementation != "sdpa"
        or getattr(config, "sliding_window", None)
        or getattr(decoder, "has_sliding_layers", False)
        or config.is_encoder_decoder
    ):
        return False
    AttentionInterface.register(MASK_FREE, _causal_sdpa)
    model.set_attn_implementation(MASK_FREE)
    return config._attn_implementation == MASK_FREE
