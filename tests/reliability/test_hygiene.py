"""File modes follow the umask, a killed writer's temporary directories are cleaned on the next start,
and a custom metric named in a run directory's saved config is not executed unless trusted."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
import yaml
from cli_contract import assert_user_error, run_cli

from tunepilot.errors import UserError
from tunepilot.io import atomic_write_dir, clean_stale_temps


@pytest.fixture
def umask():
    def set_(value: int) -> None:
        os.umask(value)

    old = os.umask(0o022)
    yield set_
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o755), (0o077, 0o700), (0o002, 0o775)])
def test_atomic_dirs_follow_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    atomic_write_dir(tmp_path / "adapter", lambda tmp: (tmp / "w.bin").write_bytes(b"x"))
    assert stat.S_IMODE((tmp_path / "adapter").stat().st_mode) == mode


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = tmp_path / f".model-1.5.{_dead_pid()}.k3j4.tmp"
    live = tmp_path / f".model-1.5.{os.getpid()}.a8b9.tmp"
    other = tmp_path / ".notes.tmp"
    for d in (dead, live, other):
        d.mkdir()
    (dead / "weights.safetensors").write_bytes(b"half")
    assert clean_stale_temps(tmp_path) == [dead]
    assert not dead.exists() and live.exists() and other.exists()


def test_gguf_conversion_cleans_a_killed_conversion(tmp_path, monkeypatch):
    """A conversion killed midway leaves `.NAME.PID.XXXX.tmp` in the cache; the next one removes it."""
    from tunepilot.models import converted_gguf_dir

    monkeypatch.setenv("TUNEPILOT_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 8)  # the magic, then nothing readable
    orphan = tmp_path / "cache" / "gguf" / f".tiny-0123456789abcdef.{_dead_pid()}.zz11.tmp"
    orphan.mkdir(parents=True)
    with pytest.raises(UserError, match="not a readable GGUF"):
        converted_gguf_dir(gguf)
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []  # the orphan and this failed attempt: gone


def _run_dir(tmp_path, metric: str):
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "model": {"name_or_path": str(tmp_path / "no-model")},
                "data": {"train": "d.jsonl", "eval": "d.jsonl"},
                "evaluate": {"metric": metric},
            }
        )
    )
    return run


def test_custom_metric_from_a_run_dir_config_needs_trust(tmp_path):
    marker = tmp_path / "ran"
    metric_file = tmp_path / "metric.py"
    metric_file.write_text(f"open({str(marker)!r}, 'w').write('ran')\ndef score(p, r):\n    return 1.0\n")
    run = _run_dir(tmp_path, f"{metric_file}:score")
    out = run_cli("evaluate", run)
    assert_user_error(out, "config.yaml", "--trust-config-code", "custom metric")
    assert not marker.exists()
    trusted = run_cli("evaluate", run, "--trust-config-code")  # goes past the check (then fails on the model)
    assert trusted.code == 2 and "--trust-config-code" not in trusted.message


def test_builtin_metric_from_a_run_dir_needs_no_trust(tmp_path):
    out = run_cli("evaluate", _run_dir(tmp_path, "exact_match"))
    assert out.code == 2 and "--trust-config-code" not in out.message  # fails later, on the missing model
