"""`diagnose` judged against independent labels on the real-log corpus (tests/fixtures/corpus).

Labels: two labellers gave each log a verdict without seeing tunepilot's rules or verdicts; a third
settled their disagreements. The labels were frozen and split into a dev half (rules may be tuned on
it) and a test half (reported, never tuned on) before any rule change: the split is a fixed function
of each log's id (its sha256 order), written to labels/final.csv.

    python bench/diagnose_corpus.py --split test          # agreement, 95% bootstrap interval, confusion
    python bench/diagnose_corpus.py --split dev --details # per-log verdicts (dev only: tune here)
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "corpus"
LABELS = CORPUS / "labels"
LOG_NAMES = ("trainer_state.json", "trainer_log.jsonl")


@dataclass
class Case:
    id: str
    label: str
    split: str
    mid_run: bool | None  # both labellers' mid_run when they agree, else None
    predicted: str = ""
    predicted_mid_run: bool | None = None
    error: str | None = None


def _rows(name: str) -> dict[str, dict[str, str]]:
    with (LABELS / name).open(encoding="utf-8") as f:
        return {r["id"]: r for r in csv.DictReader(f)}


def freeze_labels() -> list[dict[str, str]]:
    """final.csv from the two labellers and the adjudicator; the split by sha256 order of the ids."""
    a, b, adj = _rows("labeller_a.csv"), _rows("labeller_b.csv"), _rows("adjudicated.csv")
    ordered = sorted(a, key=lambda i: hashlib.sha256(i.encode()).hexdigest())
    split = {i: ("dev" if n % 2 == 0 else "test") for n, i in enumerate(ordered)}
    rows = []
    for i in sorted(a):
        agreed = a[i]["verdict"] == b[i]["verdict"]
        mid = a[i]["mid_run"] if a[i]["mid_run"] == b[i]["mid_run"] else ""
        rows.append(
            {
                "id": i,
                "verdict": a[i]["verdict"] if agreed else adj[i]["verdict"],
                "source": "agreed" if agreed else "adjudicated",
                "mid_run": mid,
                "split": split[i],
            }
        )
    with (LABELS / "final.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def load_cases(split: str = "all") -> list[Case]:
    rows = _rows("final.csv").values()
    return [
        Case(r["id"], r["verdict"], r["split"], {"yes": True, "no": False}.get(r["mid_run"]))
        for r in rows
        if split in ("all", r["split"])
    ]


def log_path(case_id: str) -> Path:
    folder = next((CORPUS / "logs").glob(f"{case_id}_*"))
    return next(folder / n for n in LOG_NAMES if (folder / n).exists())


def judge(cases: list[Case]) -> list[Case]:
    from tunepilot.health.diagnose import diagnose
    from tunepilot.logs import read_log

    for case in cases:
        try:
            result = diagnose(read_log(log_path(case.id)))
            case.predicted, case.predicted_mid_run = result.verdict, result.mid_run
        except Exception as e:  # noqa: BLE001 - a crash is a result here, counted and reported
            case.predicted, case.error = "crash", f"{type(e).__name__}: {e}"
    return cases


def agreement(cases: list[Case]) -> float:
    return sum(c.predicted == c.label for c in cases) / max(1, len(cases))


def bootstrap(cases: list[Case], n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the agreement, resampling logs with replacement."""
    rng = random.Random(seed)
    hits = [c.predicted == c.label for c in cases]
    stats = sorted(sum(rng.choice(hits) for _ in hits) / len(hits) for _ in range(n))
    return stats[int(0.025 * n)], stats[int(0.975 * n) - 1]


def labeller_agreement(split: str = "all") -> float:
    """The ceiling: how often the two labellers gave the same verdict."""
    a, b = _rows("labeller_a.csv"), _rows("labeller_b.csv")
    ids = [c.id for c in load_cases(split)]
    return sum(a[i]["verdict"] == b[i]["verdict"] for i in ids) / len(ids)


def confusion(cases: list[Case]) -> str:
    """Markdown confusion matrix: rows the labels, columns tunepilot's verdicts."""
    labels = sorted({c.label for c in cases} | {c.predicted for c in cases})
    counts = Counter((c.label, c.predicted) for c in cases)
    lines = ["| label \\ diagnose | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for row in labels:
        lines.append(f"| {row} | " + " | ".join(str(counts[(row, col)] or "") for col in labels) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=("dev", "test", "all"), default="test")
    parser.add_argument("--details", action="store_true", help="per-log lines (use on dev only)")
    parser.add_argument("--freeze", action="store_true", help="(re)write labels/final.csv from the label files")
    args = parser.parse_args(argv)
    if args.freeze:
        freeze_labels()
    started = time.perf_counter()
    cases = judge(load_cases(args.split))
    low, high = bootstrap(cases)
    crashes = [c for c in cases if c.error]
    mid = [c for c in cases if c.mid_run is not None]
    print(
        f"{args.split}: {len(cases)} logs, agreement {agreement(cases):.1%} (95% bootstrap {low:.1%}-{high:.1%}), "
        f"crashes {len(crashes)}, labellers' own agreement {labeller_agreement(args.split):.1%}, "
        f"mid-run flag agrees on {sum(c.predicted_mid_run == c.mid_run for c in mid)}/{len(mid)}, "
        f"{time.perf_counter() - started:.1f} s"
    )
    print(confusion(cases))
    if args.details:
        for c in cases:
            mark = "ok " if c.predicted == c.label else "XX "
            print(
                f"{mark}{c.id} label={c.label} diagnose={c.predicted} mid_run={c.mid_run}/{c.predicted_mid_run}"
                f"{' ' + c.error if c.error else ''}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
