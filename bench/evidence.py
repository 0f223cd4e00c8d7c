"""Four claims of "Unveiling the Secret Recipe" (Pareja et al., arXiv 2412.13337), tested for LoRA on a
corpus of recorded learning curves (the replay engine's format, one run per JSON line).

The paper's findings (supervised fine-tuning of 3B-7B models; paraphrased from its abstract), as tested here:
  1. larger batches paired with lower learning rates give better final models;
  2. early training dynamics predict the final result: lower gradient norms and higher loss early on
     go with a better final model;
  3. stacked training (all data mixed) performs as well as phased training (one dataset after another)
     and needs fewer samples;
  4. a constant learning rate without warmup does as well as warmup with cosine decay.

    python bench/evidence.py bench/lora_curves/curves.jsonl --out docs/evidence
    python bench/evidence.py CURVES --out DIR --metric greedy_match --bootstrap 2000 --no-plots

Writes DIR/results.json (every number and verdict), DIR/tables.md (a markdown fragment, one section per
claim) and DIR/*.png. Runs with status other than "complete", a missing curve or any non-finite value
are counted by reason and excluded. Intervals are 95% percentile bootstraps over runs (or pairs), with
a fixed seed. Lower eval_loss is better; higher token_accuracy / greedy_match is better.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

FRACTIONS = (0.05, 0.10, 0.20)
SIGNALS = ("train_loss", "grad_norm", "eval_loss")
TASK_METRICS = ("token_accuracy", "greedy_match")
REQUIRED = ("train_loss", "grad_norm", "eval_loss")
REQUIRED_COLUMNS = ("task", "learning_rate", "effective_batch")
# the columns that define a configuration (seed and config_id identify repeats, not configurations)
HYPERPARAMETERS = (
    "task",
    "learning_rate",
    "lora_rank",
    "alpha_ratio",
    "effective_batch",
    "warmup_ratio",
    "lr_scheduler_type",
    "mix",
)
MIN_RUNS, MIN_PAIRS, MIN_BUCKETS, MIN_TOP = 10, 5, 3, 20
REACH = 0.95  # claim 3: samples to reach 95% of the way to the pair's worse best eval loss
HOLDS, NOT_HOLDS, CANNOT = "holds", "does not hold", "cannot tell from this corpus"
NOT_JUDGED = "not judged (the paper states no sign)"
RULES = {
    "verdict of a test (direction)": "a 95% interval wholly on the side the paper predicts: holds; wholly on "
    "the other side: does not hold; crossing zero, or too few runs/pairs: cannot tell from this corpus",
    "verdict of a test (as good as)": "d = how much worse the simpler option is (eval loss higher, or task "
    "metric lower); margin m = the pooled seed standard deviation of that quantity in that task (0 without "
    "seed repeats): upper end of d's interval <= m: holds; lower end > m: does not hold; otherwise, or too "
    "few pairs: cannot tell from this corpus",
    "verdict of a part": "over its tests with enough data: holds when at least half hold and none does not "
    "hold; does not hold when at least half do not hold and none holds; otherwise cannot tell from this corpus",
    "verdict of a claim": "holds when every part holds; does not hold when any part does not hold; otherwise "
    "cannot tell from this corpus",
    "too few": f"fewer than {MIN_RUNS} runs for a correlation, {MIN_BUCKETS} batch buckets, {MIN_TOP} runs "
    f"for the top-decile share, {MIN_PAIRS} matched pairs, 3 runs in each unmatched group",
}


@dataclass
class Run:
    line: int
    cols: dict
    total: int
    examples: int
    curves: dict

    def final(self, name: str) -> float:
        return float(self.curves[name][-1, 1])

    @property
    def task(self) -> str:
        return str(self.cols.get("task", "?"))


# ---------------------------------------------------------------- loading


def load(path: Path, metric: str) -> tuple[list[Run], dict]:
    """Complete runs with finite curves, and the excluded ones counted by reason (and by task)."""
    runs, reasons, by_task, total = [], Counter(), defaultdict(Counter), 0
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        total += 1
        run, why = _parse(n, line, metric)
        if why:
            reasons[why] += 1
            by_task[run.task if run else "?"][why] += 1
        else:
            runs.append(run)
    excluded = {"total": total, "complete": len(runs), "excluded": sum(reasons.values())}
    excluded |= {"reasons": dict(reasons), "by_task": {t: dict(c) for t, c in by_task.items()}}
    return runs, excluded


def _parse(n: int, line: str, metric: str) -> tuple[Run | None, str | None]:
    try:
        row = json.loads(line)
        cols = {k: v for k, v in row.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        curves = {k: np.asarray(v, dtype=float).reshape(-1, 2) for k, v in row["learning_curves"].items()}
        run = Run(n, cols, int(row["total_model_steps"]), int(row.get("examples_seen") or 0), curves)
    except (ValueError, KeyError, TypeError) as e:
        return None, f"unreadable ({type(e).__name__})"
    status = str(row.get("status", "complete"))
    if status != "complete":
        return run, f"status {status}"
    for name in (*REQUIRED, metric):
        if name not in curves or not len(curves[name]):
            return run, f"no {name} curve"
    for col in REQUIRED_COLUMNS:
        if col not in cols:
            return run, f"no {col} column"
    bad = [k for k, c in curves.items() if not np.isfinite(c).all()]
    return (run, f"non-finite {bad[0]}") if bad else (run, None)


def by_task(runs: list[Run]) -> dict[str, list[Run]]:
    out = defaultdict(list)
    for r in runs:
        out[r.task].append(r)
    return dict(sorted(out.items()))


def good(target: str) -> int:
    """+1 when higher is better, -1 for losses."""
    return -1 if "loss" in target else 1


def finals(runs: list[Run], target: str) -> np.ndarray:
    return np.array([r.final(target) for r in runs])


# ---------------------------------------------------------------- statistics


def interval(samples: np.ndarray) -> tuple[float, float]:
    s = samples[np.isfinite(samples)]
    if len(s) < 0.5 * len(samples):
        return math.nan, math.nan
    lo, hi = np.percentile(s, [2.5, 97.5])
    return float(lo), float(hi)


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair (NaN where a row is constant)."""
    return pearson_rows(rankdata(x, axis=-1), rankdata(y, axis=-1))


