"""bench/evidence.py on small synthetic corpora with planted effects: it must find them with the right
signs and verdicts, say "cannot tell" where nothing was planted, and count the runs it excludes."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import evidence as ev  # noqa: E402

T = 100  # optimizer steps per run
BATCHES = (8, 16, 32, 64, 128)


def final_loss(rng, lr: float, batch: int, planted: bool) -> float:
    """Planted: the best learning rate falls with batch and the best loss falls with batch."""
    if not planted:
        return 1.5 + rng.normal(0, 0.05)
    best_log_lr = -3.0 - 0.25 * math.log2(batch / 8)
    return 1.6 - 0.06 * math.log2(batch) + 0.3 * (math.log10(lr) - best_log_lr) ** 2


def curve(start: float, end: float, knee: float, tau: float = 5.0) -> list[list[float]]:
    """Flat at `start` until step `knee`, then exponential decay to `end` (the last point exactly `end`)."""
    pts = [[s, start if s <= knee else end + (start - end) * math.exp(-(s - knee) / tau)] for s in range(1, T + 1)]
    pts[-1][1] = end
    return pts


def run_line(rng, cols: dict, loss: float, planted: bool, early_sign: int = 1, knee: float = 10.0) -> dict:
    """Planted early dynamics: grad norm rises with the final loss (early_sign=+1), early train loss falls."""
    noise = rng.normal(0, 0.02, 2)
    grad = 0.5 + early_sign * loss + noise[0] if planted else 1.0 + rng.normal(0, 0.2)
    early_loss = 4.0 - loss + noise[1] if planted else 3.0 + rng.normal(0, 0.2)
    train = curve(early_loss, loss, knee=max(knee, 0.25 * T))
    evals = [p for p in curve(early_loss, loss, knee=knee) if p[0] % 10 == 0]
    accuracy = 0.9 - 0.2 * loss
    metric = [[33, 0.3], [66, (0.3 + accuracy) / 2], [T, accuracy]]
    grads = [[s, grad + 0.01 * math.sin(s)] for s in range(1, T + 1)]
    curves = {"train_loss": train, "grad_norm": grads, "eval_loss": evals}
    curves |= {"token_accuracy": metric, "greedy_match": [[s, v / 2] for s, v in metric]}
    batch = cols["effective_batch"]
    return {**cols, "total_model_steps": T, "examples_seen": T * batch, "status": "complete", "learning_curves": curves}


def configs(rng, task: str, bases: int, seeded: int, variants: list[dict]) -> list[dict]:
    """`bases` random configurations x `variants` (the schedule or mix arms); the first `seeded` bases
    repeated over 3 seeds."""
    out, config_id = [], 0
    for b in range(bases):
        lr = float(10 ** rng.uniform(-5, -2.5))
        base = {"task": task, "learning_rate": lr, "lora_rank": int(rng.choice([4, 16, 64])), "alpha_ratio": 2.0}
        base["effective_batch"] = int(rng.choice(BATCHES))
        for v in variants:
            config_id += 1
            for seed in range(3 if b < seeded else 1):
                out.append({**base, "mix": "none", **v, "seed": seed, "config_id": config_id})
    return out


SCHEDULES = [
    {"lr_scheduler_type": "constant", "warmup_ratio": 0.0},
    {"lr_scheduler_type": "cosine", "warmup_ratio": 0.1},
]
MIXES = [
    {"lr_scheduler_type": "cosine", "warmup_ratio": 0.03, "mix": "stacked"},
    {"lr_scheduler_type": "cosine", "warmup_ratio": 0.03, "mix": "phased"},
]


def write_corpus(path: Path, planted: bool, seeded: int, early_sign: int = 1, stacked_penalty: float = 0.0) -> Path:
    """Tasks gsm8k and banking77 (constant/no-warmup and cosine/warmup variants of each configuration)
    and mix (stacked and phased variants); planted: effects for claims 1-3, none for claim 4."""
    rng = np.random.default_rng(7)
    lines = []
    groups = [(t, SCHEDULES, 40) for t in ("gsm8k", "banking77")] + [("mix", MIXES, 20)]
    for task, variants, bases in groups:
        for cols in configs(rng, task, bases, seeded, variants):
            loss = final_loss(rng, cols["learning_rate"], cols["effective_batch"], planted)
            loss += rng.normal(0, 0.01) + (stacked_penalty if cols["mix"] == "stacked" else 0.0)
            knee = 50.0 if planted and cols["mix"] == "phased" else 10.0  # phased: the second dataset comes late
            lines.append(run_line(rng, cols, loss, planted, early_sign, knee))
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return path


def analyse(path: Path) -> dict:
    result, _ = ev.analyse(path, "token_accuracy", boot=1000, seed=0)
    return result


def part_tests(claim: dict, part: str) -> list[dict]:
    return claim["parts"][part]["tests"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict:
    return analyse(write_corpus(tmp_path_factory.mktemp("planted") / "curves.jsonl", planted=True, seeded=6))


def test_planted_batch_and_learning_rate_effect_holds(planted):
    claim = planted["claims"]["batch_lr"]
    assert claim["verdict"] == ev.HOLDS
    by_name = {(t["task"], t["target"], t["name"]): t for t in part_tests(claim, "batch_lr")}
    best_loss = by_name["gsm8k", "eval_loss", "best_by_batch"]
    assert best_loss["estimate"] == 1.0 and best_loss["ci"][0] > 0  # oriented: larger batch, lower best loss
    best_lr = by_name["gsm8k", "eval_loss", "best_lr_by_batch"]
    assert best_lr["estimate"] < 0  # the planted best learning rate falls with batch
    buckets = claim["parts"]["batch_lr"]["buckets"]["gsm8k"]["eval_loss"]
    assert [b["batch"] for b in buckets] == list(BATCHES)
    assert buckets[-1]["best"] < buckets[0]["best"]


def test_planted_early_dynamics_found_with_the_papers_signs(planted):
    claim = planted["claims"]["early_dynamics"]
    assert claim["parts"]["grad_norm"]["verdict"] == ev.HOLDS
    assert claim["parts"]["train_loss"]["verdict"] == ev.HOLDS
    assert claim["verdict"] == ev.HOLDS
    tests = [t for p in claim["parts"].values() for t in p["tests"]]
    rows = {(t["task"], t["signal"], t["fraction"], t["target"]): t for t in tests}
    grad = rows["banking77", "grad_norm", 0.1, "eval_loss"]
    assert grad["predicted"] == "+" and grad["ci"][0] > 0.5  # higher early grad norm, higher final loss
    loss = rows["banking77", "train_loss", 0.1, "token_accuracy"]
    assert loss["predicted"] == "+" and loss["ci"][0] > 0.5  # higher early loss, higher final accuracy
    # eval every 10 steps: nothing to read at 5% of 100 steps; counted as not enough data, not guessed
    early_eval = [t for t in claim["descriptive"]["eval_loss"]["tests"] if t["fraction"] == 0.05]
    assert all(t["n"] == 0 and not t["enough_data"] for t in early_eval)


def test_planted_stacked_matches_phased_with_fewer_samples(planted):
    claim = planted["claims"]["stacked_vs_phased"]
    assert claim["pairs"] == 20
    assert claim["parts"]["matches"]["verdict"] == ev.HOLDS
    (fewer,) = part_tests(claim, "fewer_samples")
    assert fewer["verdict"] == ev.HOLDS and fewer["ci"][1] < 0 and fewer["median_ratio"] < 0.8
    assert claim["verdict"] == ev.HOLDS


def test_schedule_without_effect_is_as_good_within_seed_noise(planted):
    claim = planted["claims"]["constant_vs_cosine"]
    groups = claim["parts"]["schedule"]["groups"]
    assert groups["gsm8k"]["pairs"] == 40 and groups["mix"]["constant_no_warmup"] == 0
    paired = [t for t in part_tests(claim, "schedule") if t["task"] == "gsm8k"]
    assert all(0 < t["margin"] < 0.05 and t["verdict"] == ev.HOLDS for t in paired)
    assert claim["verdict"] == ev.HOLDS
    assert planted["noise"]["gsm8k"]["configs_with_3_seeds"] == 12  # 6 bases x 2 schedules


def test_reversed_effects_do_not_hold(tmp_path):
    path = write_corpus(tmp_path / "c.jsonl", planted=True, seeded=6, early_sign=-1, stacked_penalty=0.3)
    result = analyse(path)
    early = result["claims"]["early_dynamics"]
    assert early["parts"]["grad_norm"]["verdict"] == ev.NOT_HOLDS
    assert early["verdict"] == ev.NOT_HOLDS
    stacked = result["claims"]["stacked_vs_phased"]
    assert stacked["parts"]["matches"]["verdict"] == ev.NOT_HOLDS
    assert stacked["verdict"] == ev.NOT_HOLDS


def test_no_effect_cannot_tell(tmp_path):
    result = analyse(write_corpus(tmp_path / "c.jsonl", planted=False, seeded=0))
    for name, claim in result["claims"].items():
        assert claim["verdict"] == ev.CANNOT, name
    stacked = result["claims"]["stacked_vs_phased"]
    assert all(t["margin"] == 0 for t in part_tests(stacked, "matches"))  # no seed repeats: no noise yardstick


def test_schedule_pairs_are_listed_and_split_at_the_tasks_median_learning_rate():
    # constant wins at the low learning rates and loses at the high ones: the split shows both
    listed = [
        {"task": "t", "learning_rate": lr, "constant_worse_by": d}
        for lr, d in ((1e-5, -0.2), (2e-5, -0.1), (1e-3, 0.05), (2e-3, 0.03), (3e-3, 0.01))
    ]
    below, above = ev.lr_split(listed, {"t": [1e-5, 2e-5, 1e-4, 1e-3, 2e-3, 3e-3, 4e-3]})
    assert (below["pairs"], below["constant_worse"], above["pairs"], above["constant_worse"]) == (2, 0, 3, 3)
    assert below["mean"] == pytest.approx(-0.15) and above["mean"] == pytest.approx(0.03)
    assert above["half"] == "at or above the median LR (0.001)"


def test_too_few_pairs_cannot_tell():
    tests = [ev.test_row("x", ev.as_good_as(-0.1, -0.05, 0.0, n=3, n_min=ev.MIN_PAIRS))]
    assert tests[0]["verdict"] == ev.CANNOT and not tests[0]["enough_data"]
    assert ev.combine_part(tests) == ev.CANNOT


def test_failed_and_non_finite_runs_are_counted_and_excluded(tmp_path):
    path = write_corpus(tmp_path / "c.jsonl", planted=True, seeded=0)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0]["status"] = "failed"
    rows[1]["learning_curves"]["grad_norm"][5][1] = float("nan")
    rows[2]["learning_curves"]["eval_loss"][-1][1] = float("inf")
    del rows[3]["learning_curves"]["token_accuracy"]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n", encoding="utf-8")
    runs = analyse(path)["runs"]
    assert runs["total"] == len(rows) + 1 and runs["excluded"] == 5
    assert runs["complete"] == len(rows) - 4
    assert runs["reasons"] == {
        "status failed": 1,
        "non-finite grad_norm": 1,
        "non-finite eval_loss": 1,
        "no token_accuracy curve": 1,
        "unreadable (JSONDecodeError)": 1,
    }
    assert sum(runs["complete_by_task"].values()) == runs["complete"]


def test_command_writes_json_markdown_and_plots(tmp_path):
    path = write_corpus(tmp_path / "c.jsonl", planted=True, seeded=6)
    out = tmp_path / "evidence"
    assert ev.main([str(path), "--out", str(out), "--bootstrap", "300"]) == 0
    result = json.loads((out / "results.json").read_text())
    assert set(result["claims"]) == {"batch_lr", "early_dynamics", "stacked_vs_phased", "constant_vs_cosine"}
    text = (out / "tables.md").read_text()
    assert all(f"### {title}" in text for title in ev.TITLES.values())
    assert "**Verdict: holds.**" in text and "nan" not in text.lower()
    for name in ("batch_lr", "early_dynamics", "stacked_vs_phased", "constant_vs_cosine", "agreement", "noise"):
        assert (out / f"{name}.png").stat().st_size > 5000


def test_search_efficiency_replays_one_task_of_the_corpus_minimising_eval_loss(tmp_path):
    import search_efficiency as se

    path = write_corpus(tmp_path / "c.jsonl", planted=True, seeded=0)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    gsm8k = [r for r in rows if r["task"] == "gsm8k"]
    gsm8k[0]["status"] = "failed"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    usable, dropped = se.usable_file(path, "eval_loss", ["task=gsm8k"])
    table = se._table(usable, "eval_loss")
    assert len(table.runs) == len(gsm8k) - 1 and dropped == len(rows) - len(table.runs)
    # seed, config_id, examples_seen, status and the one-valued task/mix/alpha_ratio columns are not searched
    assert set(se.file_space(table)) == {
        "learning_rate",
        "lora_rank",
        "effective_batch",
        "warmup_ratio",
        "lr_scheduler_type",
    }
    lowest = min(r.final for r in table.runs)
    assert se._best(table, -1) == lowest
    trace = se.run_one(("random", 0, usable, "eval_loss", 1500, "minimize"))
    regrets = [r for _, r in trace]
    assert len(trace) >= 10 and all(r >= 0 for r in regrets)
    assert regrets == sorted(regrets, reverse=True)  # the best found so far only improves
    assert regrets[-1] < regrets[0]
