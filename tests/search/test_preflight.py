"""Checks before the first trial: an edited sweep file does not silently resume the old study, a
derived key without its partner is refused, a wrong template stops the sweep; progress has an ETA."""

from __future__ import annotations

import json

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from tunepilot.cli.app import app
from tunepilot.errors import ExitCode, UserError
from tunepilot.search.progress import SweepProgress
from tunepilot.search.spec import Budget
from tunepilot.search.sweep import prepare, run_sweep


def test_edited_sweep_file_is_refused_with_what_changed_then_force_resume(tmp_path, grid_curves, make_sweep):
    path = make_sweep(grid_curves, budget={"n_trials": 2})
    out = tmp_path / "sweep"
    first = run_sweep(prepare(path, out))
    assert first["leaderboard"]
    spec = yaml.safe_load(path.read_text())
    spec["space"]["learning_rate"]["high"] = 1e-3
    spec["budget"]["n_trials"] = 3  # a bigger budget alone is how a sweep is continued: not a change
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(UserError) as e:
        run_sweep(prepare(path, out))
    assert e.value.code == ExitCode.USAGE
    assert "different sweep spec" in e.value.message and "--force-resume" in e.value.message
    assert e.value.problems == ["space.learning_rate.high: 0.01 -> 0.001"]
    forced = run_sweep(prepare(path, out, force_resume=True))
    assert len(forced["leaderboard"]) == 3
    again = run_sweep(prepare(path, out))  # the new spec is now the study's
    assert again["stopped"].startswith("n_trials reached")


def test_budget_change_resumes_without_complaint(tmp_path, grid_curves, make_sweep):
    path = make_sweep(grid_curves, budget={"n_trials": 1})
    run_sweep(prepare(path, tmp_path / "s"))
    spec = yaml.safe_load(path.read_text())
    spec["budget"]["n_trials"] = 2
    path.write_text(yaml.safe_dump(spec))
    assert len(run_sweep(prepare(path, tmp_path / "s"))["leaderboard"]) == 2


def test_cli_exit_2_names_the_change(tmp_path, grid_curves, make_sweep):
    path = make_sweep(grid_curves, budget={"n_trials": 1})
    out = tmp_path / "cli"
    assert CliRunner().invoke(app, ["sweep", str(path), "--dir", str(out), "--json"]).exit_code == 0
    spec = yaml.safe_load(path.read_text())
    spec["space"]["lora_rank"] = [8, 16]
    path.write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(app, ["sweep", str(path), "--dir", str(out), "--json"])
    assert result.exit_code == ExitCode.USAGE
    error = json.loads(result.stdout)["error"]
    assert error["problems"] == ["space.lora_rank: [4, 8, 16, 32] -> [8, 16]"]


def test_alpha_multiplier_without_rank_is_refused_before_the_sweep(tmp_path, tiny_model):
    data = tmp_path / "t.jsonl"
    data.write_text('{"instruction": "q", "output": "a"}\n')
    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "base": {"model_name_or_path": str(tiny_model), "dataset": str(data)},
                "space": {"learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}, "lora_alpha_multiplier": [1, 2]},
            }
        )
    )
    with pytest.raises(UserError) as e:
        prepare(path, tmp_path / "out")
    assert any(p.startswith("space.lora_alpha_multiplier: sets lora_alpha") for p in e.value.problems)


def test_wrong_template_stops_the_sweep_before_any_trial(tmp_path, tiny_model):
    data = tmp_path / "t.jsonl"
    data.write_text('{"instruction": "q", "output": "a"}\n')
    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "base": {"model_name_or_path": str(tiny_model), "dataset": str(data), "template": "llama3"},
                "space": {"learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}},
            }
        )
    )
    with pytest.raises(UserError, match="template_tokens_not_special"):
        prepare(path, tmp_path / "out")


def test_packed_engine_refuses_keys_it_does_not_train(tmp_path, tiny_model):
    data = tmp_path / "t.jsonl"
    data.write_text('{"instruction": "q", "output": "a"}\n')
    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "base": {"model_name_or_path": str(tiny_model), "dataset": str(data), "use_dora": True},
                "space": {"learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}},
                "engine": "packed",
            }
        )
    )
    with pytest.raises(UserError) as e:
        prepare(path, tmp_path / "out")
    assert e.value.problems == [
        "base.method.use_dora: the packed engine does not apply use_dora; remove it or use engine: standard"
    ]


