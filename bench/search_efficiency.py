"""Search efficiency on replayed learning curves: regret versus compute, median and spread over seeds.

Every strategy runs through the product's own code (tunepilot.search: the slot loop, the protocols,
Optuna samplers and pruners) on the replay engine, in memory, one slot, with a budget in real
training steps. Regret = how far the best final value of a trial the strategy ran to the end (what
you would deploy) is from the best final value in the file (higher is better, or lower for a curve
named *loss*, as in the product; --direction overrides). The search space is derived from the file
(every hyperparameter column with the file's range, log scale where it spans >= 10x; seed, config_id,
examples_seen, status and single-valued text columns are not searched), so the benchmark runs
unchanged on any curves file of the same format. A file with a status column is replayed without its
failed runs (status other than complete, or a non-finite value in the curve).

    python bench/search_efficiency.py                       # 50 seeds, all strategies, 2 processes
    python bench/search_efficiency.py --seeds 5 --strategies random,tpe_median
    python bench/search_efficiency.py --curves OTHER.jsonl --plot out.png --markdown out.md
    python bench/search_efficiency.py --seed-offset 100 --strategies tpe_median,ours   # held-out seeds
    python bench/search_efficiency.py --curve mismatched --half b                     # other landscapes
    python bench/search_efficiency.py --curves bench/lora_curves/curves.jsonl --curve eval_loss \
        --where task=gsm8k --budget 20000 --plot lora_gsm8k.png                     # the LoRA corpus, one task
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CURVES = ROOT.parent / "shared" / "data" / "lm-tuning-curves" / "deberta-base_mnli.jsonl"

# name -> the sweep-file keys that select it (sampler, pruner, protocol and their options)
STRATEGIES: dict[str, dict] = {
    # the references run as Optuna runs them: every proposal is trained, duplicates included
    "random": {"sampler": "random", "pruner": "none", "skip_duplicates": False},
    "tpe_median": {"sampler": "tpe", "pruner": "median", "skip_duplicates": False},  # Optuna's default advice
    "tpe_hyperband": {"sampler": "tpe", "pruner": "hyperband", "skip_duplicates": False},
    "staged": {"sampler": "tpe", "pruner": "none", "protocol": {"name": "staged"}},
    # ours: brackets ranked early (protocols/rank_early.py); the best-curve pruner (search/pruners.py)
    # alone; and "ours": that pruner, a short random start for TPE (5 trials: the pruner makes them
    # cheap) and sampled duplicates rejected instead of retrained (search/dedupe.py)
    "rank_early": {"sampler": "tpe", "pruner": "none", "protocol": {"name": "rank_early"}},
    "tpe_envelope": {"sampler": "tpe", "pruner": "envelope", "skip_duplicates": False},
    "ours": {"sampler": {"name": "tpe", "n_startup_trials": 5}, "pruner": "envelope"},
    # round 3: the envelope, then "can it still beat the incumbent?" by the gains the study's complete
    # curves made, plus collapse detection (search/gain.py); chosen on matched seeds 0-49 only
    "ours_gain": {"sampler": {"name": "tpe", "n_startup_trials": 5}, "pruner": "gain"},
    # asynchronous successive halving (ASHA) as a pruner: promoted trials continue, nothing is paid twice
    "tpe_asha": {"sampler": {"name": "tpe", "n_startup_trials": 5}, "pruner": "successive_halving"},
}


# columns of a curves file that describe a run, not a knob to search
NOT_SEARCHED = {"seed", "config_id", "examples_seen", "status"}


def file_space(table) -> dict:
    """Every hyperparameter column as a range (or choices) spanning what the file holds."""
    space = {}
    for col in table.columns:
        if col == "warmup_steps" and "warmup_ratio" in table.columns:
            continue  # the same knob twice; the ratio is comparable across schedule lengths
        if col in NOT_SEARCHED:
            continue
        values = [r.columns[col] for r in table.runs if col in r.columns]
        if any(isinstance(v, str) for v in values):
            if len(set(map(str, values))) > 1:
                space[col] = sorted(set(map(str, values)))
            continue
        lo, hi = min(values), max(values)
        if lo == hi:
            continue
        is_int = all(isinstance(v, int) for v in values)
        log = lo > 0 and hi / lo >= 10
        space[col] = {"low": int(lo) if is_int else float(lo), "high": int(hi) if is_int else float(hi), "log": log}
    return space


def half_file(curves: Path, half: str) -> Path:
    """Every second configuration of `curves` (from the first line for "a", the second for "b") in a
    temporary file: the other half's runs do not exist for the search, and regret is against this half's best."""
    lines = [line for line in curves.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = Path(tempfile.gettempdir()) / f"{curves.stem}.half-{half}.jsonl"
    out.write_text("\n".join(lines[half == "b" :: 2]) + "\n", encoding="utf-8")
    return out


def usable_file(curves: Path, curve: str | None, where: list[str]) -> tuple[Path, int]:
    """The runs of `curves` that match every COLUMN=VALUE of `where` and, where the file has a status
    column, completed with a finite curve, in a temporary file; (path, runs dropped). The file itself
    when nothing is dropped."""
    wanted = dict(w.split("=", 1) for w in where)
    lines = [line for line in curves.read_text(encoding="utf-8").splitlines() if line.strip()]
    keep = [line for line in lines if _usable(json.loads(line), curve, wanted)]
    if len(keep) == len(lines):
        return curves, 0
    if not keep:
        raise SystemExit(f"{curves}: no complete run matches {where}")
    tag = hashlib.sha1(repr((str(curves.resolve()), curve, where)).encode()).hexdigest()[:10]
    out = Path(tempfile.gettempdir()) / f"{curves.stem}.usable-{tag}.jsonl"
    out.write_text("\n".join(keep) + "\n", encoding="utf-8")
    return out, len(lines) - len(keep)


def _usable(row: dict, curve: str | None, wanted: dict[str, str]) -> bool:
    if any(str(row.get(k)) != v for k, v in wanted.items()):
        return False
    if row.get("status", "complete") != "complete":
        return False
    points = row["learning_curves"][curve or next(iter(row["learning_curves"]))]
    return bool(points) and all(math.isfinite(float(v)) for _, v in points)


def run_one(args: tuple) -> list[tuple[int, float]]:
    """One strategy, one seed: [(cumulative training steps, regret after that trial)]."""
    name, seed, curves, curve, budget_steps, direction = args
    import optuna

    from tunepilot.engines.replay import ReplayEngine
    from tunepilot.search.spec import parse_sweep
    from tunepilot.search.study import make_pruner, make_sampler
    from tunepilot.search.sweep import build_loop

    table = _table(curves, curve)
    strategy = STRATEGIES[name]
    raw = {
        "space": file_space(table),
        "objective": {"metric": table.curve, "direction": direction},
        "budget": {"n_trials": 10_000, "train_steps": budget_steps},
        "engine": {"name": "replay", "curves": str(curves)},
        **strategy,
    }
    spec = parse_sweep(raw, "bench")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # a fixed study name: Hyperband assigns trials to brackets by hashing it with the trial number
    study = optuna.create_study(
        study_name=f"{name}-{seed}",
        direction=direction,
        sampler=make_sampler(spec, seed=seed),
        pruner=make_pruner(spec),
    )
    study.set_user_attr("seed", seed)
    engine = ReplayEngine(curves, table=table)
    build_loop(spec, study, engine, None, Path("/nonexistent")).run()
    sign = _sign(direction)
    return trace(study, _best(table, sign), _best(table, -sign), sign)


_TABLES: dict = {}


def _table(curves, curve=None):
    from tunepilot.engines.replay import CurveTable

    if (curves, curve) not in _TABLES:
        _TABLES[curves, curve] = CurveTable(curves, curve)
    return _TABLES[curves, curve]


def _sign(direction: str) -> int:
    return 1 if direction == "maximize" else -1


def _best(table, sign: int) -> float:
    """The best final value in the file (sign +1: highest; -1: lowest)."""
    return sign * max(sign * r.final for r in table.runs)


def trace(study, best_in_file: float, worst: float, sign: int = 1) -> list[tuple[int, float]]:
    """Regret after each trial in the order trials ended (one slot: trial-number order); sign -1 when
    lower is better."""
    from optuna.trial import TrialState

    spent, best, out = 0, worst, []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        spent += int(t.user_attrs.get("steps", 0))
        if t.state == TrialState.COMPLETE and t.value is not None:
            best = sign * max(sign * best, sign * t.value)
        out.append((spent, sign * (best_in_file - best)))
    return out


def regret_at(tr: list[tuple[int, float]], grid: np.ndarray, worst_regret: float) -> np.ndarray:
    """Step function: the regret reached once `c` steps were spent."""
    steps = np.array([s for s, _ in tr] or [0])
    regrets = np.array([r for _, r in tr] or [worst_regret])
    idx = np.searchsorted(steps, grid, side="right") - 1
    return np.where(idx >= 0, regrets[np.clip(idx, 0, None)], worst_regret)


def summarise(traces: dict[str, list], budget: int, worst_regret: float, points: int = 200):
    grid = np.linspace(0, budget, points + 1)[1:]
    curves = {}
    for name, trs in traces.items():
        mat = np.stack([regret_at(tr, grid, worst_regret) for tr in trs])
        curves[name] = (np.median(mat, 0), np.percentile(mat, 25, 0), np.percentile(mat, 75, 0))
    return grid, curves


def first_reach(grid: np.ndarray, median: np.ndarray, target: float) -> float | None:
    hit = np.nonzero(median <= target + 1e-12)[0]
    return float(grid[hit[0]]) if len(hit) else None


def ratio_interval(grid, traces, worst_regret, name: str, reference: str, n: int = 400) -> tuple[float, float]:
    """5-95% bootstrap interval of the compute ratio (seeds resampled with replacement, the reference's
    target re-derived each time): a median over 50 seeds of a lottery-like search is itself noisy."""
    rng = np.random.default_rng(0)
    mats = {k: np.stack([regret_at(tr, grid, worst_regret) for tr in traces[k]]) for k in (name, reference)}
    out = []
    for _ in range(n):
        pick = {k: rng.integers(0, len(m), len(m)) for k, m in mats.items()}
        ref_med = np.median(mats[reference][pick[reference]], 0)
        ref = first_reach(grid, ref_med, ref_med[-1])
        reach = first_reach(grid, np.median(mats[name][pick[name]], 0), ref_med[-1])
        out.append(np.inf if reach is None or not ref else reach / ref)
    lo, hi = np.percentile(out, [5, 95], method="lower")  # an order statistic: inf (not reached) stays inf
    return float(lo), float(hi)


def table_rows(grid, curves, traces, reference: str = "tpe_median", worst_regret: float = 1.0):
    target = curves[reference][0][-1]  # the regret TPE + median reaches with the whole budget
    ref_compute = first_reach(grid, curves[reference][0], target)
    rows = []
    for name, (med, q25, q75) in curves.items():
        reach = first_reach(grid, med, target)
        finals = [tr[-1][1] if tr else math.nan for tr in traces[name]]
        trials = statistics.median(len(tr) for tr in traces[name])
        ratio = None if reach is None or not ref_compute else reach / ref_compute
        interval = ratio_interval(grid, traces, worst_regret, name, reference) if name != reference else None
        rows.append(
            {
                "strategy": name,
                "median_final_regret": float(med[-1]),
                "q25": float(q25[-1]),
                "q75": float(q75[-1]),
                "mean_final_regret": statistics.fmean(finals),
                "median_trials": trials,
                "steps_to_reference": reach,
                "compute_vs_reference": ratio,
                "ratio_interval": interval,
            }
        )
    return target, ref_compute, rows


def budget_rows(grid, curves, reference: str, budgets: list[int]) -> list[dict]:
    """For each budget B: the median regret the reference reaches by B, and the compute each strategy
    needs to reach that same regret (ratio < 0.5 = the target met at that budget)."""
    out = []
    for b in budgets:
        i = int(np.searchsorted(grid, b, side="right")) - 1
        if i < 0:
            continue
        target = float(curves[reference][0][i])
        ref = first_reach(grid, curves[reference][0], target)
        row = {"budget": b, "target": target}
        for name, (med, _, _) in curves.items():
            reach = first_reach(grid, med, target)
            row[name] = None if reach is None or not ref else reach / ref
        out.append(row)
    return out


def plot(grid, curves, path: Path, title: str, ylabel: str = "regret (best accuracy in file - best found)") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, (med, q25, q75) in curves.items():
        (line,) = ax.plot(grid / 1e3, med, label=name, lw=2)
        ax.fill_between(grid / 1e3, q25, q75, color=line.get_color(), alpha=0.15)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xlabel("compute spent (thousand real training steps)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _times(ratio: float) -> str:
    return "not reached" if math.isinf(ratio) else f"{ratio:.2f}x"


def budget_markdown(rows: list[dict], names: list[str]) -> str:
    lines = ["| TPE+median budget | its median regret | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for r in rows:
        cells = ["not reached" if r[n] is None else f"{r[n]:.2f}x" for n in names]
        lines.append(f"| {r['budget'] / 1e3:,.0f}k | {r['target']:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(rows, target, ref_compute, args, seconds: float) -> str:
    lines = [
        "| strategy | median final regret | IQR | mean | median trials | steps to reach TPE+median's "
        "final regret | compute vs TPE+median | 90% bootstrap interval |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        reach = "not reached" if r["steps_to_reference"] is None else f"{r['steps_to_reference'] / 1e3:,.0f}k"
        ratio = "" if r["compute_vs_reference"] is None else f"{r['compute_vs_reference']:.2f}x"
        lo, hi = r["ratio_interval"] or (math.nan, math.nan)
        interval = "" if math.isnan(lo) else f"{_times(lo)} to {_times(hi)}"
        lines.append(
            f"| {r['strategy']} | {r['median_final_regret']:.4f} | {r['q25']:.4f}-{r['q75']:.4f} | "
            f"{r['mean_final_regret']:.4f} | {r['median_trials']:.0f} | {reach} | {ratio} | {interval} |"
        )
    lines.append("")
    lines.append(
        f"Reference: TPE + median pruning reaches median regret {target:.4f} after "
        f"{(ref_compute or 0) / 1e3:,.0f}k steps (budget {args.budget / 1e3:,.0f}k steps per run; "
        f"{args.seeds} seeds; wall time {seconds:.0f} s)."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--curves", type=Path, default=DEFAULT_CURVES)
    p.add_argument("--curve", default=None, help="which learning curve of the file (default: the first)")
    p.add_argument(
        "--direction",
        choices=("auto", "maximize", "minimize"),
        default="auto",
        help="auto: minimize a curve whose name has 'loss' in it (eval_loss), maximize any other",
    )
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="COLUMN=VALUE",
        help="replay only the runs with this column value (repeatable), e.g. --where task=gsm8k",
    )
    p.add_argument(
        "--half",
        choices=("a", "b"),
        default=None,
        help="replay only half of the file's configurations (a: lines 1, 3, 5, ...; b: lines 2, 4, ...) as "
        "its own file: a second landscape for checks the strategies were not tuned on",
    )
    p.add_argument("--seeds", type=int, default=50)
    p.add_argument("--seed-offset", type=int, default=0, help="first seed (held-out checks: --seed-offset 100)")
    p.add_argument("--budget", type=int, default=600_000, help="training steps per run")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--plot", type=Path, default=ROOT / "bench" / "search_efficiency.png")
    p.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    args = p.parse_args(argv)
    names = args.strategies.split(",")
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        p.error(f"unknown strategies {unknown}; known: {', '.join(STRATEGIES)}")
    args.curves, dropped = usable_file(args.curves, args.curve, args.where)
    if dropped:
        print(f"replaying {args.curves}: {dropped} runs dropped (failed, non-finite, or outside {args.where})")
    if args.half:
        args.curves = half_file(args.curves, args.half)
    table = _table(args.curves, args.curve)
    direction = args.direction if args.direction != "auto" else ("minimize" if "loss" in table.curve else "maximize")
    sign = _sign(direction)
    worst_regret = sign * (_best(table, sign) - _best(table, -sign))
    seeds = range(args.seed_offset, args.seed_offset + args.seeds)
    jobs = [(n, s, args.curves, args.curve, args.budget, direction) for n in names for s in seeds]
    t0 = time.time()
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(run_one, jobs, chunksize=4))
    seconds = time.time() - t0
    traces: dict[str, list] = {n: [] for n in names}
    for (name, *_), tr in zip(jobs, results, strict=True):
        traces[name].append(tr)
    grid, curves = summarise(traces, args.budget, worst_regret)
    reference = "tpe_median" if "tpe_median" in curves else names[0]
    print(f"curve {table.curve!r} ({direction}), seeds {seeds.start}-{seeds.stop - 1}")
    target, ref_compute, rows = table_rows(grid, curves, traces, reference, worst_regret)
    title = f"{args.curves.stem}: regret vs compute, median and IQR over {args.seeds} seeds"
    if direction == "minimize":
        plot(grid, curves, args.plot, title, f"regret (best found - best {table.curve} in file)")
    else:
        plot(grid, curves, args.plot, title)
    text = markdown(rows, target, ref_compute, args, seconds)
    budgets = [b for b in (50_000, 100_000, 150_000, 200_000, 300_000, 400_000, 600_000) if b <= args.budget]
    text += (
        "\n\nCompute each strategy needs to reach the median regret TPE + median pruning reaches "
        "within a smaller budget (1.00x = as much as TPE + median):\n\n"
    )
    text += budget_markdown(budget_rows(grid, curves, reference, budgets), list(curves))
    print(f"{len(table.runs)} configurations; best final {_best(table, sign):.4f}")
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
