"""One transformers + PEFT training run, with the training loop in plain sight.

    run = TrainingRun(config, resume=True)
    run.setup()                  # tokenizer, data, plan, model + adapters, optimizer, resume
    for point in run.steps():    # train; yields at every evaluation
        ...
    summary = run.finish()       # best adapter restored, adapter saved, summary.json written

Every optimizer step and evaluation becomes a record in `metrics.jsonl`; the health monitor sees each
record and can stop the run; a checkpoint is swapped in atomically at every save point, and
`resume=True` continues from it with the same data order and dropout randomness.
"""

from __future__ import annotations

import math
import resource
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from tunepilot.config import RunConfig, dump_config
from tunepilot.data import collate, prepare_datasets
from tunepilot.engines.checkpoint import (
    LoopState,
    find_checkpoint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    save_weights,
)
from tunepilot.engines.plan import Plan, epoch_at, make_plan, step_indices
from tunepilot.errors import ExitCode, UserError
from tunepilot.io import atomic_write_dir, atomic_write_json, atomic_write_text
from tunepilot.models import apply_method, count_parameters, load_model, load_tokenizer, resolve_device
from tunepilot.stream import EvalPoint, Event, MetricsWriter, Record, TrainStep, stop_record

Callback = Callable[[Record], None]


class TrainingRun:
    def __init__(self, config: RunConfig, run_dir: str | Path | None = None, *, resume: bool = False,
                 callbacks: list[Callback] | None = None,
                 eval_fractions: tuple[float, ...] | None = None, base_model=None,
                 scheduler_factory: Callable[[torch.optim.Optimizer, Plan], object] | None = None):
        self.config = config
        self.run_dir = Path(run_dir or config.output.output_dir)
        self.resume = resume
        self.callbacks = callbacks or []
        self._eval_fractions = eval_fractions  # sweeps: evaluate at these fractions of the plan
        self._base_model = base_model  # a loaded base model to reuse (sweeps); else loaded from config
        self._scheduler_factory = scheduler_factory  # e.g. lr-find's exponential ramp; default: the config's
        self.state = LoopState()
        self.stop_event: Event | None = None
        self.monitor = None

    # ----------------------------------------------------------------- setup
    def setup(self) -> Plan:
        cfg = self.config
        self._prepare_run_dir()
        self.device = resolve_device(cfg.train.device)
        self.tokenizer = load_tokenizer(cfg.model)
        self.data = prepare_datasets(cfg.data, self.tokenizer, seed=cfg.train.seed)
        self.plan = make_plan(cfg.train, len(self.data.train))
        torch.manual_seed(cfg.train.seed)  # adapter init
        base = self._base_model if self._base_model is not None else load_model(cfg.model, self.device)
        self.model = apply_method(base, cfg.method, cfg.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = self._optimizer_and_scheduler()
        self.writer = MetricsWriter(self.run_dir / "metrics.jsonl")
        self.monitor = self._make_monitor()
        self.objective = self._make_objective()
        self._restore_or_start()
        atomic_write_text(self.run_dir / "config.yaml", dump_config(cfg))
        self._t0 = time.perf_counter() - self.state.seconds
        return self.plan

    def _prepare_run_dir(self) -> None:
        has_run = (self.run_dir / "metrics.jsonl").exists()
        if has_run and not self.resume and not self.config.output.overwrite_output_dir:
            raise UserError(f"{self.run_dir}: holds a previous run; add --resume to continue it, or set "
                            "overwrite_output_dir: true (or another output_dir) to start afresh")
        if has_run and not self.resume:
            for name in ("metrics.jsonl", "summary.json", "checkpoint", "best", "adapter", "model"):
                target = self.run_dir / name
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def _optimizer_and_scheduler(self):
        from transformers import get_scheduler

        t = self.config.train
        decay = [p for p in self.params if p.ndim >= 2]
        no_decay = [p for p in self.params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=t.learning_rate,
                                      betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon)
        if self._scheduler_factory is not None:
            return optimizer, self._scheduler_factory(optimizer, self.plan)
        name = "constant_with_warmup" if t.lr_scheduler_type.startswith("constant") else t.lr_scheduler_type
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=self.plan.warmup_steps,
                                  num_training_steps=self.plan.total_steps)
        return optimizer, scheduler

    def _make_monitor(self):
        if not self.config.health.enabled:
            return None
        from tunepilot.health.monitor import LiveMonitor

        total, _ = count_parameters(self.model)
        return LiveMonitor(self.config.health, method=self.config.method.finetuning_type,
                           num_params=total, planned_steps=self.plan.total_steps,
                           learning_rate=self.config.train.learning_rate)

    def _make_objective(self):
        """A task metric scored by generation when `evaluate.objective` is set; else eval loss decides."""
        if not self.config.evaluate.objective or self.data.eval is None:
            return None
        from tunepilot.evaluate.objective import TaskObjective

        return TaskObjective(self.config.evaluate, self.config.data, seed=self.config.train.seed)

    @property
    def objective_name(self) -> str:
        return self.objective.name if self.objective is not None else "eval_loss"

    def _restore_or_start(self) -> None:
        checkpoint = find_checkpoint(self.run_dir / "checkpoint") if self.resume else None
        if checkpoint is None:
            self.writer.truncate_after(0)
            return
        self.state = load_checkpoint(checkpoint, self.model, self.optimizer, self.scheduler)
        self.writer.truncate_after(self.state.step)  # steps after the checkpoint are redone, not duplicated
        self._emit(Event(step=self.state.step, code="resumed", message=f"resumed from step {self.state.step}"))

    # ------------------------------------------------------------------ loop
    def steps(self) -> Iterator[EvalPoint]:
        eval_at = self._eval_steps()
        for step in range(self.state.step + 1, self.plan.total_steps + 1):
            self._emit(self._train_step(step))
            evaluated = step in eval_at
            if evaluated and self.stop_event is None:
                point = self.evaluate(step)
                self._emit(point)
                self._track_best(point)
                yield point
            if self.stop_event is not None:
                break
            if evaluated or step % self.plan.save_steps == 0:
                self._checkpoint()

    def _eval_steps(self) -> set[int]:
        if self.data.eval is None:
            return set()
        if self._eval_fractions is not None:
            return {max(1, round(f * self.plan.total_steps)) for f in self._eval_fractions}
        every = self.plan.eval_steps
        return set(range(every, self.plan.total_steps + 1, every)) | {self.plan.total_steps}

    def _train_step(self, step: int) -> TrainStep:
        cfg, plan = self.config.train, self.plan
        started = time.perf_counter()
        torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout noise depends on the step alone: resumable
        batches = [collate([self.data.train[i] for i in idx], self.tokenizer.pad_token_id)
                   for idx in step_indices(plan, cfg.seed, step)]
        n_tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
        self.model.train()
        loss_sum = 0.0
        for batch in batches:
            summed = self._loss_sum(batch)
            (summed / n_tokens).backward()  # mean over all trained tokens of the step
            loss_sum += summed.item()
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step, self.state.tokens = step, self.state.tokens + n_tokens
        self.state.seconds = time.perf_counter() - self._t0
        self.state.train_seconds += time.perf_counter() - started
        return TrainStep(step=step, loss=loss_sum / n_tokens, lr=lr, grad_norm=grad_norm,
                         epoch=round(epoch_at(plan, step), 4), tokens=self.state.tokens,
                         seconds=round(self.state.seconds, 3), memory_mb=self._peak_memory_mb())

    def _loss_sum(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(),
                               ignore_index=-100, reduction="sum")

    @torch.no_grad()
    def evaluate(self, step: int) -> EvalPoint:
        self.model.eval()
        total, count, size = 0.0, 0, self.config.train.per_device_eval_batch_size
        for start in range(0, len(self.data.eval), size):
            batch = collate(self.data.eval[start:start + size], self.tokenizer.pad_token_id)
            total += self._loss_sum(batch).item()
            count += int((batch["labels"][:, 1:] != -100).sum())
        metrics = {}
        if self.objective is not None:  # the whole eval split at the last step, a fixed subset before
            scores = self.objective(self.model, self.tokenizer, full=step == self.plan.total_steps)
            metrics = {**scores.metrics, self.objective.name: scores.value}
        return EvalPoint(step=step, eval_loss=total / max(count, 1), metrics=metrics,
                         epoch=round(epoch_at(self.plan, step), 4), seconds=round(time.perf_counter() - self._t0, 3))

    def objective_value(self, point: EvalPoint) -> float:
        return point.eval_loss if self.objective is None else point.metrics[self.objective.name]

    def _track_best(self, point: EvalPoint) -> None:
        s, t = self.state, self.config.train
        s.best_eval_loss = min(point.eval_loss, s.best_eval_loss or math.inf)
        value = self.objective_value(point)
        maximize = self.objective is not None and self.objective.direction == "maximize"
        gain = math.inf if s.best_eval is None else (value - s.best_eval if maximize else s.best_eval - value)
        if gain > t.early_stopping_threshold:
            s.best_eval, s.best_step, s.evals_without_gain = value, point.step, 0
            save_weights(self.run_dir / "best", self.model)
            return
        s.evals_without_gain += 1
        if t.early_stopping_patience and s.evals_without_gain >= t.early_stopping_patience:
            message = (f"{self.objective_name} has not improved by more than {t.early_stopping_threshold} "
                       f"for {s.evals_without_gain} evaluations (best {s.best_eval:.4f} at step {s.best_step})")
            self._stop(Event(step=point.step, code="early_stopping", severity="info", message=message))

    def _emit(self, record: Record) -> None:
        self.writer.write(record)
        for callback in self.callbacks:
            callback(record)
        if self.monitor is None or isinstance(record, Event):
            return
        for event in self.monitor.observe(record):
            self._emit(event)
        if self.monitor.stop_event is not None and self.stop_event is None:
            self._stop(self.monitor.stop_event)

    def request_stop(self, event: Event) -> None:
        """Stop after the current step (callbacks use this); the reason goes to the stream and summary."""
        if self.stop_event is None:
            self._stop(event)

    def _stop(self, event: Event) -> None:
        self.stop_event = event
        self._emit(stop_record(event))

    def _checkpoint(self) -> None:
        save_checkpoint(self.run_dir / "checkpoint", self.model, self.optimizer, self.scheduler, self.state)

    def _peak_memory_mb(self) -> float:
        if self.device.type == "cuda":
            return round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB

    # ---------------------------------------------------------------- finish
    def finish(self) -> dict:
        """Restore the best weights (if asked), save the adapter or model, write summary.json."""
        best = self.run_dir / "best"
        restored = self.config.train.load_best_model_at_end and (best / "trainable.safetensors").exists()
        if restored:
            load_weights(best, self.model)
        self._save_final()
        summary = self._summary(restored)
        atomic_write_json(self.run_dir / "summary.json", summary)
        self.writer.close()
        return summary

    def close(self) -> None:
        """Close the metrics stream without saving an adapter or summary (a run used as a probe)."""
        self.writer.close()

    def _save_final(self) -> None:
        if self.config.method.finetuning_type == "full":
            atomic_write_dir(self.run_dir / "model", lambda tmp: (self.model.save_pretrained(tmp),
                                                                   self.tokenizer.save_pretrained(tmp)))
        else:
            atomic_write_dir(self.run_dir / "adapter", lambda tmp: self.model.save_pretrained(tmp))

    def _summary(self, restored_best: bool) -> dict:
        s, stop = self.state, self.stop_event
        status = "completed" if stop is None else ("early_stopped" if stop.code == "early_stopping" else "stopped")
        total, trainable = count_parameters(self.model)
        return {
            "status": status, "ok": status != "stopped",
            "stop_reason": None if stop is None else {"code": stop.code, "message": stop.message, "step": stop.step},
            "steps": s.step, "planned_steps": self.plan.total_steps, "tokens": s.tokens,
            "seconds": round(s.seconds, 3), "train_seconds": round(s.train_seconds, 3),
            "tokens_per_second": round(s.tokens / max(s.train_seconds, 1e-9), 1),  # optimizer steps only
            "objective": {"name": self.objective_name, "best": s.best_eval, "step": s.best_step},
            "best_eval_loss": s.best_eval_loss, "best_step": s.best_step, "restored_best": restored_best,
            "peak_memory_mb": self._peak_memory_mb(), "device": str(self.device),
            "parameters": {"total": total, "trainable": trainable}, "plan": self.plan.as_dict(),
            "data": self.data.stats, "run_dir": str(self.run_dir),
            "adapter": str(self.run_dir / ("model" if self.config.method.finetuning_type == "full" else "adapter")),
        }


def train(config: RunConfig, *, resume: bool = False, callbacks: list[Callback] | None = None,
          run_dir: str | Path | None = None) -> dict:
    """Run one training job to the end; returns the summary (also in summary.json)."""
    run = TrainingRun(config, run_dir, resume=resume, callbacks=callbacks)
    run.setup()
    for _ in run.steps():
        pass
    return run.finish()


def exit_code_for(summary: dict) -> ExitCode:
    return ExitCode.OK if summary["ok"] else ExitCode.FINDINGS
