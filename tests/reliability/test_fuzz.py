"""Every command against a corpus of bad inputs: one message and exit 2 (1 where a command reports
findings), never a traceback, and with --json a well-formed envelope on stdout.

The corpus is generated here: non-UTF-8 text, binary junk, empty files, UTF-16, wrong YAML types,
huge or impossible numbers (1e30, -1, nan, inf) in every numeric config key, output paths that are a
directory or sit under a file, corrupt Parquet, GGUF, safetensors and SQLite files, missing files and
directories where files are expected. Each case is run in-process (typer's CliRunner), with and
without --json. Nothing trains: where a command needs a model it is the tiny one of
tunepilot.testing, and a config with a bad number names a model path that does not exist, so a
value that is (rightly) accepted still stops before training, at the model.
"""

from __future__ import annotations

import json
import math
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tunepilot.cli.app import app
from tunepilot.config import RunConfig

# ---------------------------------------------------------------------------------- the corpus
# every kind of bad file, written by Corpus.bad(kind)
BAD_FILES = (
    "missing",
    "empty",
    "not_utf8",
    "utf16",
    "binary",
    "directory",
    "under_a_file",
    "yaml_list",
    "yaml_scalar",
    "json_junk",
    "parquet",
    "gguf",
    "safetensors",
    "sqlite",
)
BAD_OUTPUTS = ("existing_directory", "under_a_file")
BAD_NUMBERS = (1e30, -1, math.nan, math.inf)


def numeric_keys() -> list[tuple[str, str]]:
    """(section, key) of every int or float field of the run config."""
    keys = []
    for section, f in RunConfig.model_fields.items():
        fields = getattr(f.annotation, "model_fields", {})
        for key, sub in fields.items():
            text = str(sub.annotation)
            if ("int" in text or "float" in text) and "dict" not in text and "Literal" not in text and key != "dtype":
                keys.append((section, key))
    return keys


@dataclass
class Corpus:
    root: Path
    model: Path
    data: Path
    made: dict[str, Path] = field(default_factory=dict)

    def bad(self, kind: str, suffix: str = ".yaml") -> Path:
        """A bad input file of `kind`, named with `suffix` (so a reader chosen by extension meets it)."""
        key = f"{kind}{suffix}"
        if key in self.made:
            return self.made[key]
        path = self.root / "bad" / f"{kind}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = random.Random(kind)
        if kind == "missing":
            path = self.root / "bad" / "no-such" / f"file{suffix}"
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "not_utf8":
            path.write_bytes(b"model: {name_or_path: caf\xe9}\n\xff\xfe\x00junk\n")
        elif kind == "utf16":
            path.write_bytes("model: {name_or_path: m}\n".encode("utf-16"))
        elif kind == "binary":
            path.write_bytes(bytes(rng.randrange(256) for _ in range(4096)))
        elif kind == "directory":
            path.mkdir(exist_ok=True)
        elif kind == "under_a_file":
            (self.root / "bad" / "a-file").write_text("x")
            path = self.root / "bad" / "a-file" / f"inside{suffix}"
        elif kind == "yaml_list":
            path.write_text("- 1\n- [2, 3]\n- {a: b}\n")
        elif kind == "yaml_scalar":
            path.write_text("42\n")
        elif kind == "json_junk":
            path.write_text('{"learning_rate": 1e-4, "steps": [1, 2,\n')
        elif kind == "parquet":
            path.write_bytes(b"PAR1" + bytes(rng.randrange(256) for _ in range(64)) + b"PAR1")
        elif kind == "gguf":
            path.write_bytes(b"GGUF\x03\x00\x00\x00" + struct.pack("<QQ", 2**40, 7) + b"junk")
        elif kind == "safetensors":
            path.write_bytes(struct.pack("<Q", 2**50) + b'{"w": {"dtype": "F32"')
        elif kind == "sqlite":
            path.write_bytes(b"SQLite format 3\x00" + bytes(rng.randrange(256) for _ in range(2048)))
        else:
            raise ValueError(kind)
        self.made[key] = path
        return path

    def bad_output(self, kind: str, name: str) -> Path:
        if kind == "existing_directory":
            path = self.root / "out" / name
            path.mkdir(parents=True, exist_ok=True)
            (path / "keep.txt").write_text("not ours")
            return path
        (self.root / "out").mkdir(exist_ok=True)
        (self.root / "out" / "a-file").write_text("x")
        return self.root / "out" / "a-file" / name

    def config(self, name: str, model: Path | str | None = None, **sections) -> Path:
        raw = {
            "model": {"name_or_path": str(model or self.model)},
            "data": {"train": str(self.data), "cutoff_len": 64},
            "train": {"device": "cpu", "max_steps": 1},
            "output": {"output_dir": str(self.root / "runs" / name)},
        }
        for section, values in sections.items():
            raw.setdefault(section, {}).update(values)
        path = self.root / "configs" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(raw))
        return path

    def sweep(self, name: str, curves: Path | None = None, **top) -> Path:
        spec = {
            "space": {"learning_rate": {"low": 0.001, "high": 0.1, "log": True}},
            "engine": {"name": "replay", "curves": str(curves or self.curves)},
            "budget": {"n_trials": 2},
            **top,
        }
        path = self.root / "sweeps" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(spec))
        return path

    @property
    def curves(self) -> Path:
        path = self.root / "curves.jsonl"
        if not path.exists():
            rows = [
                {"learning_rate": lr, "total_model_steps": 2, "learning_curves": {"acc": [[1, 0.5], [2, 0.6 + lr]]}}
                for lr in (0.001, 0.01, 0.1)
            ]
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    @property
    def missing_model(self) -> Path:
        return self.root / "no-such-model"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_model) -> Corpus:
    from tunepilot.testing import write_arithmetic_chat

    root = tmp_path_factory.mktemp("fuzz")
    return Corpus(root, tiny_model, write_arithmetic_chat(root / "train.jsonl", 8))


