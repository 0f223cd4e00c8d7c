"""One transformers + PEFT training run, with the training loop in plain sight.

    run = TrainingRun(config, resume=True)
    run.setup()                  # tokenizer, data, plan, model + adapters, optimizer, resume
    for point in run.steps():    # train; yields at every evaluation
        ...
    summary = run.finish()       # best adapter restored, adapter saved, summary.json written

The run directory, the metrics stream, the observers (the health monitor among them), best-checkpoint
tracking and summary.json belong to the run recorder (`engines/recorder.py`), shared with the packed
engine; this file keeps the loop itself. Every optimizer step and evaluation becomes a record;
 a checkpoint is swapped in atomically at every save point, and
`resume=True` continues from it with the same data order and dropout randomness.
"""

from __future__ import annotations

import contextlib
import math
import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from tunepilot.config import RunConfig
from tunepilot.data import collate, prepare_datasets
from tunepilot.engines.checkpoint import (
    LoopState,
    find_checkpoint,
)
from tunepilot.engines.distributed import Distributed
from tunepilot.engines.observers import Observer
from tunepilot.engines.plan import Plan, epoch_at, plan_for, step_indices
from tunepilot.engines.recorder import ObjectiveSpec, RunRecorder, prepare_run_dir
from tunepilot.engines.summary import RunSummary
from tunepilot.errors import ExitCode, UserError
from tunepilot.io import atomic_write_dir
from tunepilot.models import (
    apply_method,
    count_parameters,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)
from tunepilot.optimizers import build_optimizer, build_plan_scheduler
from tunepilot.parallel import check_launchable, deepspeed_config
from tunepilot.stream import EvalPoint, Event, TrainStep


