"""The live monitor: stops on NaN, collapse and divergence, alerts once per episode, silent on health."""

from __future__ import annotations

import math

from streams import eval_curve, healthy, healthy_train, train_curve

from tunepilot.health.monitor import LiveMonitor
from tunepilot.health.settings import HealthSettings
from tunepilot.stream import Event


def feed(monitor, records):
    events = []
    for record in sorted(records, key=lambda r: (r.step, r.kind != "train")):
        events += monitor.observe(record)
        if monitor.stop_event is not None:
            break
    return events


def test_healthy_run_gets_no_events():
    monitor = LiveMonitor(HealthSettings(), planned_steps=200, learning_rate=1e-4)
    assert feed(monitor, healthy()) == [] and monitor.stop_event is None


def test_nan_stops_at_once_with_the_reason():
    records = train_curve(healthy_train)
    records[70].loss = math.nan
    monitor = LiveMonitor(HealthSettings(), planned_steps=200)
    events = feed(monitor, records)
    stop = monitor.stop_event
    assert events == [stop] and stop.step == 71 and stop.code == "health.stop"
    assert stop.data["rule"] == "nan_inf" and stop.severity == "error" and "NaN" in stop.message


def test_divergence_stops_before_the_planned_end():
    records = train_curve(lambda s: healthy_train(s) if s <= 80 else healthy_train(80) * 1.06 ** (s - 80))
    monitor = LiveMonitor(HealthSettings(), planned_steps=200)
    feed(monitor, records)
    assert monitor.stop_event is not None and monitor.stop_event.data["rule"] == "divergence"
    assert 80 < monitor.stop_event.step < 140


def test_collapse_stops():
    records = train_curve(healthy_train)
    for r in records[100:]:
        r.loss = 0.0
    monitor = LiveMonitor(HealthSettings())
    feed(monitor, records)
    assert monitor.stop_event.step == 101 and monitor.stop_event.data["rule"] == "zero_collapse"


def test_stop_switches_turn_stopping_off_but_still_alert():
    records = train_curve(lambda s: healthy_train(s) if s <= 80 else healthy_train(80) * 1.06 ** (s - 80))
    monitor = LiveMonitor(HealthSettings(stop_on_divergence=False), planned_steps=200)
    events = feed(monitor, records)
    assert monitor.stop_event is None
    assert [e.code for e in events].count("health.divergence") == 1


def test_alerts_are_not_repeated_every_step():
    records = train_curve(healthy_train, n=400)
    for i in range(40, 400, 9):
        records[i].loss *= 5
    monitor = LiveMonitor(HealthSettings(), planned_steps=400)
    events = feed(monitor, records)
    spikes = [e for e in events if e.code == "health.loss_spikes"]
    assert [e.data.get("verdict") for e in spikes] == [None, "unstable"]  # first spike, then escalation
    assert monitor.stop_event is None
    assert all(isinstance(e, Event) and e.severity in ("warning", "error") for e in events)


def test_overfitting_alert_once_while_the_run_continues():
    records = [
        *train_curve(lambda s: 2.0 * math.exp(-s / 60) + 0.2),
        *eval_curve(lambda s: 1.0 + ((s - 80) / 100) ** 2),
    ]
    monitor = LiveMonitor(HealthSettings(), planned_steps=200)
    events = feed(monitor, records)
    assert [e.code for e in events].count("health.overfitting") == 1 and monitor.stop_event is None
    assert next(e for e in events if e.code == "health.overfitting").data["evidence"]["from_step"] == 80


def test_disabled_monitor_does_nothing():
    records = train_curve(healthy_train)
    records[5].loss = math.nan
    monitor = LiveMonitor(HealthSettings(enabled=False))
    assert feed(monitor, records) == [] and monitor.stop_event is None


def test_lr_alert_needs_the_configured_lr_not_the_warming_up_one():
    warming = train_curve(healthy_train, lr=1e-8)  # logged LR during warmup: far below any range
    assert feed(LiveMonitor(HealthSettings()), warming) == []
    events = feed(LiveMonitor(HealthSettings(), learning_rate=5e-2), train_curve(healthy_train, lr=5e-2))
    assert [e.code for e in events] == ["health.lr_range"]