# ---------------------------------------------------------------------------------- the cases
@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[Corpus], list]
    codes: tuple[int, ...] = (2,)


FINDINGS = (1, 2)  # commands that report findings (validate, diagnose) may exit 1 on a readable bad input
CASES: list[Case] = []


def case(id: str, argv: Callable[[Corpus], list], codes: tuple[int, ...] = (2,)) -> None:
    CASES.append(Case(id, argv, codes))


def _bad_file_cases() -> None:
    for k in BAD_FILES:
        b = k  # bound per iteration
        case(f"validate-data-{b}", lambda c, b=b: ["validate", c.bad(b, ".jsonl")], FINDINGS)
        case(f"validate-parquet-{b}", lambda c, b=b: ["validate", c.bad(b, ".parquet")], FINDINGS)
        case(f"validate-config-{b}", lambda c, b=b: ["validate", c.data, "--config", c.bad(b)], FINDINGS)
        case(f"validate-eval-{b}", lambda c, b=b: ["validate", c.data, "--eval", c.bad(b, ".jsonl")], FINDINGS)
        case(f"validate-model-{b}", lambda c, b=b: ["validate", c.data, "--model", c.bad(b, ".gguf")], FINDINGS)
        case(f"recommend-model-{b}", lambda c, b=b: ["recommend", "--model", c.bad(b, ".json"), "--data", c.data])
        case(f"recommend-gguf-{b}", lambda c, b=b: ["recommend", "--model", c.bad(b, ".gguf"), "--data", c.data])
        case(f"recommend-data-{b}", lambda c, b=b: ["recommend", "--model", c.model, "--data", c.bad(b, ".jsonl")])
        case(f"lr-find-config-{b}", lambda c, b=b: ["lr-find", c.bad(b)])
        case(f"sweep-file-{b}", lambda c, b=b: ["sweep", c.bad(b), "--dir", c.root / "sw" / f"file-{b}"])
        case(
            f"sweep-curves-{b}",
            lambda c, b=b: ["sweep", c.sweep(f"curves-{b}", c.bad(b, ".jsonl")), "--dir", c.root / "sw" / f"c-{b}"],
        )
        case(f"train-config-{b}", lambda c, b=b: ["train", c.bad(b)])
        case(f"train-model-{b}", lambda c, b=b: ["train", c.config(f"model-{b}", c.bad(b, ".gguf"))])
        case(
            f"transfer-proxy-{b}",
            lambda c, b=b: (
                ["transfer", "--proxy-model", c.bad(b, ".json"), "--target-model", c.model]
                + ["--config", c.config("transfer")]
            ),
        )
        case(
            f"transfer-config-{b}",
            lambda c, b=b: ["transfer", "--proxy-model", c.model, "--target-model", c.model, "--config", c.bad(b)],
        )
        case(f"diagnose-{b}", lambda c, b=b: ["diagnose", c.bad(b, ".jsonl")], FINDINGS)
        case(f"diagnose-state-{b}", lambda c, b=b: ["diagnose", c.bad(b, ".json")], FINDINGS)
        case(f"evaluate-target-{b}", lambda c, b=b: ["evaluate", c.bad(b), "--limit", 1])
        case(f"evaluate-data-{b}", lambda c, b=b: ["evaluate", c.model, "--base", "--data", c.bad(b, ".jsonl")])
        case(f"report-{b}", lambda c, b=b: ["report", c.bad(b, "")])
        case(f"export-{b}", lambda c, b=b: ["export", c.bad(b, ""), "--out", c.root / "export" / f"src-{b}"])


