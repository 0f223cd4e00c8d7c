"""staged: the minimum viable protocol practitioners run by hand, made explicit and resumable.

    1. lr:     three learning rates spanning one order of magnitude (c/sqrt(10), c, c*sqrt(10)
               around the geometric middle of the searched range), each judged at 20% of its steps
    2. rank:   the winner's rank r against 2r at the winning LR; 2r is kept only if it improves the
               objective by more than 2% relative (a larger adapter costs memory and time for good)
    3. warmup: only if the winner's early curve is unstable (the objective gets worse than its best
               so far by more than 5% relative before the judge point); then a run with warmup, kept
               if it is better
    4. final:  one full run with the winner

Stages whose key is not in the search space are skipped (and say so). Judge fraction, LR
candidates, the thresholds and the warmup ratio are options (`protocol: {name: staged, judge_at:
0.2, learning_rates: [...], rank_gain: 0.02, unstable_rel: 0.05, warmup_ratio: 0.1}`).
Where the protocol is comes from the study's trials (user attr `stage`), so a kill loses nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from tunepilot.search.health_check import early_instability
from tunepilot.search.protocols.base import Ask, Protocol
from tunepilot.search.space import suggest_all
from tunepilot.search.spec import Range

# One distribution per key for every staged trial (Optuna wants the same one per name in a study);
# wide enough for any value the stages enqueue.
STAGED_SPACE = {
    "learning_rate": FloatDistribution(1e-9, 10.0, log=True),
    "lora_rank": IntDistribution(1, 65536),
    "warmup_ratio": FloatDistribution(0.0, 0.99),
}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass
class Winner:
    """The configuration carried to the next stage: its params and the curve it was judged on."""

    params: dict[str, Any]
    curve: dict[int, float]
    health: list[str] = field(default_factory=list)  # stability findings on its early training stream

    @classmethod
    def of(cls, t: FrozenTrial, **params: Any) -> Winner:
        health = early_instability(t.user_attrs.get("run_dir"))
        return cls({**t.params, **params}, dict(t.intermediate_values), health)


class Staged(Protocol):
    name = "staged"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        o = self.options
        self.judge_at = float(o.get("judge_at", 0.2))
        self.rank_gain = float(o.get("rank_gain", 0.02))
        self.unstable_rel = float(o.get("unstable_rel", 0.05))
        self.warmup_ratio = float(o.get("warmup_ratio", 0.1))
        self.lrs = [float(x) for x in o.get("learning_rates") or self._default_lrs()]
        self.minimize = self.study.direction == optuna.study.StudyDirection.MINIMIZE
        # every staged key in the space is pinned to its starting value until its stage decides it
        self.start: dict[str, Any] = {}
        if "lora_rank" in self.spec.space:
            self.start["lora_rank"] = self._base_rank()
        if "warmup_ratio" in self.spec.space:
            self.start["warmup_ratio"] = self._base_warmup()

    def _default_lrs(self) -> list[float]:
        dist = self.spec.space.get("learning_rate")
        if isinstance(dist, Range):
            center = math.sqrt(dist.low * dist.high)
        elif isinstance(dist, list):
            center = sorted(dist)[len(dist) // 2]
        else:
            center = self.base.train.learning_rate if self.base is not None else 1e-4
        return [center / math.sqrt(10), center, center * math.sqrt(10)]

    # -- where are we: everything below is a function of the study's trials ---------------------

    def _trials(self, stage: str) -> list[FrozenTrial]:
        all_trials = self.study.get_trials(deepcopy=False)
        superseded = {t.user_attrs.get("retry_of") for t in all_trials}
        return [t for t in all_trials if t.user_attrs.get("stage") == stage and t.number not in superseded]

    def _judged(self, t: FrozenTrial | Winner) -> float | None:
        """The objective at the judge point (the last report at or before it)."""
        if isinstance(t, FrozenTrial) and t.state == TrialState.FAIL:
            return None
        curve = t.curve if isinstance(t, Winner) else t.intermediate_values
        if not curve:
            return None
        pct = round(self.judge_at * 100)
        steps = [s for s in curve if s <= pct] or [min(curve)]
        value = curve[max(steps)]
        return value if math.isfinite(value) else None

    def _better(self, a: float, b: float) -> bool:
        return a < b if self.minimize else a > b

    def _run_stage(self, stage: str, candidates: list[dict[str, Any]], stop_at: float):
        """Ask the next candidate of a stage; None while waiting; the finished trials when all are done."""
        trials = self._trials(stage)
        for params in candidates:
            if not any(_same(t.params, params) for t in trials):
                attrs = {"stage": stage, "stop_at": stop_at, "keys": sorted(params)}
                self.study.enqueue_trial(params, user_attrs=attrs)
                return self._ask()
        if any(t.state not in FINISHED for t in trials):
            return None
        return [t for t in trials if any(_same(t.params, p) for p in candidates)]

    def _ask(self) -> Ask:
        # ask without distributions, then suggest exactly the keys this stage fixed (enqueued values
        # come back from suggest_*), so an unsearched key is never sampled
        trial = self.study.ask()
        error = suggest_all(trial, {k: STAGED_SPACE[k] for k in trial.user_attrs.get("keys", [])})
        attrs = trial.user_attrs
        return Ask(trial, float(attrs.get("stop_at", 1.0)), attrs.get("stage"), error=error)

    # -- the stages ------------------------------------------------------------------------------

    def ask(self) -> Ask | None:
        if self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return self._ask()  # a retry (kill or out-of-memory) goes first
        winner = self._lr_stage()
        for stage in (self._rank_stage, self._warmup_stage):
            if not isinstance(winner, Winner):
                return winner
            winner = stage(winner)
        if not isinstance(winner, Winner):
            return winner
        final = self._run_stage("final", [winner.params], 1.0)
        return None if isinstance(final, list) else final

    def _lr_stage(self):
        done = self._run_stage("lr", [{**self.start, "learning_rate": lr} for lr in self.lrs], self.judge_at)
        if not isinstance(done, list):
            return done
        scored = [(self._judged(t), t) for t in done]
        scored = [(v, t) for v, t in scored if v is not None]
        values = {f"{t.params['learning_rate']:.3g}": self._judged(t) for t in done}
        if not scored:
            self.decide("lr", None, "every learning-rate trial failed; nothing to continue from", values=values)
            return None
        best = min(scored, key=lambda vt: vt[0] if self.minimize else -vt[0])[1]
        self.decide(
            "lr",
            best.params["learning_rate"],
            f"best objective at {self.judge_at:.0%} of the steps among 3 LRs spanning 10x",
            values=values,
        )
        return Winner.of(best)

    def _rank_stage(self, winner: Winner):
        if "lora_rank" not in self.spec.space:
            self.decide("rank", None, "skipped: lora_rank is not in the search space")
            return winner
        r = int(winner.params["lora_rank"])
        # the baseline is the winner itself (it ran at rank r); only 2r is a new run
        candidates = [{**winner.params, "lora_rank": 2 * r}]
        done = self._run_stage("rank", candidates, self.judge_at)
        if not isinstance(done, list):
            return done
        v1, v2 = self._judged(winner), (self._judged(done[0]) if done else None)
        gain = None if v2 is None or not v1 else ((v1 - v2) if self.minimize else (v2 - v1)) / abs(v1)
        keep = gain is not None and gain > self.rank_gain
        self.decide(
            "rank",
            2 * r if keep else r,
            f"2r {'kept' if keep else 'not kept'}: relative gain "
            f"{'n/a' if gain is None else f'{gain:+.2%}'} vs threshold {self.rank_gain:.0%}",
            values={str(r): v1, str(2 * r): v2},
        )
        return Winner.of(done[0]) if keep else Winner({**winner.params, "lora_rank": r}, winner.curve, winner.health)

    def _base_rank(self) -> int:
        if self.base is not None:
            return self.base.method.lora_rank
        dist = self.spec.space["lora_rank"]
        return int(min(dist) if isinstance(dist, list) else dist.low)

    def _base_warmup(self) -> float:
        dist = self.spec.space["warmup_ratio"]
        low = float(min(dist) if isinstance(dist, list) else dist.low)
        return max(self.base.train.warmup_ratio, low) if self.base is not None else low

    def _warmup_stage(self, winner: Winner):
        if "warmup_ratio" not in self.spec.space:
            self.decide("warmup", None, "skipped: warmup_ratio is not in the search space")
            return winner
        worst, unstable = self._instability(winner)
        if not unstable:
            self.decide(
                "warmup",
                winner.params.get("warmup_ratio", 0.0),
                f"no warmup added: early curve stable (worst drop from best {worst:.1%} <= "
                f"{self.unstable_rel:.0%}; no stability findings from tunepilot.health)",
            )
            return winner
        dist = self.spec.space["warmup_ratio"]
        ratio = min(max(self.warmup_ratio, dist.low), dist.high) if isinstance(dist, Range) else max(dist)
        done = self._run_stage("warmup", [{**winner.params, "warmup_ratio": ratio}], self.judge_at)
        if not isinstance(done, list):
            return done
        v0, v1 = self._judged(winner), (self._judged(done[0]) if done else None)
        keep = v1 is not None and (v0 is None or self._better(v1, v0))
        self.decide(
            "warmup",
            ratio if keep else winner.params.get("warmup_ratio", 0.0),
            f"early curve unstable (objective drop {worst:.1%}, limit {self.unstable_rel:.0%}; health: "
            f"{', '.join(winner.health) or 'no findings'}); warmup "
            f"{'kept' if keep else 'not kept'}",
            values={"without": v0, "with": v1},
        )
        return Winner.of(done[0]) if keep else winner

    def _instability(self, t: Winner) -> tuple[float, bool]:
        """Largest relative worsening from the best-so-far before the judge point."""
        pct = round(self.judge_at * 100)
        values = [v for s, v in sorted(t.curve.items()) if s <= pct]
        if any(not math.isfinite(v) for v in values):
            return math.inf, True
        worst, best = 0.0, None
        for v in values:
            best = v if best is None or self._better(v, best) else best
            if best:
                worst = max(worst, ((v - best) if self.minimize else (best - v)) / abs(best))
        return worst, worst > self.unstable_rel or bool(t.health)

    @property
    def done(self) -> bool:
        lr = self._trials("lr")
        if len(lr) >= len(self.lrs) and all(t.state == TrialState.FAIL for t in lr):
            return True
        final = [t for t in self._trials("final") if t.state in FINISHED]
        if final:
            self.decide(
                "final",
                final[0].params,
                "one full run with the winner",
                trial=final[0].number,
                state=final[0].state.name.lower(),
                value=final[0].value,
            )
        return bool(final)


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = set(a) | set(b)
    return all(_close(a.get(k), b.get(k)) for k in keys)


def _close(x: Any, y: Any) -> bool:
    if isinstance(x, float) or isinstance(y, float):
        return x is not None and y is not None and math.isclose(float(x), float(y), rel_tol=1e-9)
    return x == y
