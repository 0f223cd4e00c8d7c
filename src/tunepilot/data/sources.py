"""Where a split's records come from: data files, or LLaMA-Factory dataset names.

`data.train` / `data.eval` is a path, or one or more comma-separated names of datasets described in
`<dataset_dir>/dataset_info.json`, the LLaMA-Factory convention (`dataset: alpaca_en_demo,identity`,
`dataset_dir: data`, its default). An entry gives its file and how to read it:

    "my_chat": {
      "file_name": "chat.json",                  # a file or folder inside dataset_dir
      "formatting": "sharegpt",                  # alpaca (default) or sharegpt
      "columns": {"messages": "conversations", "system": "system"},
      "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}
    }

Each name becomes a `Source` with its own format and column mapping, so an alpaca and a sharegpt
dataset train together (concatenated in the order named, as LLaMA-Factory's mix_strategy concat).
Hub datasets (hf_hub_url, ms_hub_url, script_url), preference data (ranking) and multimodal
columns are refused with what to do instead.

Relative paths in a config file mean the same thing wherever tunepilot is run from: they are looked
up next to the config file first, then in the working directory (`resolve_data_paths`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunepilot.errors import UserError

INFO_FILE = "dataset_info.json"
DEFAULT_DATASET_DIR = "data"  # LLaMA-Factory's default dataset_dir
# LLaMA-Factory `columns` keys -> tunepilot canonical fields (tunepilot.data.formats.CANONICAL).
LF_COLUMNS = {
    "prompt": "prompt",
    "query": "query",
    "response": "response",
    "history": "history",
    "messages": "messages",
    "system": "system",
}
LF_UNSUPPORTED_COLUMNS = ("tools", "images", "videos", "audios", "chosen", "rejected", "kto_tag")
LF_TAGS = ("role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag")
LF_REMOTE = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")


@dataclass(frozen=True)
class Source:
    """One readable dataset: a path, and either the config's format/columns or an entry's own."""

    path: str
    name: str | None = None  # the dataset_info.json name, when it came from one
    format: str | None = None  # None: the config's data.format
    fields: dict[str, str] | None = None  # canonical field -> column (an entry's exact mapping)
    tags: dict[str, str] = field(default_factory=dict)  # sharegpt role/content keys and role values


def split_names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def dataset_names(value: str) -> list[str]:
    """The datasets data.train names, split as `sources` splits them: an existing path is one
    dataset even when its name holds a comma."""
    return [value] if Path(value).exists() else split_names(value)


def is_llamafactory_dir(path: Path) -> bool:
    """A folder whose dataset_info.json is LLaMA-Factory's (a mapping of names to entries), not the
    one `datasets.save_to_disk` writes (citation, features, ... next to a state.json)."""
    info = _load_info(path / INFO_FILE) if (path / INFO_FILE).is_file() else None
    return (
        isinstance(info, dict)
        and bool(info)
        and all(
            isinstance(v, dict) and any(k in v for k in ("file_name", "formatting", "columns", *LF_REMOTE))
            for v in info.values()
        )
    )


def _load_info(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: invalid JSON ({e.msg}); fix the dataset_info.json there") from e


def read_info(dataset_dir: Path) -> dict[str, dict[str, Any]]:
    path = dataset_dir / INFO_FILE
    if not path.is_file():
        raise UserError(f"{path}: not found; dataset names need a LLaMA-Factory dataset_info.json in dataset_dir")
    info = _load_info(path)
    if not isinstance(info, dict) or not all(isinstance(v, dict) for v in info.values()):
        raise UserError(f'{path}: expected an object of dataset names to entries ({{"name": {{"file_name": ...}}}})')
    return info


def dataset_dir_of(settings) -> Path:
    return Path(settings.dataset_dir or DEFAULT_DATASET_DIR)


def sources(settings, which: str = "train") -> list[Source]:
    """The sources of data.train or data.eval: the path itself, or each named dataset's entry."""
    value = settings.train if which == "train" else settings.eval
    if value is None:
        return []
    if Path(value).exists() or "," not in value and not _has_info(settings):
        return [Source(value)]
    info_dir = dataset_dir_of(settings)
    info = read_info(info_dir) if (info_dir / INFO_FILE).is_file() else {}
    out = []
    for item in split_names(value):
        if item in info:
            out.append(entry_source(item, info[item], info_dir))
        elif Path(item).exists():
            out.append(Source(item))
        else:
            raise UserError(_not_found(f"data.{which}", item, info_dir, info))
    return out


def _has_info(settings) -> bool:
    return (dataset_dir_of(settings) / INFO_FILE).is_file()


def _not_found(key: str, item: str, info_dir: Path, info: dict) -> str:
    if info:
        names = ", ".join(sorted(info)[:12]) + (" ..." if len(info) > 12 else "")
        return f"{key}: {item!r} is neither a file nor a dataset of {info_dir / INFO_FILE} (it has: {names})"
    return (
        f"{key}: {item!r} does not exist; give the path of your data file, or a dataset name with "
        f"dataset_dir pointing at a folder holding {INFO_FILE}"
    )


