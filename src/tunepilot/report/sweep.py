"""`tunepilot report SWEEP_DIR`: the HTML report of a sweep.

leaderboard, the protocol's decisions, costs; optimization history, parallel coordinates,
parameter importance (Optuna's plots); learning curves of all trials, pruned ones marked
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna

from tunepilot.errors import UserError
from tunepilot.io import atomic_write_text
from tunepilot.report.figures import learning_curves, optuna_figures
from tunepilot.report.html import Page, table
from tunepilot.search.results import best_trial, leaderboard


def load_sweep_study(sweep_dir: Path, storage: str | None = None) -> tuple[optuna.Study, dict[str, Any]]:
    meta_path = sweep_dir / "sweep.json"
    if not meta_path.is_file():
        raise UserError(f"{sweep_dir}: not a sweep directory (no sweep.json); run `tunepilot sweep` first")
    from tunepilot.io import read_text

    try:
        meta = json.loads(read_text(meta_path, "sweep.json"))
    except json.JSONDecodeError as e:
        raise UserError(
            f"{meta_path}:{e.lineno}: invalid JSON ({e.msg}); re-run `tunepilot sweep` to rewrite it"
        ) from e
    if not isinstance(meta, dict) or not isinstance(meta.get("study_name"), str):
        raise UserError(f"{meta_path}: not a sweep.json written by `tunepilot sweep` (no study_name)")
    url = storage or meta.get("storage")
    if url is None:
        raise UserError(f"{sweep_dir}: the study lives in a shared storage; pass it with --storage URL")
    try:
        study = optuna.load_study(study_name=meta["study_name"], storage=url)
    except KeyError as e:
        raise UserError(f"{url}: no study named {meta['study_name']!r}") from e
    return study, meta


def sweep_report(
    sweep_dir: str | Path, storage: str | None = None, out: str | Path | None = None, offline: bool = True
) -> dict[str, Any]:
    sweep_dir = Path(sweep_dir)
    study, meta = load_sweep_study(sweep_dir, storage)
    objective = study.user_attrs.get("objective", {"metric": "objective", "direction": "?"})
    rows = leaderboard(study)
    page = Page(f"Sweep {sweep_dir.name}: {objective['metric']} ({objective['direction']})", offline)
    _summary(page, study, rows, meta)
    _decisions(page, study.user_attrs.get("decisions", []))
    page.heading("Learning curves")
    page.figure(learning_curves(study, objective["metric"]))
    for title, fig in optuna_figures(study):
        page.heading(title)
        page.figure(fig)
    _leaderboard(page, rows)
    path = Path(out) if out else sweep_dir / "report.html"
    atomic_write_text(path, page.render())
    best = best_trial(study)
    return {
        "report": str(path),
        "trials": len(rows),
        "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params},
    }


def _summary(page: Page, study: optuna.Study, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    states: dict[str, int] = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    spent = {k: sum(r.get(k) or 0 for r in rows) for k in ("steps", "seconds", "gpu_hours", "cost")}
    spec = meta.get("spec", {})
    page.text(
        f"protocol {spec.get('protocol', {}).get('name')}, sampler {spec.get('sampler', {}).get('name')}, "
        f"pruner {spec.get('pruner', {}).get('name')}, engine {spec.get('engine', {}).get('name')}"
    )
    page.text(
        "trials: "
        + ", ".join(f"{n} {s}" for s, n in states.items())
        + f"; spent {spent['steps']} training steps, {spent['seconds']:.0f} s, "
        f"{spent['gpu_hours']:.3f} GPU-hours" + (f", cost {spent['cost']:.2f}" if spent["cost"] else "")
    )
    best = best_trial(study)
    if best is not None:
        page.text(f"best: trial {best.number}, value {best.value:.6g}, params {best.params}")


def _decisions(page: Page, decisions: list[dict[str, Any]]) -> None:
    page.heading("Protocol decisions")
    if not decisions:
        page.text("this protocol records no decisions (the sampler and pruner decide per trial)", note=True)
        return
    rows = [
        [
            d["stage"],
            d["choice"],
            d["reason"],
            json.dumps({k: v for k, v in d.items() if k not in ("stage", "choice", "reason")}),
        ]
        for d in decisions
    ]
    page.raw(table(["stage", "choice", "why", "evidence"], rows))


def _leaderboard(page: Page, rows: list[dict[str, Any]]) -> None:
    page.heading("Leaderboard")
    keys = sorted({k for r in rows for k in r["params"]})
    body = [
        [
            r["number"],
            r["state"],
            _num(r["value"]),
            r["reached_pct"],
            *[_num(r["params"].get(k)) for k in keys],
            r.get("steps"),
            _num(r.get("seconds")),
            _num(r.get("gpu_hours")),
            r.get("stage"),
            r.get("reason"),
        ]
        for r in rows
    ]
    header = ["#", "state", "value", "at %", *keys, "steps", "seconds", "GPU-h", "stage", "note"]
    page.raw(table(header, body, [r["state"] for r in rows]))


def _num(v: Any) -> Any:
    return f"{v:.4g}" if isinstance(v, float) else v
