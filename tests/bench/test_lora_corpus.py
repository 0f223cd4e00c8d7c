"""bench/lora_corpus.py --smoke: the corpus generator's mechanics on CPU with the tiny model."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tunepilot.engines.replay import CurveTable

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load_generator():
    spec = importlib.util.spec_from_file_location("lora_corpus", BENCH / "lora_corpus.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["lora_corpus"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_smoke_corpus_is_a_replayable_curves_file(shared_data, tmp_path):
    corpus = load_generator()
    out = tmp_path / "curves.jsonl"
    result = corpus.main(["--smoke", "--shared", str(shared_data), "--out", str(out), "--work", str(tmp_path / "w")])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert result["trials"] == len(lines) == 6  # 4 configurations and seeds 1, 2 of the first
    assert all(line["status"] == "complete" for line in lines)
    for line in lines:
        curves = line["learning_curves"]
        assert [s for s, _ in curves["train_loss"]] == [1, 2, 3, 4] and len(curves["grad_norm"]) == 4
        assert [s for s, _ in curves["eval_loss"]][-1] == 4 and len(curves["greedy_match"]) >= 3
        assert line["examples_seen"] == 4 * line["effective_batch"]
    repeated = [line for line in lines if line["config_id"] == lines[0]["config_id"]]
    assert len({line["seed"] for line in repeated}) in (1, 3)
    assert {line["mix"] for line in lines if line["task"] == "mix"} <= {"stacked", "phased"}
    assert {line["task"] for line in lines} == {"gsm8k", "banking77", "mix"}
    table = CurveTable(out, curve="eval_loss")
    assert len(table.runs) == 6
    kept = out.read_text().splitlines()[:-1]  # one result lost ...
    kept[0] = json.dumps({**json.loads(kept[0]), "status": "stopped"})  # ... and one trial cut short
    out.write_text("\n".join(kept) + "\n")
    again = corpus.main(["--smoke", "--shared", str(shared_data), "--out", str(out), "--work", str(tmp_path / "w")])
    assert again["trials"] == 2  # the lost one and the cut-short one: a second call resumes


def test_plans_repeat_the_first_configurations_with_two_more_seeds():
    corpus = load_generator()
    plans = corpus.sample_plans(12, 4, (4, 8))
    by_id = {}
    for p in plans:
        by_id.setdefault(p.config_id, []).append(p)
    assert len(plans) == 20 and sum(len(v) == 3 for v in by_id.values()) == 4
    for group in by_id.values():
        assert len({(p.learning_rate, p.lora_rank, p.task, p.mix) for p in group}) == 1
    assert all(1e-5 <= p.learning_rate <= 3e-3 and p.effective_batch in (4, 8) for p in plans)
    assert corpus.sample_plans(12, 4, (4, 8)) == plans
    with pytest.raises(SystemExit):
        corpus.parse(["--out", "x"])  # no model and no --smoke
    for absurd in (["--configs", "0"], ["--configs", "100000"], ["--pairs", "-1"], ["--repeats", "-2"]):
        with pytest.raises(SystemExit):
            corpus.parse(["--out", "x", "--model", "m.gguf", *absurd])
    assert corpus.parse(["--out", "x", "--model", "m.gguf", "--pairs", "0"]).pairs == 0


def test_partners_differ_from_their_base_only_in_what_a_claim_compares():
    corpus = load_generator()
    plans = corpus.sample_plans(12, 2, (8, 16), pairs=2)
    assert len({p.number for p in plans}) == len(plans)
    assert len({(p.config_id, p.seed) for p in plans}) == len(plans)
    base = {p.config_id: p for p in plans if p.config_id < corpus.TWIN_ID and p.seed == 0}
    twins = [p for p in plans if p.config_id >= corpus.TWIN_ID]
    compared = {1: {"mix"}, 2: {"lr_scheduler_type", "warmup_ratio"}, 3: {"lr_scheduler_type", "warmup_ratio"}}
    for twin in twins:
        kind, of = divmod(twin.config_id, corpus.TWIN_ID)
        a, b = base[of].columns(), twin.columns()
        differ = {k for k in a if a[k] != b[k]} - {"config_id"}
        assert differ and differ <= compared[kind]
    kinds = [divmod(t.config_id, corpus.TWIN_ID)[0] for t in twins]
    assert kinds.count(1) == 2 and 2 <= kinds.count(2) + kinds.count(3) <= 4  # a partner equal to its base is not drawn
    assert {t.lr_scheduler_type for t in twins if t.config_id // corpus.TWIN_ID == 2} == {"constant"}
    assert [p for p in corpus.sample_plans(12, 2, (8, 16)) if p.config_id >= corpus.TWIN_ID] == []


def test_the_committed_corpus_resumes_under_the_command_that_made_it(tmp_path):
    corpus = load_generator()
    committed = BENCH / "lora_curves" / "curves.jsonl"
    lines = [json.loads(line) for line in committed.read_text().splitlines()]
    plans = corpus.sample_plans(96, 12, (8, 16, 32), block=16, pairs=24)  # its README's command
    assert corpus.finished(committed, plans) == {(d["config_id"], d["seed"]) for d in lines}
    other = corpus.sample_plans(96, 12, (8, 64, 256), block=16)  # another --batches draws other configurations
    with pytest.raises(SystemExit, match=r"curves.jsonl:\d+: config_id \d+ seed \d+ was trained with other"):
        corpus.finished(committed, other)


def test_a_line_cut_mid_write_is_removed_and_a_bad_line_elsewhere_stops(tmp_path):
    corpus = load_generator()
    out = tmp_path / "curves.jsonl"
    good = json.dumps({"config_id": 0, "seed": 0, "status": "complete"})
    out.write_text(good + "\n" + '{"config_id": 1, "se')
    assert [n for n, _ in corpus.read_results(out)] == [1]
    assert out.read_text() == good + "\n"  # the next result starts on a line of its own
    out.write_text('{"config_id": 1, "se\n' + good + "\n")
    with pytest.raises(SystemExit, match=r"curves.jsonl:1: not a corpus line"):
        corpus.read_results(out)


def test_a_trial_that_cannot_end_before_stop_at_is_not_started():
    corpus = load_generator()
    plans = corpus.sample_plans(6, 0, (8, 16))
    gsm = [p for p in plans if p.task == "gsm8k"]
    small, large = (replace_batch(corpus, gsm[0], 8), replace_batch(corpus, gsm[1], 16))
    finish = corpus.Finish(stop_at=100.0)
    assert finish.fits(large, now=99.0)  # nothing measured yet
    finish.started(small, 0.0)
    finish.ended(small, 40.0, complete=True)  # 20 s per micro-batch of its accumulation (8 / 4 = 2)
    assert not finish.fits(large, now=30.0) and finish.fits(small, now=50.0)
    other = next(p for p in plans if p.task == "banking77")
    assert finish.fits(other, now=99.0)  # its task has no measurement yet
    finish.started(large, 0.0)
    finish.ended(large, 99.0, complete=False)  # stopped or failed: no estimate from it
    assert finish.rate == {"gsm8k": 20.0}


def test_large_batches_take_larger_micro_batches_under_max_accumulation(tmp_path):
    """--max-accumulation 8: a batch above 8 x 4 trains at batch / 8 per micro-batch, so that it takes 8
    packed steps per optimizer step; the column is written only where it is not 4, and a line that
    lacks it is a trial of micro-batch 4, which a plan of another micro-batch does not resume."""
    corpus = load_generator()
    plans = corpus.sample_plans(24, 2, (8, 32, 64, 256), max_accumulation=8, pairs=4)
    assert {p.effective_batch for p in plans} == {8, 32, 64, 256}
    for p in plans:
        assert p.micro_batch == (4 if p.effective_batch <= 32 else p.effective_batch // 8)
        assert p.micro_batch * p.accumulation == p.effective_batch and p.accumulation <= 8
        assert ("micro_batch" in p.columns()) == (p.micro_batch != 4)
    same = corpus.sample_plans(24, 2, (8, 32, 64, 256), pairs=4)  # the draws do not depend on the option
    assert [(p.config_id, p.seed, p.effective_batch) for p in same] == [
        (p.config_id, p.seed, p.effective_batch) for p in plans
    ]
    large = next(p for p in plans if p.effective_batch == 256)
    out = tmp_path / "curves.jsonl"
    line = {**large.columns(), "status": "complete"}
    out.write_text(json.dumps(line) + "\n")
    assert corpus.finished(out, plans) == {(large.config_id, large.seed)}
    del line["micro_batch"]  # written by a command that trained it at micro-batch 4
    out.write_text(json.dumps(line) + "\n")
    with pytest.raises(SystemExit, match="was trained with other micro_batch"):
        corpus.finished(out, plans)


def replace_batch(corpus, plan, batch):
    return corpus.replace(plan, effective_batch=batch)


def test_partners_of_finished_trials_run_first_in_task_blocks():
    corpus = load_generator()
    plans = corpus.sample_plans(24, 0, (8,), block=4, pairs=4)
    mix_ids = sorted(p.config_id for p in plans if p.task == "mix" and p.config_id < corpus.TWIN_ID)
    done = {(mix_ids[0], 0), (mix_ids[1], 0)}  # two of the four mix configurations that have partners
    pending = [p for p in plans if (p.config_id, p.seed) not in done]
    ordered = corpus.pairs_first(pending, done, block=4)
    assert sorted(p.number for p in ordered) == sorted(p.number for p in pending)
    mix = [p for p in ordered if p.task == "mix"]
    assert {p.config_id for p in mix[:2]} == {corpus.TWIN_ID + mix_ids[0], corpus.TWIN_ID + mix_ids[1]}
    assert ordered.index(mix[0]) < 4 * 3  # in the first round of task blocks
    assert [p.task for p in ordered[:4]] == [ordered[0].task] * 4


def test_trials_are_evaluated_at_5_10_and_20_percent_of_their_schedule():
    corpus = load_generator()
    from tunepilot.engines.packed.trial import report_steps

    steps = report_steps(corpus.EVAL_FRACTIONS, 300)
    assert steps[:3] == [15, 30, 60] and steps[-1] == 300 and len(steps) == 11
