"""PackedEngine: K LoRA trials in K slots on one frozen base model, behind the Engine interface.

    start(spec)  fresh adapters + optimizer for the trial in a free slot (no base reload)
    advance()    packed steps until some trial reaches a report point (a fraction of its own
                 schedule); those trials are evaluated together and reported; finished ones leave
    stop(n)      a pruned trial leaves; its slot is free at once

One packed step: every active trial contributes one micro-batch of its own size, drawn in its own
order; one forward on the concatenation; per-trial mean token losses, each divided by the trial's
accumulation count; one backward of their sum; then each trial whose accumulation window is full
clips its own gradients and steps its own AdamW and schedule. Trials with other accumulation
counts, micro-batch sizes or lengths simply coexist; a finished trial's rows disappear.

Each trial is recorded by its own `RunRecorder`, as a standard run is: config.yaml, metrics.jsonl,
summary.json, adapter/, the live health monitor and the observers, best and patience. Its seconds
are its share of the engine's time: a packed pass's time is split evenly over the trials in it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunepilot.engines.base import Outcome, Progress, Report, TrialSpec, resolved_config_key
from tunepilot.engines.packed import memory
from tunepilot.engines.packed.export import export_adapter
from tunepilot.engines.packed.inject import adapter_state, add_adapters, match_targets, remove_adapters, reserve
from tunepilot.engines.packed.pack import Pack
from tunepilot.engines.packed.trial import TrialState
from tunepilot.engines.plan import plan_for
from tunepilot.engines.recorder import RunRecorder, prepare_run_dir
from tunepilot.engines.summary import FailureKind
from tunepilot.errors import UserError
from tunepilot.stream import EvalPoint, TrainStep

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# `compile: auto` compiles the decoder layers when a trial plans at least this many optimizer steps.
# From the H100 figures in bench/BENCHMARKS.md (Qwen2.5-0.5B shape, K=8): compiling costs 12-15 s per
# pack composition and saves 6.0 us per trained token (73.1k eager against 129.7k tokens/s compiled);
# the 20-step, 16-trial sweep lost 4.0 s to it (35.3 s against 31.3 s), so it breaks even near 30
# steps for one composition. 100 leaves a margin: those figures predate the dynamic-shape compile,
# whose recompiles and speed on a GPU are not measured yet.
# The loss chunk alone compiles on CUDA whatever the steps: one fixed-shape graph per grad mode, about
# a second to compile, and on an H100 (bench/BENCHMARKS.md, 2026-12-08, kernel_libs.py) the compiled
# chunk computed an eager K=8 step's per-trial loss sums and gradient 2.2x (Qwen2.5-0.5B: 41.5 against
# 90.2 ms), 1.6x (Llama-3.2-1B) and 2.6x (SmolLM2-135M) faster than the eager chunk.
COMPILE_AUTO_STEPS = 100
DataFn = Callable[[Any], tuple[list, list]]  # RunConfig -> (train examples, eval examples)


class PackedEngine:
    name = "packed"
    default_metric = "eval_loss"

    def __init__(
        self,
        config: Any,
        slots: int | str = "auto",
        *,
        model: torch.nn.Module | None = None,
        pad_id: int | None = None,
        data: DataFn | None = None,
        chunk_rows: int = 2048,
        memory_budget: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        compile: bool | str = False,
        fuse_norms: bool | None = None,
        observers: Callable | None = None,
    ):
        """`config`: the sweep's base RunConfig (model, data, shapes); model/data injectable for tests.
        `compile`: torch.compile the decoder layers and the loss chunk (see `Pack._compile`); a
        string is the decoder layers' torch.compile mode; "auto" compiles the layers of long trials
        on CUDA (`COMPILE_AUTO_STEPS`) and the loss chunk of any on CUDA. `fuse_norms`: eager RMSNorm as one
        kernel (`norms.py`; None: on CUDA). `observers`: a function of a trial's config giving the
        observers of its run (e.g. its experiment trackers), besides its health monitor."""
        if slots != "auto" and (not isinstance(slots, int) or isinstance(slots, bool) or slots < 1):
            raise UserError(f"engine.slots: {slots!r} is not a positive number of trials or auto")
        if not isinstance(compile, bool) and compile not in (*COMPILE_MODES, "auto"):
            raise UserError(
                f"engine.compile: {compile!r} is not true, false, auto or a torch.compile mode "
                f"({', '.join(COMPILE_MODES)})"
            )
        self.config, self.clock = config, clock
        self._observers = observers or (lambda cfg: [])
        # where the engine's wall time went (host clock; the GPU catches up at each report's sync)
        self.seconds = {"load": 0.0, "start": 0.0, "train": 0.0, "eval": 0.0, "export": 0.0}
        if model is None:
            with self._timed("load"):
                model, pad_id = _load(config)
        self._data = data or _prepared_data(config)
        device = next(model.parameters()).device
        auto = compile == "auto"
        if auto:  # what it resolved to: `self.compiled`
            compile = self._compile_pays(config, device)
        self.pack = Pack(
            model,
            pad_id if pad_id is not None else 0,
            chunk_rows,
            gradient_checkpointing=config.model.gradient_checkpointing,
            compile=compile,
            fuse_norms=fuse_norms,
            compile_loss=auto and device.type == "cuda",
        )
        self.shape = memory.Shape.of(model)
        self._num_params = sum(p.numel() for p in model.parameters())  # the base model's size, for health rules
        self.budget = memory_budget if memory_budget is not None else memory.memory_budget(self.pack.device)
        self.shared = memory.shared_bytes(self.shape, chunk_rows)
        k = (
            slots
            if isinstance(slots, int)
            else memory.slots_that_fit(self.budget, self._estimate(config, config.method.lora_rank), self.shared)
        )
        self._slots: list[TrialState | None] = [None] * k
        self._extra: dict[int, dict[str, Any]] = {}  # per slot: recorder, targets, start time, run dir
        self._pending: list[Progress] = []
        self._baselines: dict[int, tuple[list, float]] = {}  # eval set -> (the set, untrained eval loss)
        self._unread: Readback | None = None  # the last packed step's values, still on their way

    def _compile_pays(self, config: Any, device: torch.device) -> bool:
        """`compile: auto`: on CUDA, when the base trial plans COMPILE_AUTO_STEPS optimizer steps or
        more (its data, prepared here, is the first trial's too). Inductor on CPU is not measured here."""
        if device.type != "cuda":
            return False
        train, _ = self._data(config)
        return plan_for(config, train).total_steps >= COMPILE_AUTO_STEPS

    # -- the Engine interface ------------------------------------------------------------------
    @property
    def slots(self) -> int:
        return len(self._slots)

    @property
    def compiled(self) -> bool:
        """Whether the decoder layers run compiled: what `compile: auto` resolved to for them (under
        auto on CUDA the loss chunk compiles either way)."""
        return self.pack.compiled

    @property
    def active(self) -> list[int]:
        return [t.number for t in self._slots if t is not None]

    def supports(self, metric: str) -> bool:
        """Eval loss only as the objective: task metrics scored by generation need the standard
        engine (the teacher-forced token_accuracy and greedy_match are recorded, not optimised)."""
        return metric == "eval_loss"

    def config_key(self, spec: TrialSpec) -> str | None:
        return resolved_config_key(spec)

    def start(self, spec: TrialSpec) -> None:
        free = [i for i, t in enumerate(self._slots) if t is None]
        if not free:
            raise RuntimeError(f"packed engine: all {self.slots} slots are busy; stop or advance first")
        started = time.perf_counter()
        try:
            with self._timed("start"):  # data (prepared once per data settings), adapters, optimizer
                self._start(spec, free[0])
        except UserError as e:  # the trial cannot run here: reported as failed before it starts
            self._pending.append(Outcome(spec.number, "failed", reason=e.message, failure=FailureKind.ERROR))
            return
        self._charge([self._slots[free[0]]], time.perf_counter() - started)

    def advance(self) -> list[Progress]:
        out, self._pending = self._pending, []
        try:
            return out + self._advance()
        except torch.OutOfMemoryError as e:  # the failed step's tensors go with the traceback, below
            message = str(e).splitlines()[0] if str(e) else "out of memory"
        return out + self._out_of_memory(message)

    def _advance(self) -> list[Progress]:
        out: list[Progress] = []
        while any(self._slots):
            with self._timed("train", self._trials()):
                out += self._step()
            ready = [t for t in self._slots if t is not None and t.at_report]
            if ready:
                with self._timed("train", self._trials()):
                    out += self._flush()  # the stream and last_loss up to date; a failed trial is gone
                return out + self._report([t for t in ready if self._slots[t.slot] is t])
            if any(isinstance(p, Outcome) for p in out):
                return out
        with self._timed("train", self._trials()):
            return out + self._flush()

    def _out_of_memory(self, message: str) -> list[Progress]:
        """A packed step or evaluation ran out of GPU memory. The gradients it was accumulating are
        partial, so every trial in it fails, marked as out of memory (a sweep retries such a trial with
        half the micro-batch and twice the accumulation), and the engine keeps one slot fewer."""
        packed = len(self.active)  # before the flush, which may end some of them
        keep = max(1, packed - 1)
        reason = (
            f"out of memory in a packed pass of {packed} trial(s): {message}; "
            f"the packed engine holds at most {keep} slot(s) from now on"
        )
        out = self._flush()  # the step before the failed one finished: its records are written
        for t in self._trials():
            out.append(self._finish(t, "failed", None, reason, FailureKind.OOM))
        del self._slots[keep:]
        if self.pack.device.type == "cuda":
            torch.cuda.empty_cache()
        return out

    def stop(self, number: int, reason: str) -> Outcome:
        trial = next((t for t in self._slots if t is not None and t.number == number), None)
        if trial is None:
            raise KeyError(f"trial {number} is not active in the packed engine")
        evals = self._extra[trial.slot]["recorder"].evals
        return self._finish(trial, "pruned", evals[-1][1] if evals else None, reason)

    def close(self) -> None:
        self._unread = None
        for t in self._trials():
            self._finish(t, "failed", None, "engine closed", FailureKind.INTERRUPTED)
        self.pack = None  # the base model goes with the last reference
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- slots -----------------------------------------------------------------------------------
    def _start(self, spec: TrialSpec, slot: int) -> None:
        cfg = spec.config
        self._check_compatible(cfg)
        targets = match_targets(self.pack.wrapped, cfg.method.lora_target)
        self._check_fits(cfg)
        train, evals = self._data(cfg)  # before the adapters: a data error leaves the slot clean
        if not train:
            raise UserError(f"trial {spec.number}: no training examples")
        if not evals:
            raise UserError(
                f"trial {spec.number}: no eval examples, so no eval loss to judge the trial by; "
                "give data.eval_file or val_size"
            )
        m = cfg.method
        relayout = reserve(self.pack.wrapped, self.slots, m.lora_rank)
        if relayout is not None:  # a larger rank than any before: the bank moved, and so must the moments
            for t in self._slots:
                if t is not None:
                    t.rebind(self.pack.bank.row(t.slot), relayout)
        add_adapters(
            self.pack.wrapped, targets, slot, m.lora_rank, m.alpha, m.use_rslora, m.lora_dropout, seed=cfg.train.seed
        )
        row = self.pack.bank.row(slot)
        trial = TrialState(spec.number, slot, cfg, row, train, evals, spec.report_fractions)
        run_dir = Path(spec.run_dir) if spec.run_dir else None
        if run_dir is not None:  # a rerun trial in the same directory starts afresh
            prepare_run_dir(run_dir, cfg, overwrite=True)
        recorder = RunRecorder(
            cfg,
            run_dir,
            engine=self.name,
            planned_steps=trial.steps,
            observers=self._observers(cfg),
            num_params=self._num_params,
            trial=spec.number,
            params=spec.params,
        )
        recorder.start()
        self._slots[slot] = trial
        self._extra[slot] = {"targets": targets, "t0": self.clock(), "run_dir": run_dir, "recorder": recorder}
        if cfg.health.enabled and cfg.health.baseline_eval:
            recorder.record_baseline(EvalPoint(step=0, eval_loss=self._baseline(trial), epoch=0.0, seconds=0.0))

    def _baseline(self, trial: TrialState) -> float:
        """The untrained model's eval loss on the trial's eval set: a new trial's adapters add zero
        (B starts at 0), so it is the base model's, computed once per eval set."""
        key = id(trial.eval_examples)  # the data function returns one list per data settings
        if key not in self._baselines:
            self._baselines[key] = (trial.eval_examples, self.evaluate([trial])[trial.number].eval_loss)
        return self._baselines[key][1]

    def _check_compatible(self, cfg: Any) -> None:
        if cfg.method.finetuning_type != "lora" or cfg.model.quantization_bit is not None:
            raise UserError(
                "the packed engine trains LoRA on an unquantized base; use engine: standard "
                "for full fine-tuning or QLoRA"
            )
        if cfg.model.name_or_path != self.config.model.name_or_path:
            raise UserError(
                f"model.name_or_path {cfg.model.name_or_path!r} differs from the packed base "
                f"{self.config.model.name_or_path!r}; all packed trials share one base model"
            )

    def _estimate(self, cfg: Any, rank: int) -> int:
        """A trial's bytes: its bank row (all wrapped layers at the bank's rank `rank`, padding
        included: weights, gradient and AdamW moments) and the activations of its micro-batch."""
        weights = rank * sum(layer.in_features + layer.out_features for layer in self.pack.wrapped.values())
        return memory.trial_bytes(
            self.shape,
            weights,
            cfg.train.per_device_train_batch_size,
            cfg.data.cutoff_len,
            self.pack.gradient_checkpointing,
        )

    def _check_fits(self, cfg: Any) -> None:
        if self.budget is None:
            return
        rank = max(cfg.method.lora_rank, self.pack.bank.rank)  # a larger rank widens every trial's row
        need = self._estimate(cfg, rank)
        used = sum(self._estimate(t.config, rank) for t in self._slots if t)
        if used + need + self.shared > self.budget:
            raise UserError(
                f"does not fit: needs ~{need / memory.GIB:.1f} GiB next to {len(self.active)} "
                f"active trial(s) using ~{used / memory.GIB:.1f} GiB of "
                f"{self.budget / memory.GIB:.1f} GiB; lower per_device_train_batch_size or "
                "cutoff_len, or enable gradient_checkpointing"
            )

    # -- training --------------------------------------------------------------------------------
    def _step(self) -> list[Progress]:
        """One packed forward/backward; each trial steps its optimizer when its window is full.

        The host never waits for the GPU here: the finished steps' losses and grad norms are copied
        to the host asynchronously and read after the next step is queued (`_read`), so the GPU
        always has the next step's work in hand. A non-finite loss therefore ends its trial one
        packed step late; the step it names is the step it happened at."""
        trials = [t for t in self._slots if t is not None]
        micro = {t.slot: t.next_micro() for t in trials}
        losses = self.pack.losses(micro, training=True, seeds={t.slot: t.dropout_key() for t in trials})
        # Each trial's term is its summed token loss over its whole step's token count: the sum's
        # gradient w.r.t. a trial's weights is exactly that trial's own gradient.
        objective = sum(losses[t.slot][0] / t.window_tokens for t in trials)
        objective.backward()
        logs = [(t, log) for t in trials if (log := t.after_backward(losses[t.slot][0].detach())) is not None]
        previous, self._unread = self._unread, (Readback(logs, self.pack.device) if logs else None)
        return self._read(previous)

    def _read(self, pending: Readback | None) -> list[Progress]:
        """Write the stream records of a step read back from the device; fail non-finite trials."""
        if pending is None:
            return []
        out: list[Progress] = []
        for (t, log), (loss, norm) in zip(pending.entries, pending.values(), strict=True):
            if self._slots[t.slot] is not t:  # finished meanwhile (pruned, failed, closed)
                continue
            if not math.isfinite(loss):
                reason = f"loss is {loss} at step {log['step']}"
                out.append(self._finish(t, "failed", None, reason, FailureKind.NON_FINITE))
                continue
            t.last_loss = loss
            recorder = self._extra[t.slot]["recorder"]
            recorder.state.step, recorder.state.tokens = log["step"], log["tokens"]
            stopped = self._write(
                t,
                TrainStep(
                    step=log["step"],
                    loss=loss,
                    lr=log["lr"],
                    grad_norm=norm,
                    epoch=log["epoch"],
                    tokens=log["tokens"],
                    input_tokens=log["input_tokens"],
                    seconds=self._seconds(t),
                    memory_mb=_memory_mb(self.pack.device),
                ),
            )
            out += [stopped] if stopped is not None else []
        return out

    def _flush(self) -> list[Progress]:
        """Read the step still in flight (waits for the GPU): before reports and when leaving."""
        pending, self._unread = self._unread, None
        return self._read(pending)

    @torch.no_grad()
    def evaluate(self, trials: list[TrialState]) -> dict[int, EvalScores | None]:
        """Each trial's scores on its own eval set (token-mean eval loss, and the teacher-forced task
        metrics of `Pack.eval_scores`); trials' batches share forwards.

        The sums stay on the device until all batches are queued: one host sync for the whole eval."""
        batches = {t.slot: _chunks(t.eval_examples, t.config.train.per_device_eval_batch_size) for t in trials}
        totals: dict[int, list] = {t.slot: [] for t in trials}
        for i in range(max((len(b) for b in batches.values()), default=0)):
            micro = {s: b[i] for s, b in batches.items() if i < len(b)}
            for s, scores in self.pack.eval_scores(micro).items():
                totals[s].append(scores)
        slots = [t.slot for t in trials if totals[t.slot]]
        sums = torch.stack([torch.stack(totals[s]).sum(0) for s in slots]).tolist() if slots else []
        scores = {s: EvalScores.of(v) for s, v in zip(slots, sums, strict=True) if v[1] > 0}  # v[1]: tokens
        return {t.number: scores.get(t.slot) for t in trials}

    def _report(self, ready: list[TrialState]) -> list[Progress]:
        with self._timed("eval", ready):
            evals = self.evaluate(ready)
        out: list[Progress] = []
        for t in ready:
            scores, recorder = evals[t.number], self._extra[t.slot]["recorder"]
            value = scores.eval_loss
            t.evaluated_at = t.step
            point = EvalPoint(
                step=t.step, eval_loss=value, epoch=t.epoch, seconds=self._seconds(t), metrics=scores.metrics
            )
            stopped = self._write(t, point)
            if stopped is not None:  # the health monitor ended the trial on this evaluation
                out.append(stopped)
                continue
            if not math.isfinite(value):
                out.append(
                    self._finish(t, "failed", None, f"eval loss is {value} at step {t.step}", FailureKind.NON_FINITE)
                )
                continue
            improved = recorder.track_eval(point, value)
            if improved and t.config.train.load_best_model_at_end:
                self._extra[t.slot]["best_state"] = adapter_state(self.pack.wrapped, t.slot)  # CPU copy
            out.append(Report(t.number, t.step / t.steps, t.step, value))  # the last point too, as standard
            if t.done or recorder.stopped:  # the objective is the best eval, as in the standard engine
                reason = None if t.done else "early_stopping"
                out.append(self._finish(t, "complete", recorder.state.best_eval, reason))
        return out

    def _finish(
        self,
        t: TrialState,
        state: str,
        value: float | None,
        reason: str | None = None,
        failure: FailureKind | None = None,
    ) -> Outcome:
        extra = self._extra[t.slot]
        recorder: RunRecorder = extra["recorder"]
        adapter = None
        if extra["run_dir"] is not None and state == "complete":
            # the adapter of the best eval when load_best_model_at_end (as the standard engine does)
            started = time.perf_counter()
            with self._timed("export"):
                adapter = export_adapter(
                    extra["run_dir"] / "adapter",
                    self.pack.wrapped,
                    t.slot,
                    extra["targets"],
                    t.config.method,
                    self.config.model.name_or_path,
                    extra.get("best_state"),
                )
            self._charge([t], time.perf_counter() - started)
        status = {"complete": None, "pruned": "pruned"}.get(
            state, "interrupted" if failure == FailureKind.INTERRUPTED else "failed"
        )
        summary = recorder.finish(
            status=status,
            failure=failure,
            reason=reason,
            adapter=adapter,
            restored_best="best_state" in extra,
            device=str(self.pack.device),
            peak_memory_mb=_memory_mb(self.pack.device),
            parameters={"total": self._num_params, "trainable": t.params[0].numel()},
            plan=t.plan.as_dict(),
            data=self._stats(t),
        )
        if state == "complete" and not summary.ok:  # stopped by the health monitor on its last record
            state, failure, reason = "failed", summary.failure, summary.stop_reason.code
        self._extra.pop(t.slot)
        outcome = Outcome(
            t.number,
            state,
            value=value if state != "failed" else None,
            reason=reason,
            failure=failure if state == "failed" else None,
            steps=t.step,
            seconds=summary.seconds,
            tokens=t.tokens,
            extra={"engine": self.name, "slot": t.slot},
        )
        remove_adapters(self.pack.wrapped, t.slot)  # zeroes its weights and gradients in the stacks
        self._slots[t.slot] = None
        return outcome

    def _write(self, t: TrialState, record: Any) -> Outcome | None:
        """Write a record through the trial's recorder (stream, health monitor, observers); if an
        observer stops the trial (NaN, collapse, divergence: the standard engine's rules and
        switches), the trial ends here as failed, and its Outcome is returned."""
        recorder: RunRecorder = self._extra[t.slot]["recorder"]
        recorder.record(record)
        stop = recorder.stop_event
        if stop is None or stop.code == "early_stopping":
            return None
        return self._finish(t, "failed", None, stop.code, FailureKind.HEALTH_STOP)

    def _stats(self, t: TrialState) -> dict:
        """The trial's data statistics as the standard engine writes them (records only when the
        data came from an injected function)."""
        if isinstance(self._data, PreparedData):
            return self._data.stats(t.config)
        return {"train": {"records": len(t.train_examples)}, "eval": {"records": len(t.eval_examples)}}

    def _trials(self) -> list[TrialState]:
        return [t for t in self._slots if t is not None]

    def _charge(self, trials: list[TrialState], seconds: float, training: bool = False) -> None:
        """Each trial's share of a stretch of the engine's time, split evenly over those still in it
        (`training`: the stretch was optimizer steps, which tokens/s is measured over)."""
        live = [t for t in trials if t is not None and t.slot in self._extra and self._slots[t.slot] is t]
        for t in live:
            state = self._extra[t.slot]["recorder"].state
            state.seconds += seconds / len(live)
            if training:
                state.train_seconds += seconds / len(live)

    @contextmanager
    def _timed(self, phase: str, trials: list[TrialState] | None = None) -> Iterator[None]:
        """Time a phase; with `trials`, their shares of it go to their recorders (train/eval seconds)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - start
            self.seconds[phase] += spent
            if trials:
                self._charge(trials, spent, training=phase == "train")

    def _seconds(self, t: TrialState) -> float:
        """Wall-clock seconds since the trial started (the stream's `seconds`)."""
        return round(self.clock() - self._extra[t.slot]["t0"], 3)


class Readback:
    """The losses and grad norms of one packed step's finished optimizer steps, copied to pinned host
    memory without blocking; `values()` waits for the copy (by then usually long done)."""

    def __init__(self, entries: list[tuple[TrialState, dict[str, Any]]], device: torch.device):
        self.entries = entries
        values = torch.stack(
            [torch.stack([log["loss"].float(), log["grad_norm"].detach().float()]) for _, log in entries]
        )
        self.event = None
        if device.type == "cuda":
            self.host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            self.host.copy_(values, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = values

    def values(self) -> list[list[float]]:
        if self.event is not None:
            self.event.synchronize()
        return self.host.tolist()


@dataclass(frozen=True)
class EvalScores:
    """One trial's eval: token-mean loss, and the teacher-forced task metrics (`Pack.eval_scores`)."""

    eval_loss: float
    token_accuracy: float
    greedy_match: float

    @classmethod
    def of(cls, sums: list[float]) -> EvalScores:
        loss, tokens, correct, exact, examples = sums
        return cls(loss / tokens, correct / tokens, exact / examples)

    @property
    def metrics(self) -> dict[str, float]:
        return {"token_accuracy": round(self.token_accuracy, 6), "greedy_match": round(self.greedy_match, 6)}


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _memory_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _load(config: Any) -> tuple[torch.nn.Module, int]:
    from tunepilot.models import load_model, load_tokenizer, resolve_device

    tokenizer = load_tokenizer(config.model)
    return load_model(config.model, resolve_device(config.train.device)), tokenizer.pad_token_id


class PreparedData:
    """Datasets through tunepilot.data, prepared once per distinct data settings and seed; keeps
    each one's statistics for the trial's summary.json (the standard engine's `data` block)."""

    def __init__(self, config: Any):
        from tunepilot.models import load_tokenizer

        self.tokenizer, self.cache = load_tokenizer(config.model), {}

    def _prepared(self, cfg: Any) -> tuple[list, list, dict]:
        from tunepilot.data import prepare_datasets

        key = (cfg.data.model_dump_json(), cfg.train.seed)
        if key not in self.cache:
            ds = prepare_datasets(cfg.data, self.tokenizer, cfg.train.seed)
            self.cache[key] = (list(ds.train), list(ds.eval or []), ds.stats)
        return self.cache[key]

    def __call__(self, cfg: Any) -> tuple[list, list]:
        train, evals, _ = self._prepared(cfg)
        return train, evals

    def stats(self, cfg: Any) -> dict:
        return self._prepared(cfg)[2]


def _prepared_data(config: Any) -> DataFn:
    return PreparedData(config)