def _run_dir(c: Corpus, name: str, files: dict[str, bytes]) -> Path:
    """A run or sweep directory holding `files` (relative path -> bytes)."""
    path = c.root / "dirs" / name
    for rel, content in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(content)
    path.mkdir(parents=True, exist_ok=True)
    return path


JUNK = {
    "not_utf8": b"\xff\xfe caf\xe9\n",
    "binary": bytes(random.Random(1).randrange(256) for _ in range(512)),
    "empty": b"",
    "wrong_type": b"- just\n- a list\n",
}


def _damaged_dir_cases() -> None:
    for name in JUNK:
        n = name
        case(
            f"diagnose-metrics-{n}",
            lambda c, n=n: ["diagnose", _run_dir(c, f"dm-{n}", {"metrics.jsonl": JUNK[n]})],
            FINDINGS,
        )
        case(
            f"evaluate-config-yaml-{n}",
            lambda c, n=n: ["evaluate", _run_dir(c, f"ec-{n}", {"config.yaml": JUNK[n]}), "--limit", 1],
        )
        case(
            f"evaluate-adapter-{n}",
            lambda c, n=n: [
                "evaluate",
                _run_dir(
                    c, f"ea-{n}", {"config.yaml": c.config("ea").read_bytes(), "adapter/adapter_config.json": JUNK[n]}
                ),
                "--limit",
                1,
            ],
        )
        case(f"report-study-db-{n}", lambda c, n=n: ["report", _run_dir(c, f"rs-{n}", {"study.db": JUNK[n]})])
        case(f"report-sweep-json-{n}", lambda c, n=n: ["report", _run_dir(c, f"rj-{n}", {"sweep.json": JUNK[n]})])
        case(
            f"export-run-{n}",
            lambda c, n=n: [
                "export",
                _run_dir(c, f"xr-{n}", {"config.yaml": JUNK[n], "adapter/adapter_model.safetensors": JUNK[n]}),
                "--out",
                c.root / "export" / f"run-{n}",
            ],
        )
        case(
            f"export-sweep-{n}",
            lambda c, n=n: [
                "export",
                _run_dir(c, f"xs-{n}", {"sweep.json": JUNK[n]}),
                "--out",
                c.root / "export" / f"sw-{n}",
            ],
        )
        case(
            f"sweep-existing-study-db-{n}",
            lambda c, n=n: [
                "sweep",
                c.sweep("db"),
                "--dir",
                _run_dir(c, f"sd-{n}", {"study.db": JUNK[n] or b"not sqlite"}),
            ],
        )


def _bad_output_cases() -> None:
    for kind in BAD_OUTPUTS:
        k = kind
        case(
            f"recommend-output-{k}",
            lambda c, k=k: ["recommend", "--model", c.model, "--data", c.data, "-o", c.bad_output(k, "rec.yaml")],
        )
        case(
            f"train-output-{k}",
            lambda c, k=k: (
                ["train", c.config(f"out-{k}", c.missing_model, output={"output_dir": str(c.bad_output(k, "run"))})]
                + ([] if k == "under_a_file" else ["--resume"])
            ),
        )  # an existing non-run directory: --resume finds no checkpoint
        case(
            f"lr-find-run-dir-{k}",
            lambda c, k=k: (
                ["lr-find", c.config("lrf"), "--run-dir", c.bad_output(k, "lrf-run")]
                + ([] if k == "under_a_file" else ["--steps", 0])
            ),
        )
        case(
            f"lr-find-plot-{k}",
            lambda c, k=k: ["lr-find", c.config("lrf", c.missing_model), "--plot", c.bad_output(k, "p.png")],
        )
        case(
            f"sweep-dir-{k}",
            lambda c, k=k: [
                "sweep",
                c.sweep("outdir"),
                "--dir",
                c.bad_output(k, "sw") if k == "under_a_file" else c.bad("not_utf8", ".dir"),
            ],
        )
        case(
            f"diagnose-plot-{k}",
            lambda c, k=k: [
                "diagnose",
                _run_dir(c, "dp", {"metrics.jsonl": b'{"step": 1, "loss": 1.0, "kind": "train"}\n'}),
                "--plot",
                c.bad_output(k, "d.png") if k == "under_a_file" else c.root / "out",
            ],
            FINDINGS,
        )
        case(f"report-out-{k}", lambda c, k=k: ["report", _run_dir(c, "ro", {}), "--out", c.bad_output(k, "r.html")])
        case(f"export-out-{k}", lambda c, k=k: ["export", _run_dir(c, "eo", {}), "--out", c.bad_output(k, "exp")])
        case(
            f"transfer-output-{k}",
            lambda c, k=k: [
                "transfer",
                "--proxy-model",
                c.model,
                "--target-model",
                c.model,
                "--config",
                c.config("tr"),
                "-o",
                c.bad_output(k, "t.yaml"),
            ],
        )
        case(
            f"evaluate-out-{k}",
            lambda c, k=k: ["evaluate", c.missing_model, "--base", "--out", c.bad_output(k, "e.jsonl")],
        )