def entry_source(name: str, entry: dict[str, Any], dataset_dir: Path) -> Source:
    """A dataset_info.json entry as a Source; anything tunepilot cannot read as LLaMA-Factory would is
    refused here, naming the file and the entry."""
    where = f"{dataset_dir / INFO_FILE}: dataset {name!r}"
    remote = [k for k in LF_REMOTE if entry.get(k)]
    if remote and not entry.get("file_name"):
        raise UserError(
            f"{where}: {remote[0]} datasets are not downloaded by tunepilot; download it and set "
            "file_name to the local file"
        )
    if not entry.get("file_name"):
        raise UserError(f"{where}: has no file_name; give the data file's name inside {dataset_dir}")
    if entry.get("ranking"):
        raise UserError(f"{where}: ranking (preference) data is for DPO/RM stages; tunepilot trains sft only")
    if entry.get("num_samples") is not None:
        raise UserError(f"{where}: num_samples is not supported; use max_samples in the config")
    fmt = entry.get("formatting", "alpaca")
    if fmt not in ("alpaca", "sharegpt"):
        raise UserError(f"{where}: formatting {fmt!r} is not alpaca or sharegpt")
    columns = entry.get("columns") or {}
    bad = [k for k in columns if k in LF_UNSUPPORTED_COLUMNS and columns[k]]
    unknown = [k for k in columns if k not in LF_COLUMNS and k not in LF_UNSUPPORTED_COLUMNS]
    if bad or unknown:
        what = f"columns {bad} are not supported (text SFT only)" if bad else f"unknown columns {unknown}"
        raise UserError(f"{where}: {what}; map only {', '.join(LF_COLUMNS)}")
    tags = entry.get("tags") or {}
    unknown_tags = [k for k in tags if k not in LF_TAGS]
    if unknown_tags:
        raise UserError(f"{where}: unknown tags {unknown_tags}; use {', '.join(LF_TAGS)}")
    path = Path(entry["file_name"])
    path = path if path.is_absolute() else dataset_dir / path
    if not path.exists():
        raise UserError(f"{where}: file_name {entry['file_name']!r} not found in {dataset_dir}")
    return Source(str(path), name, fmt, _fields(fmt, columns), {k: str(v) for k, v in tags.items()})


def _fields(fmt: str, columns: dict[str, str]) -> dict[str, str]:
    """LLaMA-Factory's defaults, exactly: alpaca reads instruction/input/output, and system or
    history only when mapped; sharegpt reads conversations, and a system column only when mapped."""
    if fmt == "alpaca":
        fields = {"prompt": "instruction", "query": "input", "response": "output"}
    else:
        fields = {"messages": "conversations"}
    fields.update({LF_COLUMNS[k]: v for k, v in columns.items() if k in LF_COLUMNS and v})
    return fields


def describe(settings, which: str = "train") -> str:
    """How a split is named in messages: its path, or `name (file), ...`."""
    srcs = sources(settings, which)
    return ", ".join(f"{s.name} ({s.path})" if s.name else s.path for s in srcs)


# --------------------------------------------------------------------------------- config paths
def _resolve_one(value: str, root: Path | None) -> str | None:
    """A relative path next to the config file, else in the working directory; None if neither."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p) if p.exists() else None
    if root is not None and (root / p).exists():
        return str((root / p).resolve())
    if p.exists():
        return str(p.resolve())
    return None


def resolve_data_paths(data: dict[str, Any], root: Path | None, report: bool = True) -> list[str]:
    """Make data.train / data.eval / data.dataset_dir absolute, in place (see the module doc); names
    of dataset_info.json datasets stay names. Returns the problems (with `report`)."""
    problems: list[str] = []
    where = f"the config file's folder ({root}) or " if root is not None else ""
    cwd = Path.cwd()
    dataset_dir = data.get("dataset_dir")
    if isinstance(dataset_dir, str):
        found = _resolve_one(dataset_dir, root)
        if found is None:
            problems.append(
                f"data.dataset_dir: {dataset_dir!r} is not a folder in {where}the working directory "
                f"({cwd}); give the folder holding {INFO_FILE}"
            )
        else:
            data["dataset_dir"] = found
    elif dataset_dir is None and root is not None and (root / DEFAULT_DATASET_DIR / INFO_FILE).is_file():
        data["dataset_dir"] = str((root / DEFAULT_DATASET_DIR).resolve())
    info_dir = Path(data.get("dataset_dir") or DEFAULT_DATASET_DIR)
    names = set(_names_in(info_dir))
    for key in ("train", "eval"):
        value = data.get(key)
        if not isinstance(value, str):
            continue
        whole = _resolve_one(value, root)
        if whole is not None:
            data[key] = whole
            continue
        items, missing = [], []
        for item in split_names(value):
            found = item if item in names else _resolve_one(item, root)
            items.append(found or item)
            if found is None:
                missing.append(item)
        data[key] = ",".join(items)
        for item in missing:
            hint = (
                f"nor a dataset of {info_dir / INFO_FILE}"
                if names
                else f"(and no {INFO_FILE} in {info_dir} names it as a dataset)"
            )
            problems.append(
                f"data.{key}: {item!r} does not exist in {where}the working directory ({cwd}) {hint}; "
                "give the path of your data file"
            )
    return problems if report else []


def _names_in(dataset_dir: Path) -> list[str]:
    path = dataset_dir / INFO_FILE
    if not path.is_file():
        return []
    info = _load_info(path)
    return list(info) if isinstance(info, dict) else []