class TrainingRun:
    def __init__(
        self,
        config: RunConfig,
        run_dir: str | Path | None = None,
        *,
        resume: bool = False,
        observers: list[Observer] | None = None,
        eval_fractions: tuple[float, ...] | None = None,
        base_model=None,
        scheduler_factory: Callable[[torch.optim.Optimizer, Plan], object] | None = None,
        trial: int | None = None,
        params: dict | None = None,
    ):
        self.config = config
        self.run_dir = Path(run_dir or config.output.output_dir)
        self.resume = resume
        self.observers = observers or []
        self.trial, self.params = trial, params  # the study's trial number and params, in a sweep
        self._eval_fractions = eval_fractions  # sweeps: evaluate at these fractions of the plan
        self._base_model = base_model  # a loaded base model to reuse (sweeps); else loaded from config
        self._scheduler_factory = scheduler_factory  # e.g. lr-find's exponential ramp; default: the config's
        self.recorder: RunRecorder | None = None

    # ----------------------------------------------------------------- setup
    def setup(self) -> Plan:
        cfg = self.config
        check_launchable(cfg)  # DeepSpeed: installed and its JSON sound, before anything loads
        self.dist = Distributed.from_env(cfg.train.device, cfg.parallel)  # N processes: DDP, FSDP2 or ZeRO
        if self.dist.is_main:
            prepare_run_dir(self.run_dir, cfg, self.resume)
        self.dist.barrier()
        self.device = self.dist.device or resolve_device(cfg.train.device)
        self.tokenizer = load_tokenizer(cfg.model)
        self.data = prepare_datasets(cfg.data, self.tokenizer, seed=cfg.train.seed)
        self.plan = plan_for(cfg, self.data.train)
        torch.manual_seed(cfg.train.seed)  # adapter init
        base = self._base_model if self._base_model is not None else load_model(cfg.model, self.device)
        self.model = apply_method(base, cfg.method, cfg.model)
        if self.dist.strategy == "deepspeed":
            self.dist.start_zero(self._deepspeed_config())
        # what trains: DDP around the model, the model sharded, DeepSpeed's engine, or the model itself
        self.ddp, self.optimizer = self.dist.prepare(self.model, lambda params: build_optimizer(params, cfg.train))
        self.params_trained = [p for p in self.model.parameters() if p.requires_grad]  # after sharding
        self.scheduler = self._scheduler()
        self.objective = self._make_objective()
        total, _ = count_parameters(self.model)
        main = self.dist.is_main  # rank 0 writes the one stream; the others follow its stop decisions
        self.recorder = RunRecorder(
            cfg,
            self.run_dir if main else None,
            engine="standard",
            planned_steps=self.plan.total_steps,
            objective=self._objective_spec(),
            observers=self.observers if main else [],
            num_params=total,
            trial=self.trial,
            params=self.params,
            watch=main,
        )
        try:
            resumed_from = self._restore()
        except UserError:  # a damaged checkpoint, refused on every rank: end the process group first, as
            self.dist.close()  # a gloo group left to interpreter exit can abort a rank (exit -6, not 2)
            raise
        self.recorder.start(resumed_from=resumed_from)
        self._t0 = time.perf_counter() - self.state.seconds
        return self.plan

    @property
    def state(self) -> LoopState:
        return self.recorder.state

    @property
    def stop_event(self) -> Event | None:
        return self.recorder.stop_event

    def _scheduler(self):
        if self._scheduler_factory is not None:
            return self._scheduler_factory(self.optimizer, self.plan)
        return build_plan_scheduler(self.optimizer, self.config.train, self.plan)

    def _deepspeed_config(self) -> dict:
        """The user's DeepSpeed JSON with its "auto" values filled from this run's settings and plan."""
        cfg = self.config
        hidden = getattr(getattr(self.model, "config", None), "hidden_size", None)
        return deepspeed_config(
            cfg.parallel.deepspeed,
            cfg,
            world=self.dist.world,
            total_steps=self.plan.total_steps,
            warmup_steps=self.plan.warmup_steps,
            hidden_size=hidden if isinstance(hidden, int) else None,
            dtype=str(resolve_dtype(cfg.model.dtype, self.device)).removeprefix("torch."),
        )

    def _make_objective(self):
        """A task metric scored by generation when `evaluate.objective` is set; else eval loss decides."""
        if not self.config.evaluate.objective or self.data.eval is None:
            return None
        if self.dist.partitions_weights:
            raise UserError(
                "evaluate.objective: a task metric is scored by generation on rank 0, which a model "
                "sharded by FSDP or ZeRO-3 cannot do alone; use DDP or ZeRO-0/1/2, or eval loss as the objective"
            )
        from tunepilot.evaluate.objective import TaskObjective

        return TaskObjective(self.config.evaluate, self.config.data, seed=self.config.train.seed)

    def _objective_spec(self) -> ObjectiveSpec:
        if self.objective is None:
            return ObjectiveSpec()
        return ObjectiveSpec(self.objective.name, self.objective.direction)

    @property
    def objective_name(self) -> str:
        return self.objective.name if self.objective is not None else "eval_loss"

    def _restore(self) -> int:
        """Load the checkpoint when resuming; returns its step (0: a fresh start)."""
        checkpoint = find_checkpoint(self.run_dir / "checkpoint") if self.resume else None
        if checkpoint is None:
            return 0
        state = self.dist.load_checkpoint(checkpoint, self.model, self.optimizer, self.scheduler)
        self.recorder.state = state
        return state.step

    # ------------------------------------------------------------------ loop
    def steps(self) -> Iterator[EvalPoint]:
        eval_at = self._eval_steps()
        h = self.config.health
        if self.state.step == 0 and eval_at and h.enabled and h.baseline_eval:
            self.recorder.record_baseline(self.evaluate(0, task=False))  # the untrained model, judged against
            self._sync_stop()
        for step in range(self.state.step + 1, self.plan.total_steps + 1):
            self.recorder.record(self._train_step(step))
            self._sync_stop()
            evaluated = step in eval_at
            if evaluated and not self.recorder.stopped:
                point = self.evaluate(step)
                self.recorder.record(point)
                if self.recorder.track_eval(point, self.objective_value(point)):
                    self.dist.save_weights(self.run_dir / "best", self.model)
                self._sync_stop()
                yield point
            if self.recorder.stopped:
                break
            if evaluated or step % self.plan.save_steps == 0:
                self._checkpoint()

    def _sync_stop(self) -> None:
        """Rank 0's observers decide; every rank stops after the same step."""
        if self.dist.world > 1:
            event = self.dist.from_main(self.recorder.stop_event)
            if event is not None:
                self.recorder.request_stop(event)

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
        batches = [
            collate([self.data.train[i] for i in idx], self.tokenizer.pad_token_id)
            for idx in step_indices(plan, cfg.seed, step, self.dist.rank, self.dist.world)
        ]
        trained = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
        n_input = sum(int(b["attention_mask"].sum()) for b in batches)  # prompts too
        n_tokens, n_input = (int(n) for n in self.dist.sums(trained, n_input))  # one all-reduce for both
        self.model.train()
        loss_sum, world = 0.0, self.dist.world
        for i, batch in enumerate(batches):
            # DDP all-reduces (averages) on the last micro-batch only; x world turns its mean into the sum
            last = i == len(batches) - 1
            with contextlib.nullcontext() if last else self.dist.no_sync(self.ddp):
                summed = self._loss_sum(batch, self.ddp)
                self.dist.backward(summed * world / n_tokens, last)  # mean over all trained tokens of the step
            loss_sum += summed.item()
        loss_sum = self.dist.sum(loss_sum)
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf
        lr = self.scheduler.get_last_lr()[0]
        grad_norm = self.dist.step(self.optimizer, self.params_trained, max_norm)
        self.scheduler.step()
        self.state.step, self.state.tokens = step, self.state.tokens + n_tokens
        self.state.extra["input_tokens"] = self.state.extra.get("input_tokens", 0) + n_input
        self.state.seconds = time.perf_counter() - self._t0
        self.state.train_seconds += time.perf_counter() - started
        return TrainStep(
            step=step,
            loss=loss_sum / n_tokens,
            lr=lr,
            grad_norm=grad_norm,
            epoch=round(epoch_at(plan, step), 4),
            tokens=self.state.tokens,
            input_tokens=self.state.extra["input_tokens"],
            seconds=round(self.state.seconds, 3),
            memory_mb=self._peak_memory_mb(),
        )

    def _loss_sum(self, batch: dict[str, torch.Tensor], model=None) -> torch.Tensor:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        model = model if model is not None else self.model
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        return F.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum"
        )

    @torch.no_grad()
    def evaluate(self, step: int, task: bool = True) -> EvalPoint:
        self.model.eval()
        total, count, size = 0.0, 0, self.config.train.per_device_eval_batch_size
        rank, world = self.dist.rank, self.dist.world  # each rank its share of the batches, summed after
        starts = list(range(rank * size, len(self.data.eval), size * world))
        rounds = math.ceil(len(self.data.eval) / (size * world))
        for i in range(rounds if self.dist.partitions_weights else len(starts)):
            # FSDP and ZeRO-3 gather weights in every forward: every rank runs as many; a spare one counts nothing
            start, spare = (starts[i], False) if i < len(starts) else (0, True)
            batch = collate(self.data.eval[start : start + size], self.tokenizer.pad_token_id)
            summed = self._loss_sum(batch).item()
            if not spare:
                total += summed
                count += int((batch["labels"][:, 1:] != -100).sum())
        total, count = self.dist.sums(total, count)
        count = int(count)
        metrics = {}
        if self.objective is not None and task:  # the whole eval split at the last step, a fixed subset before
            metrics = self.dist.from_main(self._task_metrics(step) if self.dist.is_main else None)
        return EvalPoint(
            step=step,
            eval_loss=total / max(count, 1),
            metrics=metrics,
            epoch=round(epoch_at(self.plan, step), 4),
            seconds=round(time.perf_counter() - self._t0, 3),
        )

    def _task_metrics(self, step: int) -> dict[str, float]:
        scores = self.objective(self.model, self.tokenizer, full=step == self.plan.total_steps)
        return {**scores.metrics, self.objective.name: scores.value}

    def objective_value(self, point: EvalPoint) -> float:
        return point.eval_loss if self.objective is None else point.metrics[self.objective.name]

    def request_stop(self, event: Event) -> None:
        """Stop after the current step; the reason goes to the stream and summary."""
        self.recorder.request_stop(event)

    def _checkpoint(self) -> None:
        self.dist.save_checkpoint(self.run_dir / "checkpoint", self.model, self.optimizer, self.scheduler, self.state)

    def _peak_memory_mb(self) -> float:
        if self.device.type == "cuda":
            return round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB

    # ---------------------------------------------------------------- finish
    def finish(self, status: str | None = None, reason: str | None = None) -> RunSummary:
        """Restore the best weights (if asked), save the adapter or model, write summary.json.
        `status`: "pruned" when a sweep ends the run early (its adapter is still saved)."""
        self.dist.barrier()
        best = self.run_dir / "best"
        restored = self.config.train.load_best_model_at_end and (best / "trainable.safetensors").exists()
        restored = restored and not self.recorder.harmed  # a "best" worse than the untrained model is no best
        if restored:
            self.dist.load_weights(best, self.model)
        state = self.dist.adapter_state(self.model)  # sharded weights gathered on rank 0 (a collective)
        adapter = self._save_final(state) if self.dist.is_main else None
        total, trainable = count_parameters(self.model)
        self.dist.close()
        return self.recorder.finish(
            status=status,
            reason=reason,
            adapter=adapter,
            restored_best=restored,
            peak_memory_mb=self._peak_memory_mb(),
            device=str(self.device),
            processes=self.dist.world,
            parameters={"total": total, "trainable": trainable},
            plan=self.plan.as_dict(),
            data=self.data.stats,
        )

    def close(self) -> None:
        """Close the metrics stream without saving an adapter or summary (a run used as a probe)."""
        if self.recorder is not None:
            self.recorder.close()
            self.dist.close()

    def _save_final(self, state: dict | None = None) -> Path:
        """The adapter in PEFT format (model/ for full fine-tuning); `state`: gathered sharded weights."""
        save = {"state_dict": state} if state is not None else {}
        if self.config.method.finetuning_type == "full":
            target = self.run_dir / "model"
            atomic_write_dir(
                target, lambda tmp: (self.model.save_pretrained(tmp, **save), self.tokenizer.save_pretrained(tmp))
            )
        else:
            target = self.run_dir / "adapter"
            atomic_write_dir(target, lambda tmp: self.model.save_pretrained(tmp, **save))
        return target


def train(
    config: RunConfig,
    *,
    resume: bool = False,
    observers: list[Observer] | None = None,
    run_dir: str | Path | None = None,
) -> RunSummary:
    """Run one training job to the end; returns the summary (also in summary.json)."""
    run = TrainingRun(config, run_dir, resume=resume, observers=observers)
    run.setup()
    for _ in run.steps():
        pass
    return run.finish()


def exit_code_for(summary: RunSummary) -> ExitCode:
    return ExitCode.OK if summary.ok else ExitCode.FINDINGS
