"""Plotly figures of a sweep: Optuna's own plots, and the learning curves of every trial.

Optuna's plots (optimization history, parallel coordinates, parameter importance) need enough
finished trials; a plot that cannot be drawn becomes a one-line note in the report instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

STYLE = {
    TrialState.COMPLETE: ("solid", "complete"),
    TrialState.PRUNED: ("dot", "pruned"),
    TrialState.FAIL: ("dash", "failed"),
}


def optuna_figures(study: optuna.Study) -> list[tuple[str, Any | str]]:
    """(title, figure or why there is none) for each of Optuna's plots."""
    from optuna import visualization as vis

    plots: list[tuple[str, Callable]] = [
        ("Optimization history", vis.plot_optimization_history),
        ("Parallel coordinates", vis.plot_parallel_coordinate),
        ("Parameter importance (fANOVA)", vis.plot_param_importances),
    ]
    out = []
    for title, plot in plots:
        out.append((title, _safe(plot, study)))
    return out


def _safe(plot: Callable, study: optuna.Study) -> Any:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return f"needs at least 2 complete trials ({len(complete)} so far)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return plot(study)
    except (ValueError, RuntimeError, ZeroDivisionError) as e:  # e.g. one distinct value per param
        return f"not available: {e}"


def learning_curves(study: optuna.Study, metric: str) -> Any:
    """The objective against percent of each trial's own schedule; pruned trials end with an x."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for t in study.get_trials(deepcopy=False):
        if not t.intermediate_values or t.state not in STYLE:
            continue
        dash, label = STYLE[t.state]
        steps = sorted(t.intermediate_values)
        values = [t.intermediate_values[s] for s in steps]
        end = "x" if t.state == TrialState.PRUNED else ("circle" if t.state == TrialState.COMPLETE else "square")
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=values,
                mode="lines+markers",
                name=f"#{t.number} {label}",
                line={"dash": dash, "width": 2 if t.state == TrialState.COMPLETE else 1},
                marker={"size": [0] * (len(steps) - 1) + [9], "symbol": end},
                hovertext=f"trial {t.number} ({label}): {t.params}",
                opacity=1.0 if label == "complete" else 0.6,
            )
        )
    fig.update_layout(
        xaxis_title="% of the trial's own schedule",
        yaxis_title=metric,
        title="Learning curves (pruned: dotted, ending in x)",
        height=520,
    )
    return fig