def _number_cases() -> None:
    for section, key in numeric_keys():
        for value in BAD_NUMBERS:
            s, k, v = section, key, value
            case(
                f"train-{s}.{k}={v}",
                lambda c, s=s, k=k, v=v: ["train", c.config(f"n-{s}-{k}-{v}", c.missing_model, **{s: {k: v}})],
            )
    for key in ("learning_rate", "max_steps", "num_train_epochs", "per_device_train_batch_size"):
        for value in BAD_NUMBERS:
            k, v = key, value
            case(
                f"lr-find-train.{k}={v}",
                lambda c, k=k, v=v: ["lr-find", c.config(f"l-{k}-{v}", c.missing_model, train={k: v})],
            )
    for value in (-1, 0, math.nan, math.inf, 1e30):
        v = value
        case(
            f"recommend-gpu-memory={v}",
            lambda c, v=v: ["recommend", "--model", c.model, "--data", c.data, "--gpu-memory", v],
        )
        case(f"lr-find-start={v}", lambda c, v=v: ["lr-find", c.config("lrs", c.missing_model), "--start", v])
        case(f"lr-find-end={v}", lambda c, v=v: ["lr-find", c.config("lre", c.missing_model), "--end", v])
    for value in (-1, 0, 10**9):
        v = value
        case(f"lr-find-steps={v}", lambda c, v=v: ["lr-find", c.config("lrn", c.missing_model), "--steps", v])
        case(
            f"sweep-n-trials={v}",
            lambda c, v=v: (
                ["sweep", c.sweep("nt"), "--dir", c.root / "sw" / f"nt{v}", "--n-trials", v]
                if v < 1
                else ["sweep", c.sweep("nt-huge", budget={"n_trials": 1e30}), "--dir", c.root / "sw" / "nth"]
            ),
        )
        if v < 1:  # a huge cutoff is a legitimate (if wasteful) setting
            case(f"validate-cutoff-len={v}", lambda c, v=v: ["validate", c.data, "--cutoff-len", v], FINDINGS)


WRONG_SWEEPS = {
    "engine-list": {"engine": ["replay"]},
    "slots-word": {"engine": {"name": "replay", "curves": "CURVES", "slots": "four"}},
    "space-list": {"space": ["learning_rate"]},
    "range-reversed": {"space": {"learning_rate": {"low": 0.1, "high": 0.001}}},
    "range-nan": {"space": {"learning_rate": {"low": math.nan, "high": 0.1}}},
    "range-inf": {"space": {"learning_rate": {"low": 0.001, "high": math.inf, "log": True}}},
    "budget-string": {"budget": {"n_trials": "many"}},
    "budget-negative": {"budget": {"n_trials": -1, "max_hours": -1}},
    "sampler-number": {"sampler": 7},
    "pruner-unknown": {"pruner": "nope"},
    "objective-list": {"objective": ["val"]},
    "direction-wrong": {"objective": {"metric": "acc", "direction": "up"}},
    "enqueue-outside": {"enqueue": [{"learning_rate": 5.0}]},
    "unknown-key": {"spaec": {}},
    "storage-junk": {"storage": "not a url"},
    "storage-number": {"storage": 5},
    "base-missing": {"base": "/no/such/base.yaml", "engine": {"name": "standard"}},
}


