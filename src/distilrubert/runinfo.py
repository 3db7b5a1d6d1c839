"""What every run leaves behind: atomic output directories and ``run.json`` (config, versions, commit).

Output directories are built in a temporary sibling directory and renamed into place at the end, so a
crash or a bad input never leaves a half-written model or vocabulary where a good one is expected.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import json
import logging
import os
import platform
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


def check_output_dir(path: str | Path, overwrite: bool) -> Path:
    """Fail early (before any work) if ``path`` is a non-empty directory and ``overwrite`` is off."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"--output {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"--output {path} already exists and is not empty (pass --overwrite to replace it)")
    return path


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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