def pearson_rows(rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    rx = rx - rx.mean(-1, keepdims=True)
    ry = ry - ry.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(-1) / np.sqrt((rx**2).sum(-1) * (ry**2).sum(-1))


def resample_ranks(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """rankdata(x[idx], axis=1) (average ranks of ties) without sorting each row: x's dense ranks counted."""
    codes = (rankdata(x, method="dense") - 1).astype(int)[idx]
    k = int(codes.max()) + 1
    rows = np.arange(len(idx))[:, None] * k
    counts = np.bincount((codes + rows).ravel(), minlength=len(idx) * k).reshape(len(idx), k)
    below = np.cumsum(counts, 1) - counts
    return np.take_along_axis(below, codes, 1) + (np.take_along_axis(counts, codes, 1) + 1) / 2


def spearman_ci(x, y, boot: int, seed: int) -> tuple[float, float, float, int]:
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3:
        return math.nan, math.nan, math.nan, len(x)
    idx = np.random.default_rng(seed).integers(0, len(x), (boot, len(x)))
    lo, hi = interval(pearson_rows(resample_ranks(x, idx), resample_ranks(y, idx)))
    return float(spearman_rows(x, y)), lo, hi, len(x)


def mean_ci(d, boot: int, seed: int) -> tuple[float, float, float]:
    d = np.asarray(d, float)
    if not len(d):
        return math.nan, math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, len(d), (boot, len(d)))
    return float(d.mean()), *interval(d[idx].mean(1))


def resampled(values: np.ndarray, boot: int, rng, stat) -> np.ndarray:
    """`stat` (best, median) of each bootstrap resample of `values`: shape (boot,)."""
    return stat(values[rng.integers(0, len(values), (boot, len(values)))], axis=1)


def directional(est, lo, hi, sign: int | None, n: int, n_min: int) -> tuple[str, bool]:
    """(verdict, enough data). sign: the paper's predicted sign (None: no prediction)."""
    if n < n_min or not (np.isfinite(lo) and np.isfinite(hi)):
        return CANNOT, False
    if sign is None:
        return NOT_JUDGED, True
    if sign * lo > 0 and sign * hi > 0:
        return HOLDS, True
    if sign * lo < 0 and sign * hi < 0:
        return NOT_HOLDS, True
    return CANNOT, True


def as_good_as(lo, hi, margin: float, n: int, n_min: int) -> tuple[str, bool]:
    if n < n_min or not (np.isfinite(lo) and np.isfinite(hi)):
        return CANNOT, False
    if hi <= margin:
        return HOLDS, True
    return (NOT_HOLDS, True) if lo > margin else (CANNOT, True)


def test_row(kind: str, verdict: tuple[str, bool], **fields) -> dict:
    return {"kind": kind, **fields, "verdict": verdict[0], "enough_data": verdict[1]}


def combine_part(tests: list[dict]) -> str:
    used = [t["verdict"] for t in tests if t["enough_data"] and t.get("counts", True)]
    holds, nots = used.count(HOLDS), used.count(NOT_HOLDS)
    if used and not nots and 2 * holds >= len(used):
        return HOLDS
    if used and not holds and 2 * nots >= len(used):
        return NOT_HOLDS
    return CANNOT


def combine_claim(parts: dict) -> str:
    verdicts = [p["verdict"] for p in parts.values()]
    if any(v == NOT_HOLDS for v in verdicts):
        return NOT_HOLDS
    return HOLDS if verdicts and all(v == HOLDS for v in verdicts) else CANNOT


def part(statement: str, tests: list[dict], **extra) -> dict:
    return {"statement": statement, "verdict": combine_part(tests), "tests": tests, **extra}


# ---------------------------------------------------------------- noise and agreement


def noise(tasks: dict[str, list[Run]], targets: list[str]) -> dict:
    """Per task and target: the pooled seed SD over configs with >= 2 seeds vs the SD across configs."""
    out = {}
    for task, runs in tasks.items():
        groups = defaultdict(list)
        for r in runs:
            groups[r.cols.get("config_id", r.line)].append(r)
        repeated = [g for g in groups.values() if len(g) >= 2]
        row = {"configs": len(groups), "configs_with_seeds": len(repeated)}
        row["configs_with_3_seeds"] = sum(len(g) >= 3 for g in repeated)
        for t in targets:
            var = [np.var(finals(g, t), ddof=1) for g in repeated]
            means = [finals(g, t).mean() for g in groups.values()]
            seed_sd = float(np.sqrt(np.mean(var))) if var else math.nan
            across = float(np.std(means, ddof=1)) if len(means) > 1 else math.nan
            ratio = seed_sd / across if across else math.nan
            row[t] = {"seed_sd": seed_sd, "across_configs_sd": across, "ratio": ratio}
        out[task] = row
    return out


def margin(noise_table: dict, task: str, target: str) -> float:
    sd = noise_table.get(task, {}).get(target, {}).get("seed_sd", math.nan)
    return float(sd) if np.isfinite(sd) else 0.0


def agreement(tasks: dict[str, list[Run]], metrics: list[str], boot: int, seed: int, top: int = 10) -> dict:
    out = {}
    for task, runs in tasks.items():
        loss = finals(runs, "eval_loss")
        for m in metrics:
            value = finals(runs, m)
            rho, lo, hi, n = spearman_ci(loss, value, boot, seed)
            k = min(top, len(runs))
            best_loss, best_metric = set(np.argsort(loss)[:k]), set(np.argsort(-value)[:k])
            out.setdefault(task, {})[m] = {
                "spearman_eval_loss": rho,
                "ci": [lo, hi],
                "n": n,
                "top_k": k,
                "top_k_overlap": len(best_loss & best_metric),
                "same_best_run": runs[int(np.argmin(loss))].line == runs[int(np.argmax(value))].line,
            }
    return out


# ---------------------------------------------------------------- claim 1: batch and learning rate


def bucket(batch: float) -> int:
    return int(2 ** round(math.log2(batch)))


def claim_batch_lr(tasks: dict[str, list[Run]], targets: list[str], boot: int, seed: int) -> dict:
    tests, tables = [], {}
    for task, runs in tasks.items():
        for t in targets:
            table, row_tests = _batch_tests(runs, t, boot, seed)
            tables.setdefault(task, {})[t] = table
            tests += [{"task": task, "target": t, **x} for x in row_tests]
    p = part("larger batches with lower learning rates give a better final model", tests, buckets=tables)
    return {"claim": "batch_lr", "parts": {"batch_lr": p}, "verdict": combine_claim({"batch_lr": p})}


def _batch_tests(runs: list[Run], target: str, boot: int, seed: int) -> tuple[list[dict], list[dict]]:
    sign = good(target)
    vals = sign * finals(runs, target)  # higher = better from here on
    batch = np.array([bucket(r.cols["effective_batch"]) for r in runs])
    lr = np.array([float(r.cols["learning_rate"]) for r in runs])
    sizes = sorted(set(batch.tolist()))
    best_boot, lr_boot = _bucket_boot(vals, lr, batch, sizes, boot, np.random.default_rng(seed))
    table = []
    for j, b in enumerate(sizes):
        v = vals[batch == b]
        i = int(np.argmax(v))
        table.append(
            {
                "batch": b,
                "n": len(v),
                "best": float(sign * v[i]),
                "best_ci": sorted(sign * x for x in interval(best_boot[:, j])),
                "median": float(sign * np.median(v)),
                "best_lr": float(lr[batch == b][i]),
            }
        )
    x = np.log2(np.array(sizes, float))
    tests = [
        _rank_test(x, np.array([sign * row["best"] for row in table]), best_boot, +1, f"best final {target}"),
        _top_decile(vals, batch, lr, boot, seed),
        _rank_test(x, np.log([row["best_lr"] for row in table]), np.log(lr_boot), -1, "learning rate of the best run"),
    ]
    for test, name in zip(tests, ("best_by_batch", "top_decile", "best_lr_by_batch"), strict=True):
        test["name"] = name
    return table, tests


def _bucket_boot(vals, lr, batch, sizes, boot: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Resampling runs within each batch bucket: the best value and its run's learning rate, (boot, buckets)."""
    best, best_lr = [], []
    for b in sizes:
        v, r = vals[batch == b], lr[batch == b]
        idx = rng.integers(0, len(v), (boot, len(v)))
        pick = np.take_along_axis(idx, v[idx].argmax(1)[:, None], 1)[:, 0]
        best.append(v[pick])
        best_lr.append(r[pick])
    return np.stack(best, 1), np.stack(best_lr, 1)


def _rank_test(x: np.ndarray, y: np.ndarray, y_boot: np.ndarray, sign: int, what: str) -> dict:
    """Spearman(batch bucket, a per-bucket value) over buckets; the interval from runs resampled per bucket."""
    rho = float(spearman_rows(x, y)) if len(x) >= 2 else math.nan
    lo, hi = interval(spearman_rows(np.broadcast_to(x, y_boot.shape), y_boot))
    oriented = " (oriented: + = better)" if what.startswith("best final") else ""
    return test_row(
        "direction",
        directional(rho, lo, hi, sign, len(x), MIN_BUCKETS),
        statistic=f"spearman(batch bucket, {what} in it){oriented}",
        estimate=rho,
        ci=[lo, hi],
        n=len(x),
        predicted="+-"[sign < 0],
    )


def _top_decile(vals: np.ndarray, batch: np.ndarray, lr: np.ndarray, boot: int, seed: int) -> dict:
    """Share of the top decile with batch above the task's median and learning rate below its median,
    minus that share among all runs."""
    joint = (batch > np.median(batch)) & (lr < np.median(lr))
    k = max(1, math.ceil(len(vals) / 10))
    est = float(joint[np.argsort(-vals)[:k]].mean() - joint.mean())
    idx = np.random.default_rng(seed).integers(0, len(vals), (boot, len(vals)))
    top = np.argsort(-vals[idx], axis=1)[:, :k]
    flags = joint[idx]
    diff = np.take_along_axis(flags, top, 1).mean(1) - flags.mean(1)
    lo, hi = interval(diff)
    return test_row(
        "direction",
        directional(est, lo, hi, +1, len(vals), MIN_TOP),
        statistic="top-decile share of (batch > median, learning rate < median) minus its share in all runs",
        estimate=est,
        ci=[lo, hi],
        n=len(vals),
        predicted="+",
        top_decile=k,
    )


# ---------------------------------------------------------------- claim 2: early dynamics


def early(run: Run, signal: str, frac: float) -> float:
    """The signal at `frac` of the schedule: grad norm = mean over steps (0, frac*T]; train loss = mean over
    the window's last quarter; eval loss = the last evaluation in (0, frac*T] (NaN when none)."""
    pts, cut = run.curves[signal], frac * run.total
    if signal == "eval_loss":
        inside = pts[(pts[:, 0] > 0) & (pts[:, 0] <= cut)]
        return float(inside[-1, 1]) if len(inside) else math.nan
    low = 0.75 * cut if signal == "train_loss" else 0.0
    inside = pts[(pts[:, 0] > low) & (pts[:, 0] <= cut)]
    if not len(inside):
        inside = pts[(pts[:, 0] > 0) & (pts[:, 0] <= cut)][-1:]
    return float(inside[:, 1].mean()) if len(inside) else math.nan


def predicted_sign(signal: str, target: str) -> int | None:
    """The paper: lower gradient norm and higher (training) loss early = better final model."""
    better_if = {"grad_norm": -1, "train_loss": +1}.get(signal)
    return None if better_if is None else better_if * good(target)


def claim_early(tasks: dict[str, list[Run]], targets: list[str], boot: int, seed: int) -> dict:
    tests = defaultdict(list)
    for task, runs in tasks.items():
        for frac in FRACTIONS:
            for signal in SIGNALS:
                x = [early(r, signal, frac) for r in runs]
                for t in targets:
                    rho, lo, hi, n = spearman_ci(x, finals(runs, t), boot, seed)
                    sign = predicted_sign(signal, t)
                    row = test_row(
                        "direction",
                        directional(rho, lo, hi, sign, n, MIN_RUNS),
                        task=task,
                        target=t,
                        fraction=frac,
                        signal=signal,
                        statistic=f"spearman(early {signal}, final {t})",
                        estimate=rho,
                        ci=[lo, hi],
                        n=n,
                        predicted=None if sign is None else "+-"[sign < 0],
                        predictive=bool(np.isfinite(lo) and (lo > 0 or hi < 0)),
                    )
                    tests[signal].append(row)
    parts = {
        "grad_norm": part("lower early gradient norm goes with a better final model", tests["grad_norm"]),
        "train_loss": part("higher early training loss goes with a better final model", tests["train_loss"]),
    }
    info = part("early eval loss (no sign stated by the paper; descriptive)", tests["eval_loss"])
    return {"claim": "early_dynamics", "parts": parts, "descriptive": {"eval_loss": info}, **_verdict(parts)}


def _verdict(parts: dict) -> dict:
    return {"verdict": combine_claim(parts)}


# ---------------------------------------------------------------- pairing (claims 3 and 4)


def _key(run: Run, drop: tuple[str, ...]) -> tuple:
    return tuple(_norm(run.cols.get(c)) for c in HYPERPARAMETERS if c not in drop)


def _norm(v):
    return float(f"{v:.6g}") if isinstance(v, float) else v


def pairs(runs: list[Run], arm, drop: tuple[str, ...]) -> list[tuple[list[Run], list[Run]]]:
    """Configurations equal in every hyperparameter outside `drop` that have runs in both arms
    (arm(run) -> "a", "b" or None); each side holds all its seeds."""
    groups = defaultdict(lambda: {"a": [], "b": []})
    for r in runs:
        side = arm(r)
        if side:
            groups[_key(r, drop)][side].append(r)
    return [(g["a"], g["b"]) for _, g in sorted(groups.items(), key=lambda kv: str(kv[0])) if g["a"] and g["b"]]


def worse_by(a: list[Run], b: list[Run], target: str) -> float:
    """How much worse side a's seed-mean final value is than side b's (> 0: a worse)."""
    return -good(target) * (finals(a, target).mean() - finals(b, target).mean())


def paired_tests(found, targets, noise_table, task, boot, seed, label) -> list[dict]:
    out = []
    for t in targets:
        d = [worse_by(a, b, t) for a, b in found]
        est, lo, hi = mean_ci(d, boot, seed)
        m = margin(noise_table, task, t)
        out.append(
            test_row(
                "as good as",
                as_good_as(lo, hi, m, len(d), MIN_PAIRS),
                task=task,
                target=t,
                statistic=f"mean over matched pairs of how much worse {label} (final {t})",
                estimate=est,
                ci=[lo, hi],
                n=len(d),
                margin=m,
                a_better_share=float(np.mean(np.array(d) < 0)) if d else math.nan,
            )
        )
    return out


# ---------------------------------------------------------------- claim 3: stacked vs phased


def samples_to(run: Run, target_loss: float) -> float:
    """Training examples seen when eval loss first reaches `target_loss` (NaN if never)."""
    pts = run.curves["eval_loss"]
    hit = np.flatnonzero(pts[:, 1] <= target_loss + 1e-12)
    if not len(hit):
        return math.nan
    per_step = run.examples / run.total if run.examples else 1.0
    return float(pts[hit[0], 0] * per_step)


def sample_ratio(stacked: list[Run], phased: list[Run]) -> float:
    """log(samples stacked needs / samples phased needs) to reach the pair's common eval loss: REACH of the
    way from the first evaluation down to the worse of the runs' best eval losses (every run reaches it);
    each side the geometric mean over its seeds."""
    runs = stacked + phased
    worst_best = max(float(r.curves["eval_loss"][:, 1].min()) for r in runs)
    start = max(float(r.curves["eval_loss"][0, 1]) for r in runs)
    target = worst_best + (1 - REACH) * max(start - worst_best, 0.0)
    s = [np.mean(np.log([max(samples_to(r, target), 1.0) for r in side])) for side in (stacked, phased)]
    return float(s[0] - s[1])


def claim_stacked(tasks, targets, noise_table, boot, seed) -> dict:
    runs = [r for rs in tasks.values() for r in rs if r.cols.get("mix") in ("stacked", "phased")]
    task = runs[0].task if runs else "mix"
    found = pairs(runs, lambda r: {"stacked": "a", "phased": "b"}.get(r.cols.get("mix")), ("mix",))
    same = paired_tests(found, targets, noise_table, task, boot, seed, "stacked is than phased")
    ratios = [sample_ratio(a, b) for a, b in found]
    est, lo, hi = mean_ci(ratios, boot, seed)
    fewer = test_row(
        "direction",
        directional(est, lo, hi, -1, len(ratios), MIN_PAIRS),
        task=task,
        target="eval_loss",
        statistic=f"mean log(samples stacked needs / samples phased needs) to reach {REACH:.0%} of the way to the "
        "pair's worse best eval loss",
        estimate=est,
        ci=[lo, hi],
        n=len(ratios),
        predicted="-",
        median_ratio=float(np.exp(np.median(ratios))) if ratios else math.nan,
    )
    parts = {
        "matches": part("stacked training is as good as phased training", same),
        "fewer_samples": part("stacked training needs fewer samples", [fewer]),
    }
    return {"claim": "stacked_vs_phased", "pairs": len(found), "parts": parts, **_verdict(parts)}


# ---------------------------------------------------------------- claim 4: constant LR, no warmup


def schedule_arm(run: Run) -> str | None:
    sched, warm = run.cols.get("lr_scheduler_type"), float(run.cols.get("warmup_ratio") or 0)
    if sched == "constant" and warm == 0:
        return "a"
    return "b" if sched == "cosine" and warm > 0 else None


def claim_schedule(tasks, targets, noise_table, boot, seed) -> dict:
    tests, info, listed = [], {}, []
    for task, runs in tasks.items():
        found = pairs(runs, schedule_arm, ("lr_scheduler_type", "warmup_ratio"))
        a = [r for r in runs if schedule_arm(r) == "a"]
        b = [r for r in runs if schedule_arm(r) == "b"]
        info[task] = {"pairs": len(found), "constant_no_warmup": len(a), "cosine_warmup": len(b)}
        listed += [pair_row(task, pc, pb) for pc, pb in found]
        if not (a and b):
            continue
        if len(found) >= MIN_PAIRS:
            label = "constant without warmup is than cosine with warmup"
            tests += paired_tests(found, targets, noise_table, task, boot, seed, label)
        else:
            margins = {t: margin(noise_table, task, t) for t in targets}
            tests += group_tests(a, b, margins, task, boot, seed)
    p = part("a constant learning rate without warmup is as good as cosine decay with warmup", tests, groups=info)
    by_lr = lr_split(listed, {task: [r.cols.get("learning_rate") for r in runs] for task, runs in tasks.items()})
    out = {"claim": "constant_vs_cosine", "parts": {"schedule": p}, "verdict": combine_claim({"schedule": p})}
    return out | {"pair_list": listed, "by_learning_rate": by_lr}


def pair_row(task: str, constant: list[Run], cosine: list[Run]) -> dict:
    """One matched constant/cosine pair: its shared hyperparameters and each side's seed-mean final eval loss."""
    cols = constant[0].cols
    row = {"task": task, **{k: cols.get(k) for k in ("learning_rate", "lora_rank", "effective_batch")}}
    row |= {
        "constant": float(finals(constant, "eval_loss").mean()),
        "cosine": float(finals(cosine, "eval_loss").mean()),
    }
    return row | {"constant_worse_by": worse_by(constant, cosine, "eval_loss")}


def lr_split(listed: list[dict], lrs: dict[str, list]) -> list[dict]:
    """Descriptive: the matched pairs of each task split at the median learning rate of all its runs.
    A constant schedule trains with more total learning rate than cosine decay at the same peak, so
    below the good learning rates it can win by that alone; the split shows where it wins."""
    out = []
    for task in sorted({r["task"] for r in listed}):
        median = float(np.median([lr for lr in lrs[task] if lr is not None]))
        for side, upper in (("below", False), ("at or above", True)):
            d = [
                r["constant_worse_by"] for r in listed if r["task"] == task and (r["learning_rate"] >= median) == upper
            ]
            row = {"task": task, "half": f"{side} the median LR ({fmt(median)})", "pairs": len(d)}
            row |= {"constant_worse": sum(x > 0 for x in d), "mean": float(np.mean(d)) if d else math.nan}
            out.append(row)
    return out


def group_tests(a, b, margins: dict, task: str, boot: int, seed: int) -> list[dict]:
    """Unmatched groups: how much worse group a's best and median final values are than group b's."""
    out, rng = [], np.random.default_rng(seed)
    for t, m in margins.items():
        va, vb = good(t) * finals(a, t), good(t) * finals(b, t)
        for name, stat in (("best", np.max), ("median", np.median)):
            n = min(len(va), len(vb))
            if n:
                est = float(stat(vb) - stat(va))
                lo, hi = interval(resampled(vb, boot, rng, stat) - resampled(va, boot, rng, stat))
            else:
                est, lo, hi = math.nan, math.nan, math.nan
            out.append(
                test_row(
                    "as good as",
                    as_good_as(lo, hi, m, n, 3),
                    task=task,
                    target=t,
                    statistic=f"{name} of constant/no-warmup runs vs {name} of cosine/warmup runs (unmatched; "
                    f"+ = constant worse, final {t})",
                    estimate=est,
                    ci=[lo, hi],
                    n=n,
                    margin=m,
                )
            )
    return out


# ---------------------------------------------------------------- output


def analyse(path: Path, metric: str, boot: int, seed: int) -> tuple[dict, list[Run]]:
    runs, excluded = load(path, metric)
    tasks = by_task(runs)
    targets = ["eval_loss", metric]
    metrics = [m for m in TASK_METRICS if runs and all(m in r.curves for r in runs)] or [metric]
    noise_table = noise(tasks, ["eval_loss", *metrics])
    claims = {
        "batch_lr": claim_batch_lr(tasks, targets, boot, seed),
        "early_dynamics": claim_early(tasks, targets, boot, seed),
        "stacked_vs_phased": claim_stacked(tasks, targets, noise_table, boot, seed),
        "constant_vs_cosine": claim_schedule(tasks, targets, noise_table, boot, seed),
    }
    result = {
        "corpus": str(path),
        "settings": {"metric": metric, "bootstrap": boot, "seed": seed, "level": 0.95, "fractions": FRACTIONS},
        "rules": RULES,
        "runs": excluded | {"complete_by_task": {t: len(rs) for t, rs in tasks.items()}},
        "claims": claims,
        "noise": noise_table,
        "agreement": agreement(tasks, metrics, boot, seed),
    }
    return clean(result), runs


def clean(x):
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return bool(x) if isinstance(x, np.bool_) else x


# ---------------------------------------------------------------- markdown


TITLES = {
    "batch_lr": "Claim 1: larger batches with lower learning rates generalise better",
    "early_dynamics": "Claim 2: early dynamics predict the final result (lower gradient norm, higher loss early)",
    "stacked_vs_phased": "Claim 3: stacked training matches phased training and needs fewer samples",
    "constant_vs_cosine": "Claim 4: a constant learning rate without warmup does as well as cosine with warmup",
}


def fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e-3 or abs(x) >= 1e4 else f"{x:.{digits}f}"
    return str(x)


def fmt_ci(ci) -> str:
    return "n/a" if not ci or ci[0] is None or ci[1] is None else f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def table(rows: list[dict], columns: list[tuple[str, str]]) -> list[str]:
    out = ["| " + " | ".join(name for name, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [fmt_ci(row.get(k)) if k.endswith("ci") else fmt(row.get(k)) for _, k in columns]
        out.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return out


TEST_COLUMNS = [
    ("task", "task"),
    ("target", "target"),
    ("statistic", "statistic"),
    ("estimate", "estimate"),
    ("95% CI", "ci"),
    ("n", "n"),
    ("verdict", "verdict"),
]
_NI_COLUMNS = TEST_COLUMNS[:-1] + [("margin", "margin"), ("verdict", "verdict")]


def found_sign(test: dict) -> str:
    lo, hi = test.get("ci") or (None, None)
    if lo is None or hi is None:
        return "n/a"
    return "+" if lo > 0 else "-" if hi < 0 else "0 (interval crosses zero)"


def markdown(result: dict) -> str:
    lines = corpus_section(result)
    for name, claim in result["claims"].items():
        lines += ["", f"### {TITLES[name]}", "", f"**Verdict: {claim['verdict']}.**", ""]
        lines += CLAIM_SECTIONS[name](claim)
    lines += noise_section(result["noise"]) + agreement_section(result["agreement"])
    return "\n".join(lines) + "\n"


def corpus_section(result: dict) -> list[str]:
    runs, s = result["runs"], result["settings"]
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(runs["reasons"].items())) or "none"
    tasks = ", ".join(f"{t}: {n}" for t, n in runs["complete_by_task"].items())
    lines = [
        "### Corpus and rules",
        "",
        f"`{result['corpus']}`: {runs['total']} runs, {runs['complete']} complete and used ({tasks}); "
        f"{runs['excluded']} excluded ({reasons}).",
        f"Task metric judged: `{s['metric']}` (higher is better); lower `eval_loss` is better. Intervals: 95% "
        f"percentile bootstrap, {s['bootstrap']} resamples, seed {s['seed']}.",
        "",
    ]
    return lines + [f"- {k.capitalize()}: {v}." for k, v in result["rules"].items()]


def parts_lines(claim: dict, columns=TEST_COLUMNS) -> list[str]:
    out = []
    for p in claim["parts"].values():
        out += [f"Part: {p['statement']}: **{p['verdict']}**.", ""]
        out += table(p["tests"], columns) + [""]
    return out


def batch_section(claim: dict) -> list[str]:
    p = claim["parts"]["batch_lr"]
    rows = [
        {"task": task, "target": t, **row}
        for task, by_target in p["buckets"].items()
        for t, buckets in by_target.items()
        for row in buckets
    ]
    cols = [("task", "task"), ("target", "target"), ("batch", "batch"), ("runs", "n"), ("best final", "best")]
    cols += [("95% CI of best", "best_ci"), ("median", "median"), ("LR of best", "best_lr")]
    lines = ["Best final value by effective-batch bucket (nearest power of two):", ""]
    lines += table(rows, cols)
    return lines + [""] + parts_lines(claim)


def early_section(claim: dict) -> list[str]:
    cols = [("task", "task"), ("early signal", "signal"), ("at", "fraction"), ("vs final", "target")]
    cols += [("Spearman", "estimate"), ("95% CI", "ci"), ("n", "n"), ("paper's sign", "predicted")]
    cols += [("found sign", "found"), ("verdict", "verdict")]
    out = [
        "Spearman rank correlation across runs between a signal early in the schedule and the final value. "
        "Early gradient norm: mean over the first steps; early train loss: mean over the window's last "
        "quarter; early eval loss: the last evaluation in the window.",
        "",
    ]
    judged = [(p, f"**{p['verdict']}**") for p in claim["parts"].values()]
    for p, verdict in judged + [(p, "not judged") for p in claim.get("descriptive", {}).values()]:
        rows = [t | {"found": found_sign(t), "predicted": t["predicted"] or "none"} for t in p["tests"]]
        rows = [r | {"fraction": f"{r['fraction']:.0%}"} for r in rows]
        out += [f"Part: {p['statement']}: {verdict}.", ""] + table(rows, cols) + [""]
    return out


def stacked_section(claim: dict) -> list[str]:
    (fewer,) = claim["parts"]["fewer_samples"]["tests"]
    text = (
        f"Matched stacked/phased configurations (equal in every hyperparameter but `mix`, seeds averaged): "
        f"{claim['pairs']}. Median over pairs of the samples stacked needs / the samples phased needs: "
        f"{fmt(fewer.get('median_ratio'))}."
    )
    return [text, ""] + parts_lines(claim, _NI_COLUMNS)


def schedule_section(claim: dict) -> list[str]:
    groups = claim["parts"]["schedule"]["groups"]
    rows = [{"task": t, **g} for t, g in groups.items()]
    cols = [("task", "task"), ("matched pairs", "pairs"), ("constant, no warmup", "constant_no_warmup")]
    cols += [("cosine with warmup", "cosine_warmup")]
    note = (
        f"Tasks with at least {MIN_PAIRS} matched pairs are compared pair by pair; the others by the best and the "
        "median of each group (unmatched: other hyperparameters differ)."
    )
    return table(rows, cols) + ["", note, ""] + parts_lines(claim, _NI_COLUMNS) + schedule_pairs_lines(claim)


def schedule_pairs_lines(claim: dict) -> list[str]:
    intro = (
        "The matched pairs one by one (final eval loss, seeds averaged), and split at each task's median "
        "learning rate (descriptive, not judged): at one peak LR a constant schedule trains with more total "
        "learning rate than cosine decay, which helps where the LR is too low."
    )
    cols = [("task", "task"), ("learning rate", "learning_rate"), ("rank", "lora_rank"), ("batch", "effective_batch")]
    cols += [
        ("constant, no warmup", "constant"),
        ("cosine with warmup", "cosine"),
        ("constant worse by", "constant_worse_by"),
    ]
    split = [("task", "task"), ("pairs with LR", "half"), ("pairs", "pairs"), ("constant worse in", "constant_worse")]
    split += [("mean: constant worse by", "mean")]
    rows = sorted(claim["pair_list"], key=lambda r: (r["task"], r["learning_rate"]))
    return ["", intro, ""] + table(rows, cols) + [""] + table(claim["by_learning_rate"], split) + [""]


CLAIM_SECTIONS = {
    "batch_lr": batch_section,
    "early_dynamics": early_section,
    "stacked_vs_phased": stacked_section,
    "constant_vs_cosine": schedule_section,
}


def noise_section(noise_table: dict) -> list[str]:
    rows = []
    for task, row in noise_table.items():
        for t, v in row.items():
            if isinstance(v, dict):
                rows.append({"task": task, "target": t, "configs": row["configs"], **v})
                rows[-1] |= {"seeded": row["configs_with_seeds"], "three": row["configs_with_3_seeds"]}
    cols = [("task", "task"), ("final", "target"), ("configs", "configs"), ("with >= 2 seeds", "seeded")]
    cols += [("with 3 seeds", "three"), ("seed SD", "seed_sd"), ("SD across configs", "across_configs_sd")]
    cols += [("ratio", "ratio")]
    intro = (
        "Pooled within-configuration seed standard deviation against the standard deviation of configuration "
        "means: a difference between configurations smaller than the seed SD is noise."
    )
    return ["", "### Seed noise", "", intro, ""] + table(rows, cols)


def agreement_section(agree: dict) -> list[str]:
    rows = [{"task": task, "metric": m, **v} for task, by_m in agree.items() for m, v in by_m.items()]
    cols = [("task", "task"), ("metric", "metric"), ("Spearman with final eval loss", "spearman_eval_loss")]
    cols += [("95% CI", "ci"), ("n", "n"), ("top-k", "top_k"), ("overlap of top-k", "top_k_overlap")]
    cols += [("same best run", "same_best_run")]
    intro = (
        "Do eval loss and the task metric pick the same trials? Agreement = a negative rank correlation (lower "
        "loss, higher metric); overlap = runs in both the top-k by lowest eval loss and the top-k by metric."
    )
    return ["", "### Eval loss against the task metric", "", intro, ""] + table(rows, cols)


# ---------------------------------------------------------------- plots


def plots(result: dict, runs: list[Run], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, metric = by_task(runs), result["settings"]["metric"]
    written = []
    for name, draw in (
        ("batch_lr", plot_batch),
        ("early_dynamics", plot_early),
        ("stacked_vs_phased", plot_stacked),
        ("constant_vs_cosine", plot_schedule),
        ("agreement", plot_agreement),
        ("noise", plot_noise),
    ):
        fig = draw(plt, result, tasks, metric)
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)
        written.append(out / f"{name}.png")
    return written


def _grid(plt, rows: int, cols: int, w: float = 4.2, h: float = 3.2):
    size = (w * cols, h * max(rows, 1))
    return plt.subplots(max(rows, 1), cols, figsize=size, squeeze=False, layout="constrained")


def plot_batch(plt, result, tasks, metric):
    buckets = result["claims"]["batch_lr"]["parts"]["batch_lr"]["buckets"]
    fig, axes = _grid(plt, len(tasks), 3)
    for i, (task, runs) in enumerate(tasks.items()):
        for j, t in enumerate(("eval_loss", metric)):
            rows = buckets[task][t]
            x = [r["batch"] for r in rows]
            y = np.array([r["best"] for r in rows])
            ci = np.array([[np.nan if v is None else v for v in r["best_ci"]] for r in rows], float).reshape(-1, 2)
            err = np.nan_to_num(np.abs(ci.T - y))
            axes[i, j].errorbar(x, y, yerr=err, marker="o", capsize=3)
            axes[i, j].set(xscale="log", xlabel="effective batch", ylabel=f"best final {t}", title=task)
        ax = axes[i, 2]
        sc = ax.scatter(
            [r.cols["effective_batch"] for r in runs],
            [r.cols["learning_rate"] for r in runs],
            c=finals(runs, "eval_loss"),
            cmap="viridis_r",
            s=14,
        )
        fig.colorbar(sc, ax=ax, label="final eval loss")
        ax.set(xscale="log", yscale="log", xlabel="effective batch", ylabel="learning rate", title=task)
    return fig


def plot_early(plt, result, tasks, metric):
    claim = result["claims"]["early_dynamics"]
    tests = [t for p in (*claim["parts"].values(), *claim["descriptive"].values()) for t in p["tests"]]
    fig, axes = _grid(plt, len(tasks), 2)
    for i, task in enumerate(tasks):
        for j, target in enumerate(("eval_loss", metric)):
            ax = axes[i, j]
            for k, signal in enumerate(SIGNALS):
                rows = [t for t in tests if t["task"] == task and t["target"] == target and t["signal"] == signal]
                rows = [t for t in rows if t["estimate"] is not None and t["ci"][0] is not None]
                x = np.array([t["fraction"] for t in rows]) * 100 + (k - 1) * 0.6
                y = np.array([t["estimate"] for t in rows])
                yerr = np.abs(np.array([[t["ci"][0] for t in rows], [t["ci"][1] for t in rows]]) - y)
                ax.errorbar(x, y, yerr=yerr if len(rows) else None, marker="o", capsize=3, label=signal)
            ax.axhline(0, color="grey", lw=0.8)
            ax.set(xlabel="% of schedule", ylabel=f"Spearman with final {target}", title=task, ylim=(-1.05, 1.05))
            ax.legend(fontsize=7)
    return fig


def plot_stacked(plt, result, tasks, metric):
    runs = [r for rs in tasks.values() for r in rs]
    found = pairs(runs, lambda r: {"stacked": "a", "phased": "b"}.get(r.cols.get("mix")), ("mix",))
    fig, axes = _grid(plt, 1, 3)
    for ax, t in zip(axes[0, :2], ("eval_loss", metric), strict=True):
        s = [finals(a, t).mean() for a, _ in found]
        p = [finals(b, t).mean() for _, b in found]
        ax.scatter(p, s, s=16)
        if found:
            lim = [min(s + p), max(s + p)]
            ax.plot(lim, lim, color="grey", lw=0.8)
        ax.set(xlabel=f"phased final {t}", ylabel=f"stacked final {t}", title=f"{len(found)} matched pairs")
    ratios = [math.exp(sample_ratio(a, b)) for a, b in found]
    if ratios:
        axes[0, 2].hist(ratios, bins=20, range=(min(ratios) - 0.05, max(ratios) + 0.05))
    axes[0, 2].axvline(1, color="grey", lw=0.8)
    axes[0, 2].set(xlabel="samples stacked / phased (to the common eval loss)", ylabel="pairs")
    return fig


def plot_schedule(plt, result, tasks, metric):
    fig, axes = _grid(plt, 1, max(len(tasks), 1))
    for ax, (task, runs) in zip(axes[0], tasks.items(), strict=False):
        groups = {"constant, no warmup": "a", "cosine, warmup": "b"}
        data = [finals([r for r in runs if schedule_arm(r) == g], "eval_loss") for g in groups.values()]
        for k, d in enumerate(data):
            ax.scatter(np.full(len(d), k) + np.linspace(-0.15, 0.15, len(d)), d, s=10)
        ax.set_xticks(range(len(groups)), list(groups))
        ax.set(ylabel="final eval loss", title=task)
    return fig


def plot_agreement(plt, result, tasks, metric):
    fig, axes = _grid(plt, 1, max(len(tasks), 1))
    for ax, (task, runs) in zip(axes[0], tasks.items(), strict=False):
        a = result["agreement"][task][metric]
        ax.scatter(finals(runs, "eval_loss"), finals(runs, metric), s=10)
        ax.set(xlabel="final eval loss", ylabel=f"final {metric}", title=f"{task}: rho {fmt(a['spearman_eval_loss'])}")
    return fig


def plot_noise(plt, result, tasks, metric):
    fig, axes = _grid(plt, 1, 2)
    names = list(result["noise"])
    for ax, t in zip(axes[0], ("eval_loss", metric), strict=True):
        rows = [result["noise"][k].get(t, {}) for k in names]
        for k, (key, label) in enumerate((("seed_sd", "seed SD"), ("across_configs_sd", "SD across configs"))):
            values = [np.nan if r.get(key) is None else r[key] for r in rows]
            ax.bar(np.arange(len(names)) + (k - 0.5) * 0.4, values, width=0.4, label=label)
        ax.set_xticks(range(len(names)), names)
        ax.set(ylabel=f"final {t}", title="seed noise vs spread across configurations")
        ax.legend(fontsize=7)
    return fig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("curves", type=Path)
    p.add_argument("--out", type=Path, required=True, help="folder for results.json, tables.md and the plots")
    p.add_argument("--metric", default="token_accuracy", choices=TASK_METRICS, help="the task metric judged")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    if not args.curves.is_file():
        p.error(f"{args.curves} not found")
    result, runs = analyse(args.curves, args.metric, args.bootstrap, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (args.out / "tables.md").write_text(markdown(result), encoding="utf-8")
    if not args.no_plots:
        plots(result, runs, args.out)
    print(f"{result['runs']['complete']} complete runs, {result['runs']['excluded']} excluded; wrote {args.out}")
    for name, claim in result["claims"].items():
        print(f"  {name}: {claim['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
