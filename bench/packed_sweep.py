"""Sweep makespan: the packed engine against Optuna driving one Trainer + PEFT trial at a time.

    python bench/packed_sweep.py --arch qwen2.5-0.5b --trials 16 --steps 20 --out sweep.json

Both sides run the same 16-trial TPE search (seed 0) over learning_rate (log 1e-5..1e-3), lora_rank
{8, 16, 32} (alpha = 2 x rank) and warmup_steps {0, 2}; every trial trains a fixed number of steps
at micro-batch 4 and sequence 1,024 on the same random-token data, evaluates at half and at the end
of its schedule on the same 32 eval sequences, and reports to Optuna; no pruner, so both sides train
all trials fully. The baseline reloads the model for every trial, as a standard Optuna + Trainer
script does. The packed side is `tunepilot sweep` itself (its `prepare` and `run_sweep`, as the CLI
calls them) with `engine: packed`: the random tokens are written as text of a word-level tokenizer
in its own directory (`model.tokenizer`), so data preparation, the SQLite study, per-trial metrics files,
adapter export and the leaderboard are all inside its clock. Each clock starts before the base
model is loaded from disk and stops when the last trial is told.

Checks that both sides did the same work: the word tokenizer must give back every example's ids,
the packed sweep must train exactly the baseline's token count, and trials with the same sampled
parameters (TPE's seeded start-up draws) must reach the same eval loss (`eval_gap`; a warning above 2%).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from packed_throughput import (  # noqa: E402
    build_model,
    environment,
    random_examples,
    trainer_args,
)

from tunepilot.config import build_config  # noqa: E402
from tunepilot.engines.base import Outcome, Report, TrialSpec  # noqa: E402
from tunepilot.engines.packed import PackedEngine  # noqa: E402

RANKS = [8, 16, 32]  # the searched LoRA ranks (the smoke run narrows them to its tiny shape)


def sample(trial) -> dict:
    """The sweep's space, suggested in the order `tunepilot sweep` suggests it (so that TPE's seeded
    start-up draws give both sides the same first trials)."""
    lr = trial.suggest_float("learning_rate", 1e-5, 1e-3, log=True)
    rank = trial.suggest_categorical("lora_rank", RANKS)
    warmup = trial.suggest_categorical("warmup_steps", [0, 2])
    return {"learning_rate": lr, "lora_rank": rank, "lora_alpha": 2 * rank, "warmup_steps": warmup}


def load(model_dir: Path, device: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa").to(device)


def packed_sweep(model_dir, data, args, device, dtype, slots: int | str) -> dict:
    import optuna

    t0 = time.perf_counter()
    raw = {
        "model_name_or_path": str(model_dir),
        "dataset": "synthetic",
        "cutoff_len": args.seq,
        "per_device_train_batch_size": args.micro,
        "per_device_eval_batch_size": 8,
        "lora_dropout": 0.0,
        "lora_target": "all-linear",
        "max_steps": args.steps,
        "load_best_model_at_end": False,  # as the Trainer baseline: the final adapter, no best-state copies
    }
    t_load = time.perf_counter()
    engine = PackedEngine(
        build_config(raw, check_paths=False)[0],
        slots,
        model=load(model_dir, device, dtype),
        pad_id=0,
        data=lambda cfg: data,
    )
    load_s = time.perf_counter() - t_load
    eval_s = [0.0]
    evaluate = engine.evaluate

    def timed_evaluate(trials):  # this script's own clock around the engine's evaluation
        _sync(device)
        t = time.perf_counter()
        try:
            return evaluate(trials)
        finally:
            eval_s[0] += time.perf_counter() - t

    engine.evaluate = timed_evaluate
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    live, asked, values = {}, 0, []
    while len(values) < args.trials:
        while len(engine.active) < engine.slots and asked < args.trials:
            trial = study.ask()
            params = sample(trial)
            cfg = build_config({**raw, **params}, check_paths=False)[0]
            engine.start(TrialSpec(trial.number, params, cfg, report_fractions=(0.5, 1.0)))
            live[trial.number], asked = trial, asked + 1
        for p in engine.advance():
            if isinstance(p, Report):
                live[p.number].report(p.value, p.step)
            elif isinstance(p, Outcome):
                ok = p.state == "complete"
                study.tell(
                    live.pop(p.number),
                    p.value if ok else None,
                    state=None if ok else optuna.trial.TrialState.FAIL,
                )
                values.append(p.value)
    _sync(device)
    seconds = time.perf_counter() - t0
    slots = engine.slots
    engine.close()
    return {
        "engine": "engine loop (packed)",
        "seconds": seconds,
        "slots": slots,
        "best": study.best_value,
        "load_s": load_s,
        "eval_s": eval_s[0],
        "engine_seconds": dict(engine.seconds),
    }


def word(i: int) -> str:
    """Token i of the random model as a word. Delimited on both sides, so that no word contains another
    (transformers matches special tokens, here <0> and <1>, inside longer words: as `t1` in `t137`)."""
    return f"<{i}>"


def word_tokenizer(vocab: int):
    """A word-level tokenizer for the random model: token i is the word `<i>` (so text round-trips)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({word(i): i for i in range(vocab)}, unk_token=word(0)))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=word(0), pad_token=word(0), eos_token=word(1))