def packed_sweep(tmp_path, tiny_model, base_keys: dict, space: dict | None = None):
    """A packed sweep whose base config is a file, train.yaml, with `base_keys` added."""
    data = tmp_path / "t.jsonl"
    data.write_text('{"instruction": "q", "output": "a"}\n')
    (tmp_path / "ds_z3.json").write_text('{"zero_optimization": {"stage": 3}}')
    base = {"model_name_or_path": str(tiny_model), "dataset": str(data), **base_keys}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(base))
    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "base": "train.yaml",
                "space": {"learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}, **(space or {})},
                "engine": "packed",
            }
        )
    )
    return path


def test_packed_engine_refuses_a_deepspeed_base_with_exit_2_before_any_trial(tmp_path, tiny_model):
    path = packed_sweep(tmp_path, tiny_model, {"deepspeed": "ds_z3.json"})  # LLaMA-Factory's flat key
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["sweep", str(path), "--dir", str(out), "--json"])
    assert result.exit_code == ExitCode.USAGE
    (problem,) = json.loads(result.stdout)["error"]["problems"]
    assert problem.startswith(
        "base.parallel.deepspeed: `deepspeed: ds_z3.json` in the base config train.yaml asks for DeepSpeed ZeRO, "
        "which the packed engine cannot apply (it trains every trial in one process on one device)"
    )
    assert "remove `deepspeed: ds_z3.json`" in problem and "use engine: standard" in problem
    assert not (out / "trials").exists()  # refused before the study, a model or a trial


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ({"fsdp": "full_shard auto_wrap"}, "base.parallel.fsdp: `fsdp: full_shard auto_wrap`"),
        (
            {"fsdp_config": {"fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer"}},
            "base.parallel.fsdp_config: `fsdp_config: {transformer_layer_cls_to_wrap}`",
        ),
        ({"parallel": {"strategy": "fsdp"}}, "base.parallel.strategy: `strategy: fsdp`"),
    ],
)
def test_packed_engine_refuses_an_fsdp_base(tmp_path, tiny_model, keys, named):
    with pytest.raises(UserError) as e:
        prepare(packed_sweep(tmp_path, tiny_model, keys), tmp_path / "out")
    assert e.value.code == ExitCode.USAGE
    (problem,) = e.value.problems
    assert problem.startswith(f"{named} in the base config train.yaml asks for FSDP sharding, which the packed")
    assert "use engine: standard" in problem and "FSDP2 with nproc: N > 1" in problem


def test_packed_engine_refuses_a_searched_parallel_strategy(tmp_path, tiny_model):
    with pytest.raises(UserError) as e:
        prepare(packed_sweep(tmp_path, tiny_model, {}, space={"deepspeed": [None, "ds_z3.json"]}), tmp_path / "out")
    assert e.value.problems == [
        "space.deepspeed: the packed engine trains every trial in one process on one device and cannot "
        "search a parallel strategy; use engine: standard"
    ]


@pytest.mark.parametrize(
    ("keys", "overrides"),
    [
        ({"nproc": 1}, []),
        ({"fsdp": False, "fsdp_config": {"fsdp_version": 2}, "deepspeed": None}, []),  # resolves to DDP
        ({"parallel": {"strategy": "ddp"}}, []),
        ({"deepspeed": "ds_z3.json"}, ["deepspeed=null"]),  # the refusal's fix, without editing train.yaml
        # planned for 2 processes: a packed trial accumulates both ranks' micro-batches (the same batches)
        ({"nproc": 2, "gradient_accumulation_steps": 2}, []),
    ],
)
def test_packed_engine_accepts_a_base_that_trains_on_one_process(tmp_path, tiny_model, keys, overrides):
    setup = prepare(packed_sweep(tmp_path, tiny_model, keys), tmp_path / "out", overrides=overrides)
    assert setup.base.parallel.resolved == "ddp"


def test_progress_line_after_each_trial_with_eta():
    study = optuna.create_study()
    now = [0.0]
    progress = SweepProgress(study, Budget(n_trials=4), clock=lambda: now[0])
    assert progress.line() is None
    study.tell(study.ask(), 1.0)
    now[0] = 30.0
    assert progress.line() == "progress: 1/4 trials, 30s elapsed, ETA 1m30s"
    assert progress.line() is None  # nothing ended since
    study.tell(study.ask(), state=optuna.trial.TrialState.PRUNED)
    now[0] = 60.0
    assert progress.line() == "progress: 2/4 trials, 1m00s elapsed, ETA 1m00s"
