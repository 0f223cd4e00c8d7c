"""bench/kernel_libs.py --smoke: every row is there, the project's implementations agree with the plain
reference (fp32 on CPU: to float rounding), and the kernel libraries' rows are skipped with a reason."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"
CHECKED = {  # rows that run on CPU, and the reference each is compared with
    ("ce", "reference (full logits)"),
    ("ce", "project eager"),
    ("ce", "project compiled"),
    ("rmsnorm", "transformers LlamaRMSNorm"),
    ("rmsnorm", "project FusedRMSNorm"),
    ("swiglu", "transformers silu*up"),
}
GPU_ONLY = {
    ("ce", "liger sum"),
    ("ce", "liger sum, chunk~chunk_rows"),
    ("ce", "liger none + index_add"),
    ("ce", "cce sum"),
    ("ce", "cce sum exact"),
    ("ce", "cce none + index_add"),
    ("rmsnorm", "compiled LlamaRMSNorm"),
    ("rmsnorm", "liger LigerRMSNorm"),
    ("swiglu", "compiled silu*up"),
    ("swiglu", "liger LigerSiLUMulFunction"),
}


@pytest.fixture(scope="module")
def kernel_libs():
    sys.path.insert(0, str(BENCH))  # as tests/bench/test_evidence.py imports its bench script
    return importlib.import_module("kernel_libs")


@pytest.fixture(scope="module")
def smoke(kernel_libs, tmp_path_factory):
    out = tmp_path_factory.mktemp("kernel-libs") / "result.json"
    result = kernel_libs.main(["--smoke", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))  # the file is what main returned
    return result


def test_smoke_has_every_row_once(smoke):
    keys = [(r["op"], r["impl"]) for r in smoke["results"]]
    assert sorted(keys) == sorted(CHECKED | GPU_ONLY)
    assert {r["shape"] for r in smoke["results"]} == {"tiny"}


def test_project_rows_agree_with_the_reference(smoke):
    rows = {(r["op"], r["impl"]): r for r in smoke["results"]}
    for key in CHECKED:
        r = rows[key]
        assert r["status"] == "ok", r
        assert r["ms"] > 0 and r["ms_min"] <= r["ms"]
        for diff in ("value_max_rel_diff", "grad_max_rel_diff"):
            assert 0 <= r[diff] < 1e-5, (key, diff, r[diff])
    # the project's loss gives a sum per segment (a pack's trials); the full-logits reference one sum
    assert rows[("ce", "project eager")]["per_segment"] and rows[("ce", "project compiled")]["per_segment"]
    assert not rows[("ce", "reference (full logits)")]["per_segment"]


def test_gpu_rows_are_skipped_with_a_reason(smoke):
    for r in smoke["results"]:
        if (r["op"], r["impl"]) in GPU_ONLY:
            assert r["status"] == "skipped" and r["reason"], r


def test_environment_block(smoke):
    env = smoke["environment"]
    assert env["device"] == "cpu" and env["dtype"] == "float32"
    assert {"date", "torch", "transformers", "commit", "command"} <= set(env)
    assert set(env["libraries"]) == {"triton", "liger-kernel", "cut-cross-entropy"}


def test_a_wrong_loss_shows_in_the_differences(kernel_libs):
    """The agreement above is not vacuous: the project's loss with the targets shifted by one row is
    measured like any variant and lands far from the reference."""
    args = kernel_libs.parse(["--smoke"])
    cpu = torch.device("cpu")
    case = kernel_libs.ce_case("tiny", args, cpu, torch.float32)
    eager = kernel_libs.project_ce(False)
    wrong = kernel_libs.Variant("shifted targets", "test", lambda c: eager({**c, "y": c["y"].roll(1)}))
    row = kernel_libs.run_variant(wrong, case, args, cpu)
    assert row["status"] == "ok", row
    assert row["value_max_rel_diff"] > 1e-2 and row["grad_max_rel_diff"] > 1e-2