def check_round_trip(base_yaml: Path, data) -> None:
    """Both sides must train on the same tokens: the tokenizer that `tunepilot sweep` loads for this base
    config must give back every example's ids from its text."""
    from tunepilot.config import load_config
    from tunepilot.models import load_tokenizer

    tok = load_tokenizer(load_config(base_yaml)[0].model)
    for part in data:
        for e in part:
            got = tok(" ".join(word(i) for i in e["input_ids"]), add_special_tokens=False)["input_ids"]
            if got != e["input_ids"]:
                raise SystemExit(
                    f"{base_yaml}: {type(tok).__name__} does not round-trip the word text (first ids "
                    f"{e['input_ids'][:6]}, got {got[:6]}): the two sides would train on other data"
                )


def write_sweep_files(
    root: Path, model_dir: Path, tokenizer_dir: Path, data, args, slots, compile_: bool | str
) -> Path:
    """The same sweep as `sample` and `baseline_sweep`, as tunepilot files: text data, base config, sweep."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    for name, part in zip(("train", "eval"), data, strict=True):
        lines = [json.dumps({"text": " ".join(word(i) for i in e["input_ids"])}) for e in part]
        (root / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    base = {
        # the tokenizer lives in its own directory: beside a qwen2 config.json, AutoTokenizer would rebuild it
        # as a Qwen2Tokenizer (byte-level BPE) and turn the words into other tokens
        "model": {"name_or_path": str(model_dir), "tokenizer": str(tokenizer_dir)},
        "data": {
            "train": str(root / "train.jsonl"),
            "eval": str(root / "eval.jsonl"),
            "format": "text",
            "cutoff_len": args.seq,
        },
        "method": {"lora_target": "all-linear", "lora_dropout": 0.0},
        "train": {
            "max_steps": args.steps,
            "per_device_train_batch_size": args.micro,
            "per_device_eval_batch_size": 8,
            "lr_scheduler_type": "cosine",
            "load_best_model_at_end": False,
        },  # as the Trainer baseline: the final adapter
    }
    sweep = {
        "base": "base.yaml",
        "space": {
            "learning_rate": {"low": 1e-5, "high": 1e-3, "log": True},
            "lora_rank": list(RANKS),
            "warmup_steps": [0, 2],
        },  # lora_alpha defaults to 2 x rank, as in `sample`
        "objective": {"metric": "eval_loss", "direction": "minimize"},
        "sampler": {"name": "tpe", "seed": 0},
        "pruner": "none",
        "budget": {"n_trials": args.trials},
        "eval_points": 2,
        "engine": {"name": "packed", "slots": slots, "compile": compile_},
    }
    (root / "base.yaml").write_text(yaml.safe_dump(base))
    (root / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    return root / "sweep.yaml"


_COMPILE_TAG = {False: "", True: "-compiled", "auto": "-compile auto"}  # engine.compile -> run name


def tunepilot_sweep(model_dir, data, args, device, slots, compile_: bool | str = False) -> dict:
    """`tunepilot sweep` (its own prepare + run_sweep, as the CLI calls them) with the packed engine:
    data preparation, SQLite study, per-trial metrics, exported adapters and leaderboard included."""
    from tunepilot.search.sweep import prepare, run_sweep

    root = Path(args.workdir) / f"tunepilot-slots-{slots}{_COMPILE_TAG[compile_]}"
    path = write_sweep_files(root, model_dir, Path(args.workdir) / "word-tokenizer", data, args, slots, compile_)
    check_round_trip(path.parent / "base.yaml", data)
    shutil.rmtree(root / "sweep", ignore_errors=True)  # a sweep left by an earlier run would be resumed
    t0 = time.perf_counter()
    summary = run_sweep(prepare(path, sweep_dir=root / "sweep"))
    _sync(device)
    seconds = time.perf_counter() - t0
    board = summary["leaderboard"]
    done = [r for r in board if r.get("state") == "complete"]
    name = f"tunepilot sweep (packed{_COMPILE_TAG[compile_].replace('-', ', ')})"
    return {
        "engine": name,
        "seconds": seconds,
        "slots": slots,
        "engine_slots": summary["engine_slots"],
        "engine_compiled": summary.get("engine_compiled"),  # what `compile: auto` resolved to
        "trials": len(board),
        "complete": len(done),
        "best": min((r["value"] for r in done), default=None),
        "trained_tokens": sum(r["tokens"] or 0 for r in board),
        "engine_seconds": summary.get("engine_seconds"),  # load / train / eval / export inside the clock
        "values": [{"params": r["params"], "value": r["value"]} for r in board],
    }


def baseline_sweep(model_dir, data, args, device, dtype) -> dict:
    import optuna
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer

    t0 = time.perf_counter()
    train, evals = ([{k: torch.tensor(v) for k, v in e.items()} for e in part] for part in data)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    values = []
    for _ in range(args.trials):
        trial = study.ask()
        p = sample(trial)
        model = get_peft_model(
            load(model_dir, device, dtype),
            LoraConfig(
                r=p["lora_rank"],
                lora_alpha=p["lora_alpha"],
                lora_dropout=0.0,
                target_modules="all-linear",
                task_type="CAUSAL_LM",
            ),
        )
        targs = trainer_args(
            output_dir=str(Path(args.workdir) / "trainer"),
            per_device_train_batch_size=args.micro,
            per_device_eval_batch_size=8,
            max_steps=args.steps,
            learning_rate=p["learning_rate"],
            lr_scheduler_type="cosine",
            warmup_steps=p["warmup_steps"],
            bf16=dtype == torch.bfloat16,
            eval_strategy="steps",
            eval_steps=max(1, args.steps // 2),
            logging_steps=10**6,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
            use_cpu=device.type == "cpu",
        )
        trainer = Trainer(model=model, args=targs, train_dataset=train, eval_dataset=evals)
        trainer.train()
        losses = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
        study.tell(trial, min(losses))
        values.append(
            {"params": {k: p[k] for k in ("learning_rate", "lora_rank", "warmup_steps")}, "value": min(losses)}
        )
        del trainer, model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    _sync(device)
    return {
        "engine": "optuna+trainer+peft",
        "seconds": time.perf_counter() - t0,
        "slots": 1,
        "best": study.best_value,
        "values": values,
    }


def eval_gap(packed: list[dict], baseline: list[dict]) -> dict:
    """The same trial (same sampled params: TPE's first trials are seeded random draws, asked in the same
    order on both sides) must reach the same eval loss on both sides, up to bf16 noise. Reports the
    largest relative gap over the trials both ran; a gap over 2% is printed as a warning."""
    base = {json.dumps(v["params"], sort_keys=True): v["value"] for v in baseline}
    gaps = [
        abs(v["value"] - base[k]) / abs(base[k])
        for v in packed
        if v["value"] is not None and (k := json.dumps(v["params"], sort_keys=True)) in base
    ]
    worst = max(gaps, default=None)
    if worst is not None and worst > 0.02:
        print(f"WARNING: a trial's eval loss differs by {worst:.1%} between the two sides", file=sys.stderr)
    return {"shared_trials": len(gaps), "max_relative_gap": worst}


def _warm_up(device: torch.device) -> None:
    if device.type == "cuda":
        a = torch.randn(1024, 1024, device=device, dtype=torch.bfloat16)
        (a @ a).sum().item()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="qwen2.5-0.5b")
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--micro", type=int, default=4)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument(
        "--slots",
        nargs="+",
        default=["auto"],
        help="packed slots, one packed sweep per value; auto: chosen from GPU memory",
    )
    p.add_argument(
        "--compile-slots", nargs="*", default=[], help="also one packed sweep per value with engine.compile: true"
    )
    p.add_argument(
        "--auto-slots", nargs="*", default=[], help="also one packed sweep per value with engine.compile: auto"
    )
    p.add_argument("--no-baseline", action="store_true", help="packed sweeps only (no ratio)")
    p.add_argument(
        "--engine-loop",
        action="store_true",
        help="also run each packed sweep through this script's own loop over the engine (no files)",
    )
    p.add_argument("--workdir", default="/tmp/packed-sweep")
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (checks the script)")
    args = p.parse_args()
    if args.smoke:
        args.arch, args.trials, args.steps, args.seq, args.micro = "tiny-qwen2", 3, 2, 32, 2
        # the tiny shape's k/v projections are 32 -> 16: ranks above 16 are refused (a LoRA rank cannot
        # exceed a layer's smaller side), so the smoke run searches the ranks that fit
        RANKS[:] = [4, 8, 16]
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model_dir = Path(args.workdir) / f"random-{args.arch}"
    build_model(args.arch, torch.device("cpu"), dtype).save_pretrained(model_dir)  # both sides load this
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    n_train = math.ceil(args.steps * args.micro)
    # ids 0 and 1 are the word tokenizer's pad/unk and end-of-text tokens: tunepilot rejects text that
    # contains special tokens, so neither side's data has them
    data = (random_examples(n_train, args.seq, vocab, 1, low=2), random_examples(32, args.seq, vocab, 2, low=2))
    env = environment()
    print(json.dumps(env), flush=True)
    _warm_up(device)  # CUDA context, cuBLAS and allocator start-up: paid here, by neither side's clock
    word_tokenizer(vocab).save_pretrained(Path(args.workdir) / "word-tokenizer")
    packed = []
    runs = [
        (s, c)
        for c, values in ((False, args.slots), (True, args.compile_slots), ("auto", args.auto_slots))
        for s in values
    ]
    for slots, compile_ in runs:
        slots = slots if slots == "auto" else int(slots)
        packed.append(tunepilot_sweep(model_dir, data, args, device, slots, compile_))
        print(json.dumps(packed[-1]), flush=True)
        expected = args.trials * args.steps * args.micro * (args.seq - 1)  # what each baseline trial trains
        if packed[-1]["trained_tokens"] != expected:
            raise SystemExit(
                f"tunepilot sweep trained {packed[-1]['trained_tokens']} tokens, the baseline trains "
                f"{expected}: the two sides would not do the same work"
            )
        if args.engine_loop and compile_ is False:  # the same sweep through this script's own ask/tell loop
            packed.append(packed_sweep(model_dir, data, args, device, dtype, slots))
            print(json.dumps(packed[-1]), flush=True)
    base = None if args.no_baseline else baseline_sweep(model_dir, data, args, device, dtype)
    print(json.dumps(base), flush=True)
    lines = ["| sweep | trials | steps/trial | slots | makespan s | vs baseline |", "|---|---|---|---|---|---|"]
    if base is not None:
        lines.append(f"| optuna + Trainer + PEFT | {args.trials} | {args.steps} | 1 | {base['seconds']:.1f} | 1.00x |")
    for run in packed:
        ratio = "-"
        if base is not None:
            run["ratio"] = base["seconds"] / run["seconds"]
            run["eval_gap"] = eval_gap(run.get("values", []), base["values"])
            ratio = f"{run['ratio']:.2f}x shorter"
        lines.append(
            f"| {run['engine']} | {args.trials} | {args.steps} | {run['slots']} | {run['seconds']:.1f} | {ratio} |"
        )
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text(json.dumps({"environment": env, "packed": packed, "baseline": base}, indent=2))


if __name__ == "__main__":
    main()
