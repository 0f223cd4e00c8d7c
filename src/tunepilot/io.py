"""Files written safely: atomic writes (write, fsync, rename: a kill never leaves half a file), UTF-8
reads that name the file, a run-directory lock, and one translation of "the disk said no" (full,
read-only, a file where a directory should be) into a `UserError` that names the path.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunepilot.errors import ExitCode, UserError

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}


def _default_mode() -> int:
    """The mode a plain open() would give a new file (mkstemp's 0600 is for secrets, not results)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _default_dir_mode() -> int:
    """The mode a plain mkdir() would give a new directory (mkdtemp's 0700 ignores the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def write_error(path: str | Path, error: OSError) -> UserError | None:
    """The user-facing error for a failed write to `path`, or None when it is not the user's to fix."""
    code = error.errno
    if code in _DISK_FULL:
        return UserError(
            f"{path}: no space left on the device while writing ({error.strerror}); "
            "free some space or choose an output path on another disk"
        )
    if code in _DENIED:
        return UserError(f"{path}: cannot write here ({error.strerror}); choose a path you can write to")
    if code == errno.ENOTDIR:
        return UserError(f"{path}: a part of this path is a file, not a directory; choose another path")
    if code == errno.EISDIR:
        return UserError(f"{path}: is a directory; give the path of a file to write")
    if code == errno.EEXIST:
        return UserError(f"{path}: exists and is a file, not a directory; choose another path")
    return None


def _reraise(path: str | Path, error: OSError) -> None:
    user = write_error(path, error)
    if user is not None:
        raise user from error
    raise error


def _check_space(path: Path, error: BaseException) -> None:
    """Libraries (torch, safetensors) report a full disk as their own error: check the disk itself."""
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return
    if free < 1 << 20:
        raise UserError(
            f"{path}: no space left on the device while writing ({type(error).__name__}); "
            "free some space or choose an output path on another disk"
        ) from error


def ensure_dir(path: str | Path, what: str = "output directory") -> Path:
    """`mkdir -p`, with a clear error for a file in the way, a read-only disk or no permission."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: is a file, not a directory; choose another {what}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _reraise(path, e)
    return path


def read_text(path: str | Path, what: str = "file") -> str:
    """A text file as UTF-8 (a BOM is dropped); a missing, unreadable or non-UTF-8 file is a UserError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise UserError(f"{path}: {what} not found; check the path") from e
    except IsADirectoryError as e:
        raise UserError(f"{path}: is a directory; give the path of a {what}") from e
    except OSError as e:
        raise UserError(f"{path}: cannot read the {what} ({e.strerror or e}); check its permissions") from e
    return decode_utf8(data, path, what)


def decode_utf8(data: bytes, path: str | Path, what: str = "file", first_line: int = 1) -> str:
    """`data` as UTF-8 text; else a UserError naming `path`, the line (counted from `first_line`) and byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + first_line
        hint = "it looks like UTF-16; " if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise UserError(
            f"{path}:{line}: the {what} is not UTF-8 text (byte {e.start}: {e.reason}); {hint}save it as UTF-8"
        ) from e


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory; give the path of a file to write")
    ensure_dir(path.parent, "output directory")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    except OSError as e:
        _reraise(path, e)
    try:
        os.fchmod(fd, _default_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        _reraise(path, e)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_dir(path: str | Path, fill: Callable[[Path], None]) -> None:
    """Build a directory in a temporary sibling with `fill(tmpdir)`, then swap it into place.

    The directory gets the mode a plain mkdir would (the umask applies), not mkdtemp's 0700.
    """
    path = Path(path)
    ensure_dir(path.parent, "output directory")
    try:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"))
        os.chmod(tmp, _default_dir_mode())
    except OSError as e:
        _reraise(path, e)
    try:
        fill(tmp)
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _reraise(path, e)
    except (RuntimeError, ValueError) as e:  # torch/safetensors wrap a failed write in their own types
        try:
            _check_space(path.parent, e)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_stale_temps(directory: str | Path) -> list[Path]:
    """Remove the temporary siblings (`.NAME.PID.XXXX.tmp`) that a killed writer left in `directory`:
    only those whose pid is no longer running, so a live writer's work in progress is kept."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for tmp in directory.glob(".*.tmp"):
        pid = next((int(p) for p in reversed(tmp.name.split(".")[:-2]) if p.isdigit()), None)
        if pid is None or pid_alive(pid):
            continue
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (killed, not yet reaped by its parent) still answers kill(0); /proc says it is dead
    try:
        return ") Z" not in Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True


class RunDirLock:
    """One process per run directory: `run.lock` holds the owner's pid under an exclusive flock.

    The kernel releases the flock when its holder dies, so a dead holder's lock is taken over at
    once; a live one is a UserError naming its pid. The pid in the file is for that message only.
    Used as a context manager; released (and the file removed) on exit, by its holder only.
    """

    def __init__(
        self,
        directory: str | Path,
        name: str = "run.lock",
        what: str = "tunepilot train",
        hint: str = "wait for it to finish, or choose another output_dir",
    ):
        self.dir = Path(directory)
        self.path = self.dir / name
        self.what = what
        self.hint = hint
        self._fd: int | None = None

    def __enter__(self) -> RunDirLock:
        import fcntl

        ensure_dir(self.dir, "output_dir")
        for _ in range(10):  # the file may be removed by its holder between our open and our flock
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, _default_mode())
            except OSError as e:
                _reraise(self.path, e)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                raise UserError(
                    f"{self.dir}: another {self.what} (pid {holder or 'unknown'}) is using this directory; {self.hint}",
                    ExitCode.USAGE,
                ) from None
            if _same_file(fd, self.path):
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
                os.fsync(fd)
                self._fd = fd
                return self
            os.close(fd)  # we locked a file its holder had just removed: try the new one
        raise RuntimeError(f"{self.path}: could not take the lock (the file kept changing)")

    def __exit__(self, *exc: object) -> None:
        if self._fd is None:
            return
        if _same_file(self._fd, self.path):
            self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


def _read_pid(fd: int, wait_s: float = 1.0) -> int | None:
    """The holder's pid from the lock file. A holder writes it just after taking the lock, so a
    racer refused in between finds the file empty (or the dead holder's old pid being overwritten):
    it reads again for up to `wait_s` (load on the machine can stretch that moment)."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        try:
            text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
            pid = int(text) if text else None
        except (OSError, ValueError):
            pid = None
        if (pid is not None and _pid_alive(pid)) or time.monotonic() >= deadline:
            return pid
        time.sleep(0.02)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
