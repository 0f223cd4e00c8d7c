"""The concurrent-process baseline: K transformers Trainer + PEFT processes started together on one GPU.

    python bench/concurrent_trainer.py throughput --archs qwen2.5-0.5b --ks 1 2 4 6 8 --out conc.json
    python bench/concurrent_trainer.py makespan --archs qwen2.5-0.5b --workers 4 --trials 16 --out sweep.json

What a Ray Tune user with fractional GPUs (or several Optuna workers on one card) runs instead of a packed
engine: separate OS processes, each with its own CUDA context, copy of the base model, allocator and
kernel stream, sharing the GPU by time-slicing. No memory cap is set per process (Ray's fractional GPUs
set none either); PYTORCH_CUDA_ALLOC_CONF defaults to expandable_segments:True in the workers (less
fragmentation when processes compete for memory), and OMP_NUM_THREADS to the CPU cores / K (1 on CPU).

`throughput`: for each K (stopping at the first K where a process fails, e.g. out of memory), K worker
processes each train one trial with the settings of bench/packed_throughput.py's one-process baseline
(its `build_model`, `random_examples`, `trainer_args`: LoRA r=16, alpha 32, all linear layers,
micro-batch 4, sequence 1,024, bf16, random weights of the published shape). Each worker builds its
model and Trainer, then waits at a barrier so that all K start training together; a TrainerCallback
stamps the wall time (time.time(), after a device sync) at every step's end. Aggregate tokens/s is
counted over the window where all K are past their warm-up steps and none has finished: from the
latest end of warm-up to the earliest last step, each process's trained tokens interpolated linearly
within a step. MFU uses packed_throughput's FLOPs per token and datasheet peak. Memory: each worker's
torch.cuda.max_memory_allocated / max_memory_reserved (its CUDA context, ~0.5 GiB a process, is in
neither) and the device's used memory polled with nvidia-smi while they run (contexts included).

`makespan`: bench/packed_sweep.py's baseline search (its `sample` space, seed 0, steps, evals at half
and end on the same 32 eval sequences, the model reloaded for every trial) spread over P worker
processes that pull trials from one Optuna study in a journal file. Worker w samples with
TPESampler(seed=w, constant_liar=True): one seed for all would propose the same start-up draws in
every worker, and the constant liar is Optuna's setting for parallel TPE; worker 0's first trial is
the sequential baseline's first. A file lock around "count trials, ask" keeps the study at exactly
`--trials` trials. Makespan: the first worker's start to the last trial told (the workers' imports and
CUDA start-up are inside it: they are what this way of running costs).

`--smoke` runs both modes on CPU with the tiny shapes of those scripts (checks this script). Over the
~400-line habit: the parent and both kinds of worker are one file, since the workers are this script.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from packed_sweep import RANKS, load, sample  # noqa: E402
from packed_throughput import (  # noqa: E402
    ALPHA,
    PEAK_BF16,
    RANK,
    build_model,
    environment,
    flops_per_token,
    lora_param_count,
    random_examples,
    trainer_args,
)

STUDY = "concurrent"


# ---- worker processes -------------------------------------------------------------------------------


def _device(args) -> tuple[torch.device, torch.dtype]:
    device = torch.device(args.device)
    return device, torch.bfloat16 if device.type == "cuda" else torch.float32


def _lora(model, rank: int, alpha: int):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def _trainer_args(args, device, dtype, output_dir: Path, **specific):
    """The Trainer settings both baselines in packed_throughput / packed_sweep share, plus `specific`."""
    return trainer_args(
        output_dir=str(output_dir),
        per_device_train_batch_size=args.micro,
        lr_scheduler_type="cosine",
        bf16=dtype == torch.bfloat16,
        logging_steps=10**6,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=device.type == "cpu",
        **specific,
    )


def _barrier(run_dir: Path, index: int, timeout_s: float = 600) -> None:
    """Tell the parent this worker is ready, and wait until it says go (all K ready)."""
    (run_dir / f"ready-{index}").touch()
    deadline = time.time() + timeout_s
    while not (run_dir / "go").exists():
        if time.time() > deadline:
            raise SystemExit("no go from the parent")
        time.sleep(0.002)


def _peaks(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"peak_allocated_gib": None, "peak_reserved_gib": None}
    return {
        "peak_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
        "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30,
    }


def throughput_worker(args) -> None:
    """One trial, as packed_throughput's run_baseline trains it, with a wall stamp at every step's end."""
    from transformers import Trainer, TrainerCallback

    device, dtype = _device(args)
    run_dir = Path(args.run_dir)
    model = _lora(build_model(args.arch, device, dtype, seed=args.index), RANK, ALPHA)
    n = args.micro * (args.warmup + args.timed_steps)
    data = [
        {k: torch.tensor(v) for k, v in e.items()}
        for e in random_examples(n, args.seq, model.config.vocab_size, args.index)
    ]
    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            ends.append(time.time())

    targs = _trainer_args(
        args,
        device,
        dtype,
        run_dir / f"trainer-{args.index}",
        max_steps=args.warmup + args.timed_steps,
        learning_rate=1e-4,
        warmup_steps=1,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=data, callbacks=[Clock()])
    _barrier(run_dir, args.index)
    started = time.time()
    trainer.train()
    per_step = args.micro * (args.seq - 1)  # trained (shifted) tokens, as packed_throughput counts them
    record = {"index": args.index, "started": started, "step_ends": ends, "tokens_per_step": per_step}
    (run_dir / f"worker-{args.index}.json").write_text(json.dumps({**record, **_peaks(device)}))


def _train_trial(p: dict, model_dir: Path, data, args, device, dtype, output_dir: Path) -> float:
    """One trial as packed_sweep's baseline_sweep trains it: the best of its two eval losses."""
    from transformers import Trainer

    model = _lora(load(model_dir, device, dtype), p["lora_rank"], p["lora_alpha"])
    targs = _trainer_args(
        args,
        device,
        dtype,
        output_dir,
        per_device_eval_batch_size=8,
        max_steps=args.steps,
        learning_rate=p["learning_rate"],
        warmup_steps=p["warmup_steps"],
        eval_strategy="steps",
        eval_steps=max(1, args.steps // 2),
    )
    trainer = Trainer(model=model, args=targs, train_dataset=data[0], eval_dataset=data[1])
    trainer.train()
    losses = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    del trainer, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return min(losses)


def _storage(root: Path):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(root / "journal.log")))