def _wrong_type_cases() -> None:
    for name in WRONG_SWEEPS:
        n = name

        def argv(c: Corpus, n: str = n) -> list:
            top = json.loads(json.dumps(WRONG_SWEEPS[n]).replace('"CURVES"', json.dumps(str(c.curves))))
            return ["sweep", c.sweep(f"w-{n}", **top), "--dir", c.root / "sw" / f"w-{n}"]

        case(f"sweep-{n}", argv)
    for storage in ("notaurl", "sqlite:///BAD", "mysql+nodriver://u:p@h/db", "sqlite:////no/such/dir/x.db"):
        s = storage
        case(
            f"sweep-storage-{s[:12]}",
            lambda c, s=s: [
                "sweep",
                c.sweep("st"),
                "--dir",
                c.root / "sw" / "st",
                "--storage",
                s.replace("BAD", str(c.bad("sqlite", ".db"))),
            ],
        )
        case(
            f"report-storage-{s[:12]}",
            lambda c, s=s: [
                "report",
                _run_dir(c, "rst", {}),
                "--storage",
                s.replace("BAD", str(c.bad("sqlite", ".db"))),
            ],
        )
    wrong_configs = {
        "model-list": {"model": [1, 2]},
        "train-string": {"train": "fast"},
        "lr-word": {"train": {"learning_rate": "fast"}},
        "steps-float": {"train": {"max_steps": 2.5}},
        "target-number": {"method": {"lora_target": 5}},
        "unknown-method": {"method": {"finetuning_type": "magic"}},
        "device-list": {"train": {"device": ["cpu"]}},
        "data-missing": {"data": {"train": "/no/such/data.jsonl"}},
    }
    for name, sections in wrong_configs.items():
        n, secs = name, sections

        def cfg(c: Corpus, n: str = n, secs: dict = secs) -> Path:
            path = c.config(f"wc-{n}", c.missing_model)
            raw = yaml.safe_load(path.read_text())
            for sec, values in secs.items():
                raw[sec] = (
                    {**raw[sec], **values} if isinstance(values, dict) and isinstance(raw.get(sec), dict) else values
                )
            path.write_text(yaml.safe_dump(raw))
            return path

        case(f"train-{n}", lambda c, cfg=cfg: ["train", cfg(c)])
        case(f"lr-find-{n}", lambda c, cfg=cfg: ["lr-find", cfg(c)])
        case(f"validate-config-{n}", lambda c, cfg=cfg: ["validate", c.data, "--config", cfg(c)], FINDINGS)
        if n in ("train-string", "data-missing"):  # transfer reads the model, method and batch keys only
            continue
        case(
            f"transfer-config-{n}",
            lambda c, cfg=cfg: ["transfer", "--proxy-model", c.model, "--target-model", c.model, "--config", cfg(c)],
        )


_bad_file_cases()
_damaged_dir_cases()
_bad_output_cases()
_number_cases()
_wrong_type_cases()
COMMANDS = (
    "validate",
    "recommend",
    "lr-find",
    "sweep",
    "train",
    "transfer",
    "diagnose",
    "evaluate",
    "report",
    "export",
)


def test_the_corpus_covers_every_command_with_300_cases():
    assert len({c.id for c in CASES}) == len(CASES)
    assert len(CASES) * 2 >= 300  # each case runs with and without --json
    seen = {c.id for c in CASES}
    for command in COMMANDS:
        assert sum(i.startswith(f"{command}-") for i in seen) >= 10, command


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(corpus, case, as_json, monkeypatch):
    monkeypatch.setenv("TUNEPILOT_CACHE", str(corpus.root / "cache"))
    argv = [str(a) for a in case.argv(corpus)] + (["--json"] if as_json else [])
    result = CliRunner().invoke(app, argv)
    escaped = result.exception if not isinstance(result.exception, SystemExit) else None
    output = result.stdout + result.stderr
    assert escaped is None, f"{argv}: traceback {escaped!r}"
    assert "Traceback" not in output, output[-3000:]
    assert result.exit_code in case.codes, (argv, result.exit_code, output[-2000:])
    if as_json:
        body = json.loads(result.stdout)
        assert body["version"] == 1 and body["command"] == argv[0]
        assert body["exit_code"] == result.exit_code and body["ok"] is False
        if result.exit_code == 2:
            assert body["error"]["message"].strip()
    elif result.exit_code == 2:
        assert "error:" in result.stderr, output[-2000:]
