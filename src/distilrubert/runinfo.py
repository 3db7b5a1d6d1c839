"""What every run leaves behind: atomic output directories and ``run.json`` (config, versions, commit).

Output directories are built in a temporary sibling directory and renamed into place at the end, so a
crash or a bad input never leaves a half-written model or vocabulary where a good one is expected.
``--overwrite`` replaces only a directory this tool wrote (``run.json`` or training checkpoints), and never
the working directory, one of its parents or the home directory (:func:`check_replaceable`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_PACKAGES = ("distilrubert", "torch", "transformers", "tokenizers", "accelerate", "safetensors", "numpy")


def package_versions(extra: tuple[str, ...] = ()) -> dict[str, str | None]:
    """Installed versions of the packages a run depends on (``None`` when absent)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in (*_PACKAGES, *extra):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    """The commit of the distilrubert source checkout (with ``+dirty`` if modified), if it is one."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit


def command_line() -> str | None:
    """The ``distilrubert ...`` command line of this process, or ``None`` when called from Python."""
    if not sys.argv or Path(sys.argv[0]).name not in ("distilrubert", "__main__.py"):
        return None
    import shlex

    return "distilrubert " + shlex.join(sys.argv[1:])


def run_info(command: str, config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A record of a run: command, resolved config, versions, git commit, host and time."""
    return {
        "command": command,
        "argv": sys.argv,
        "config": config,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "host": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                 "cpus": os.cpu_count()},
        "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **extra,
    }


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, data: Any) -> None:
    """Atomically write ``data`` as pretty UTF-8 JSON."""
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")


_CHECKPOINT = re.compile(r"step-\d+$")  # OUTPUT/checkpoints/step-N: the trainer's layout


def written_by_us(path: str | Path) -> bool:
    """Whether ``path`` is an output of this tool: its ``run.json`` (a ``run_info`` record) or a training
    run's ``checkpoints/step-N`` directories."""
    path = Path(path)
    marker = path / "run.json"
    if marker.is_file():
        try:
            info = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(info, dict) and {"command", "config", "versions"} <= info.keys()
    checkpoints = path / "checkpoints"
    return checkpoints.is_dir() and any(_CHECKPOINT.match(p.name) and p.is_dir() for p in checkpoints.iterdir())


def check_replaceable(path: str | Path) -> None:
    """Raise ``ValueError`` unless the existing directory ``path`` may be deleted and replaced (``--overwrite``).

    Never the working directory or one of its parents (so never the filesystem root) or the home directory,
    whatever they hold; any other non-empty directory only if :func:`written_by_us` (a mistyped ``--output`` must not
    delete a user's files).
    """
    path = Path(path)
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise ValueError(f"--output {path}: is the working directory or one of its parents; it is never replaced "
                         "(name a new directory)")
    with contextlib.suppress(RuntimeError, KeyError):  # no home directory known
        if resolved == Path.home().resolve():
            raise ValueError(f"--output {path}: is the home directory; it is never replaced (name a new directory)")
    if path.is_dir() and any(path.iterdir()) and not written_by_us(path):
        raise ValueError(f"--output {path}: not written by distilrubert (no run.json, no checkpoints/step-N); "
                         "--overwrite replaces only its own outputs, so remove it yourself or name a new directory")


def check_output_dir(path: str | Path, overwrite: bool) -> Path:
    """Fail early (before any work) if ``path`` is a non-empty directory and ``overwrite`` is off, or is a
    directory that may not be replaced (:func:`check_replaceable`). Returns the path made absolute."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"--output {path} exists and is not a directory")
    if path.is_dir():
        if any(path.iterdir()) and not overwrite:
            raise FileExistsError(f"--output {path} already exists and is not empty (pass --overwrite to replace it)")
        check_replaceable(path)
    # Absolute (not resolved: a symlinked output is replaced as a link) so that `.` or `a/..` has a name
    # for the temporary sibling.
    return Path(os.path.abspath(path))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def sweep_stale_partials(root: str | Path) -> list[Path]:
    """Remove the ``.NAME.partial-PID`` build directories under ``root`` whose process is gone.

    A build that fails removes its own; one that was killed (SIGKILL, power loss) cannot, and its
    directory would hold the disk space for ever. Directories of live processes (another run building the
    same cache) are left alone. Returns what was removed.
    """
    removed = []
    root = Path(root)
    if not root.is_dir():
        return removed
    for path in root.glob(".*.partial-*"):
        pid = path.name.rpartition("-")[2]
        if path.is_dir() and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        logger.info("removed %d unfinished build directories of runs that were killed: %s", len(removed),
                    ", ".join(p.name for p in removed))
    return removed


@contextlib.contextmanager
def atomic_output_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block finishes without error.

    Example:
        >>> with atomic_output_dir("/tmp/out", overwrite=True) as tmp:  # doctest: +SKIP
        ...     (tmp / "vocab.txt").write_text("...")
    """
    path = check_output_dir(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial"))
    try:
        yield tmp
        old = None
        if path.exists():
            check_output_dir(path, overwrite)  # it may have been filled while the block ran
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:
                os.replace(old, path)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