def _ask(study, root: Path, n_trials: int):
    """The study's next trial, or None once it holds n_trials (counting and asking under one file lock)."""
    with open(root / "ask.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return study.ask() if len(study.get_trials(deepcopy=False)) < n_trials else None


def sweep_worker(args) -> None:
    """Pull trials from the shared study until it holds --trials; a failed trial is told as failed,
    recorded, and ends this worker with its error (the others go on)."""
    import optuna

    device, dtype = _device(args)
    root = Path(args.run_dir)
    RANKS[:] = args.ranks
    data = [
        [{k: torch.tensor(v) for k, v in e.items()} for e in part]
        for part in json.loads((root / "data.json").read_text())
    ]
    sampler = optuna.samplers.TPESampler(seed=args.index, constant_liar=True)
    study = optuna.load_study(study_name=STUDY, storage=_storage(root), sampler=sampler)
    record = {"index": args.index, "started": time.time(), "trials": []}
    out = root / f"sweep-worker-{args.index}.json"
    while (trial := _ask(study, root, args.trials)) is not None:
        p = sample(trial)
        row = {"number": trial.number, "params": {k: p[k] for k in ("learning_rate", "lora_rank", "warmup_steps")}}
        try:
            value = _train_trial(p, root / "model", data, args, device, dtype, root / f"trainer-{args.index}")
        except Exception as e:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            record["trials"].append({**row, "value": None, "error": f"{type(e).__name__}: {str(e)[:300]}"})
            out.write_text(json.dumps(record))
            raise
        study.tell(trial, value)
        record["trials"].append({**row, "value": value, "told_at": time.time()})
        out.write_text(json.dumps(record))
    out.write_text(json.dumps(record))


# ---- the parent: start, watch, measure ----------------------------------------------------------------


def _worker_env(k: int, device: str) -> dict:
    """On CPU (the smoke run) one thread a process: OpenMP threads that share busy cores spin-wait, and a
    step slows down a hundredfold."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    threads = max(1, (os.cpu_count() or 1) // k) if device == "cuda" else 1
    env.setdefault("OMP_NUM_THREADS", str(threads))
    return env


def _gpu_used_gib() -> float | None:
    """The device's used memory (all processes, contexts included) from nvidia-smi; None without it."""
    index = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"
    query = ["nvidia-smi", "-i", index, "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout.strip()
        return float(out.splitlines()[0]) / 1024
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def _state(rc: int | None, log: str) -> str:
    if rc is None:
        return "timeout"
    if rc == 0:
        return "complete"
    return "oom" if "OutOfMemoryError" in log or "out of memory" in log else "failed"


def run_workers(worker_args: list[list[str]], run_dir: Path, args, barrier: bool) -> tuple[list[dict], float | None]:
    """Start one process per argument list together; with `barrier`, say go once all are ready (or one
    has died). Returns each process's state (the log's tail where it did not complete) and the device's
    peak used memory seen while they ran."""
    env, procs, logs = _worker_env(len(worker_args), args.device), [], []
    for i, extra in enumerate(worker_args):
        logs.append(run_dir / f"worker-{i}.log")
        with open(logs[-1], "w") as log:
            cmd = [sys.executable, str(Path(__file__).resolve()), *extra]
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
    deadline, gpu_peak, next_poll = time.time() + args.timeout, None, 0.0
    while any(p.poll() is None for p in procs) and time.time() < deadline:
        ready = all((run_dir / f"ready-{i}").exists() for i in range(len(procs)))
        if barrier and (ready or any(p.poll() is not None for p in procs)):
            (run_dir / "go").touch()
        if args.device == "cuda" and time.time() >= next_poll:
            used, next_poll = _gpu_used_gib(), time.time() + 0.5
            gpu_peak = max(gpu_peak or 0.0, used) if used is not None else gpu_peak
        time.sleep(0.005)
    states = []
    for i, p in enumerate(procs):
        if p.poll() is None:  # past --timeout: ended here (only the processes this function started)
            p.kill()
            p.wait()
            rc = None
        else:
            rc = p.returncode
        log = logs[i].read_text(errors="replace")
        state = _state(rc, log)
        states.append(
            {"index": i, "state": state, "rc": rc} | ({"log_tail": log[-3000:]} if state != "complete" else {})
        )
    return states, gpu_peak


def _tokens_by(t: float, points: list[float], per_step: int) -> float:
    """Tokens a process trained from points[0] (its end of warm-up) to time t, linear within a step."""
    if t <= points[0]:
        return 0.0
    for j in range(1, len(points)):
        if t <= points[j]:
            return (j - 1 + (t - points[j - 1]) / (points[j] - points[j - 1])) * per_step
    return (len(points) - 1) * per_step


def overlap(records: list[dict], warmup: int) -> dict:
    """Aggregate tokens over the window where every process is past warm-up and none has finished."""
    timed = [r["step_ends"][warmup - 1 :] for r in records]
    start, end = max(t[0] for t in timed), min(t[-1] for t in timed)
    window = max(0.0, end - start)
    tokens = sum(
        _tokens_by(end, t, r["tokens_per_step"]) - _tokens_by(start, t, r["tokens_per_step"])
        for t, r in zip(timed, records, strict=True)
    )
    own = [(len(t) - 1) * r["tokens_per_step"] / (t[-1] - t[0]) for t, r in zip(timed, records, strict=True)]
    return {
        "window_s": window,
        "window_tokens": tokens if window > 0 else 0.0,
        "tokens_per_s": tokens / window if window > 0 else None,
        "per_process_tokens_per_s": own,  # each over its own timed steps, partly alone
    }


def throughput_point(arch: str, k: int, args, fpt: float) -> dict:
    run_dir = Path(args.workdir) / f"throughput-{arch}-k{k}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    common = ["_worker", "--arch", arch, "--device", args.device, "--run-dir", str(run_dir)]
    common += ["--micro", str(args.micro), "--seq", str(args.seq)]
    common += ["--warmup", str(args.warmup), "--timed-steps", str(args.timed_steps)]
    states, gpu_peak = run_workers([[*common, "--index", str(i)] for i in range(k)], run_dir, args, barrier=True)
    result = {"arch": arch, "k": k, "processes": states, "device_peak_used_gib": gpu_peak}
    if any(s["state"] != "complete" for s in states):
        return {**result, "state": "failed"}
    records = [json.loads((run_dir / f"worker-{i}.json").read_text()) for i in range(k)]
    result.update(overlap(records, args.warmup))
    tps = result["tokens_per_s"]
    alloc = [r["peak_allocated_gib"] for r in records]
    reserved = [r["peak_reserved_gib"] for r in records]
    return {
        **result,
        "state": "complete",
        "mfu": tps * fpt / PEAK_BF16 if tps else None,
        "peak_allocated_gib": alloc,
        "peak_reserved_gib": reserved,
        "sum_allocated_gib": sum(alloc) if None not in alloc else None,
        "sum_reserved_gib": sum(reserved) if None not in reserved else None,
    }


def _print_failures(states: list[dict]) -> None:
    for s in states:
        if s["state"] != "complete":
            print(
                f"  process {s['index']}: {s['state']} (rc {s['rc']}), its output's end:\n{s['log_tail']}", flush=True
            )


def throughput(arch: str, args) -> list[dict]:
    meta = build_model(arch, torch.device("meta"), torch.bfloat16)  # the shape only, for FLOPs per token
    fpt = flops_per_token(meta, args.seq, lora_param_count(meta))
    points = []
    for k in args.ks:
        points.append(throughput_point(arch, k, args, fpt))
        print(f"{arch} K={k}: {json.dumps({x: y for x, y in points[-1].items() if x != 'processes'})}", flush=True)
        if points[-1]["state"] != "complete":
            _print_failures(points[-1]["processes"])
            break  # larger K would fail as well
    return points


def makespan(arch: str, args) -> dict:
    """The 16-trial search over --workers processes on one journal-file study."""
    import optuna

    root = Path(args.workdir) / f"makespan-{arch}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    build_model(arch, torch.device("cpu"), dtype).save_pretrained(root / "model")  # every trial loads this
    vocab = json.loads((root / "model" / "config.json").read_text())["vocab_size"]
    n_train = math.ceil(args.steps * args.micro)  # packed_sweep's data: train seed 1, eval seed 2, ids from 2
    data = (random_examples(n_train, args.seq, vocab, 1, low=2), random_examples(32, args.seq, vocab, 2, low=2))
    (root / "data.json").write_text(json.dumps(data))
    optuna.create_study(study_name=STUDY, storage=_storage(root), direction="minimize")
    common = ["_sweep_worker", "--device", args.device, "--run-dir", str(root), "--trials", str(args.trials)]
    common += ["--steps", str(args.steps), "--micro", str(args.micro), "--seq", str(args.seq)]
    common += ["--ranks", *map(str, RANKS)]
    t0 = time.time()  # before the first process starts (and loads the model)
    workers = [[*common, "--index", str(i)] for i in range(args.workers)]
    states, gpu_peak = run_workers(workers, root, args, barrier=False)
    wall = time.time() - t0
    records = [json.loads(f.read_text()) for f in sorted(root.glob("sweep-worker-*.json"))]
    rows = sorted(({**t, "worker": r["index"]} for r in records for t in r["trials"]), key=lambda t: t["number"])
    done = [t for t in rows if t["value"] is not None]
    return {
        "engine": f"optuna+trainer+peft x {args.workers} processes",
        "arch": arch,
        "workers": args.workers,
        "trials": len(rows),
        "complete": len(done),
        "steps": args.steps,
        "seconds": max(t["told_at"] for t in done) - t0 if done else None,
        "wall_s": wall,
        "best": min((t["value"] for t in done), default=None),
        "device_peak_used_gib": gpu_peak,
        "processes": states,
        "values": rows,
    }


def _f(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def table(points: list[dict], sweeps: list[dict]) -> str:
    lines = [
        "| arch | K processes | state | tokens/s | vs K=1 | MFU | window s | peak alloc GiB (max) | reserved GiB (sum) "
        "|",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    one = {p["arch"]: p["tokens_per_s"] for p in points if p["k"] == 1 and p.get("tokens_per_s")}
    for p in points:
        tps, base = p.get("tokens_per_s"), one.get(p["arch"])
        ratio = f"{tps / base:.2f}x" if tps and base else "-"
        alloc = max(p["peak_allocated_gib"], default=None) if None not in p.get("peak_allocated_gib", [None]) else None
        lines.append(
            f"| {p['arch']} | {p['k']} | {p['state']} | {_f(tps, ',.0f')} | {ratio} | "
            f"{_f(p.get('mfu') and 100 * p['mfu'], '.1f')}% | {_f(p.get('window_s'), '.2f')} | "
            f"{_f(alloc, '.1f')} | {_f(p.get('sum_reserved_gib'), '.1f')} |"
        )
    lines += ["", "| arch | sweep | trials complete | steps/trial | makespan s | best |", "|---|---|---|---|---|---|"]
    for s in sweeps:
        lines.append(
            f"| {s['arch']} | {s['engine']} | {s['complete']}/{s['trials']} | {s['steps']} | "
            f"{_f(s['seconds'], '.1f')} | {_f(s['best'], '.4f')} |"
        )
    return "\n".join(lines)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "mode", nargs="?", default="both", choices=["throughput", "makespan", "both", "_worker", "_sweep_worker"]
    )
    p.add_argument("--archs", nargs="+", default=["qwen2.5-0.5b", "llama-3.2-1b"])
    p.add_argument("--ks", nargs="+", type=int, default=[1, 2, 4, 6, 8], help="processes per throughput point")
    p.add_argument("--workers", type=int, default=4, help="concurrent processes of the makespan sweep")
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--steps", type=int, default=20, help="training steps of each sweep trial")
    p.add_argument("--micro", type=int, default=4)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps of each throughput process")
    p.add_argument("--timed-steps", type=int, default=30, help="timed steps of each throughput process")
    p.add_argument("--timeout", type=float, default=1800, help="seconds one point's processes may run")
    p.add_argument("--workdir", default="/tmp/concurrent-bench")
    p.add_argument("--out", default=None, help="write results JSON here")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (checks the script)")
    # set by the parent for its worker processes
    p.add_argument("--arch", help=argparse.SUPPRESS)
    p.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    p.add_argument("--device", default=None, help=argparse.SUPPRESS)
    p.add_argument("--ranks", nargs="+", type=int, default=list(RANKS), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main() -> None:
    args = parse()
    if args.mode in ("_worker", "_sweep_worker"):
        return (throughput_worker if args.mode == "_worker" else sweep_worker)(args)
    if args.smoke:  # packed_throughput's and packed_sweep's tiny shapes, on CPU
        args.ks, args.seq, args.micro = [1, 2], 32, 2  # the default 3 + 30 steps: a K=2 window of ~0.3 s
        args.workers, args.trials, args.steps, args.timeout = 2, 4, 2, 120
        RANKS[:] = [4, 8, 16]  # the tiny shape's k/v projections are 32 -> 16 (as packed_sweep's smoke)
    args.device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    points, sweeps = [], []
    for arch in ["tiny"] if args.smoke else args.archs:
        points += throughput(arch, args) if args.mode in ("throughput", "both") else []
    for arch in ["tiny-qwen2"] if args.smoke else args.archs:
        if args.mode in ("makespan", "both"):
            sweeps.append(makespan(arch, args))
            _print_failures(sweeps[-1]["processes"])
            print(json.dumps({x: y for x, y in sweeps[-1].items() if x != "processes"}), flush=True)
    env = environment()  # after the runs: its device query opens a CUDA context in this process
    print(json.dumps(env))
    print(table(points, sweeps))
    if args.out:
        Path(args.out).write_text(json.dumps({"environment": env, "throughput": points, "makespan": sweeps}, indent=2))


if __name__ == "__main__":
    main()
