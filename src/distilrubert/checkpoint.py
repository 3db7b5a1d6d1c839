"""Training checkpoints (``OUTPUT/checkpoints/step-N``) that hold no pickles, with a manifest, verified at resume.

A checkpoint is only safetensors and JSON, so loading one never runs code from it (accelerate's
``save_state``/``load_state`` pickle the RNG states and registered objects and load them with
``weights_only=False``: a planted file would run when the run resumes). The files:

* ``model.safetensors``: the trainable module; ``optimizer.safetensors`` + ``optimizer.json``: the
  optimizer's tensors and the rest of its state (param groups, scalars); ``scheduler.json``;
  ``scaler.json`` (fp16 only);
* ``rng_state_R.json`` (Python, NumPy) and ``rng_state_R.safetensors`` (torch CPU, CUDA) per process R;
* ``trainer_state.json`` (step, epoch, batch in epoch, tokens, ...), ``settings.json`` (the options that
  define the run, compared at resume: :func:`settings_differences`);
* ``manifest.json``, written last: every other file's size and sha256.

Any other file in a checkpoint is refused by name (:func:`check_files`), whatever the manifest says. A
checkpoint whose files do not match its manifest (truncated, missing, no manifest) is corrupt:
:func:`select_checkpoint` warns and falls back to the previous one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = 1
STEP_DIR = re.compile(r"^step-(\d+)$")
_FIXED = ("model.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.json", "trainer_state.json",
          "settings.json")
_KNOWN = re.compile(r"^(model\.safetensors|optimizer\.(safetensors|json)|scheduler\.json|scaler\.json|"
                    r"trainer_state\.json|settings\.json|manifest\.json|rng_state_\d+\.(json|safetensors))$")
# Options that steer a run without defining what it trains (a resumed run may change them freely).
RUN_CONTROL = frozenset({"max_steps", "eval_every", "save_every", "log_every", "progress", "resume", "overwrite",
                         "force_resume", "output", "keep_checkpoints", "tensorboard", "report_to", "cache_dir",
                         "fused_kl"})


class CorruptCheckpointError(ValueError):
    """A checkpoint's files do not match its manifest (a fallback to an older checkpoint is safe)."""


def _dump(path: Path, data: Any) -> None:
    # No ``default=``: a value JSON cannot hold is a bug to find at the first save, not a string in the file.
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(data, indent=1))
        handle.flush()
        os.fsync(handle.fileno())


def _load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _fsync(path: Path) -> None:
    """fsync a file or (POSIX) a directory, so a rename that follows cannot publish unwritten data."""
    with contextlib.suppress(OSError):  # directories cannot be opened on Windows
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _save_tensors(path: Path, tensors: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))
    _fsync(path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def write_rng_state(directory: Path, rank: int, device_type: str) -> None:
    """This process's Python, NumPy (JSON) and torch (safetensors) RNG states."""
    import torch

    version, keys, gauss = random.getstate()
    name, mt, pos, has_gauss, cached = np.random.get_state()
    _dump(directory / f"rng_state_{rank}.json", {
        "python": [version, list(keys), gauss],
        "numpy": [name, mt.tolist(), int(pos), int(has_gauss), float(cached)]})
    tensors = {"torch_cpu": torch.get_rng_state()}
    if device_type == "cuda":
        tensors.update({f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    _save_tensors(directory / f"rng_state_{rank}.safetensors", tensors)


def load_rng_state(directory: Path, rank: int, device_type: str) -> bool:
    """Restore this process's RNG states; ``False`` when the checkpoint has none for ``rank``."""
    import torch
    from safetensors.torch import load_file

    path = directory / f"rng_state_{rank}.json"
    if not path.is_file():
        return False
    states = _load_json(path)
    version, keys, gauss = states["python"]
    random.setstate((version, tuple(keys), gauss))
    name, mt, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(mt, dtype=np.uint32), pos, has_gauss, cached))
    tensors = load_file(str(directory / f"rng_state_{rank}.safetensors"))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[f"cuda_{i}"] for i in range(len(tensors)) if f"cuda_{i}" in tensors]
    if device_type == "cuda" and cuda:
        torch.cuda.set_rng_state_all(cuda)
    return True


def write_optimizer(directory: Path, optimizer: Any) -> None:
    """The optimizer's state tensors as safetensors (``"<param>/<name>"``), everything else as JSON."""
    import torch

    state = optimizer.state_dict()
    tensors: dict[str, Any] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{param}/{key}"] = value
            else:
                scalars.setdefault(str(param), {})[key] = value
    _save_tensors(directory / "optimizer.safetensors", tensors)
    _dump(directory / "optimizer.json", {"param_groups": state["param_groups"], "state": scalars})


def load_optimizer(directory: Path, optimizer: Any) -> None:
    from safetensors.torch import load_file

    extra = _load_json(directory / "optimizer.json")
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in load_file(str(directory / "optimizer.safetensors")).items():
        param, key = name.split("/", 1)
        state.setdefault(int(param), {})[key] = tensor
    for param, entry in extra["state"].items():
        state.setdefault(int(param), {}).update(entry)
    groups = extra["param_groups"]
    for group, current in zip(groups, optimizer.param_groups, strict=True):
        for key, value in group.items():  # JSON made tuples (betas) lists; give them back their type
            if isinstance(current.get(key), tuple):
                group[key] = tuple(value)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def write_checkpoint(directory: Path, *, main: bool, rank: int, device_type: str, module: Any, optimizer: Any,
                     scheduler: Any, scaler: Any, state: dict[str, Any], settings: dict[str, Any]) -> None:
    """Write this process's part of a checkpoint into ``directory`` (the main process: all but RNG states of
    the others). :func:`publish` then adds the manifest and renames it into place."""
    from safetensors.torch import save_model

    write_rng_state(directory, rank, device_type)
    if not main:
        return
    save_model(module, str(directory / "model.safetensors"), metadata={"format": "pt"})  # de-duplicates tied weights
    _fsync(directory / "model.safetensors")
    write_optimizer(directory, optimizer)
    _dump(directory / "scheduler.json", scheduler.state_dict())
    if scaler is not None:
        _dump(directory / "scaler.json", scaler.state_dict())
    _dump(directory / "trainer_state.json", state)
    _dump(directory / "settings.json", settings)


def publish(tmp: Path, final: Path) -> None:
    """Write ``tmp``'s manifest (last), fsync the directory, and rename it to ``final`` (atomic on POSIX)."""
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())
             if p.name != MANIFEST}
    _dump(tmp / MANIFEST, {"format": FORMAT, "files": files})
    _fsync(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _fsync(final.parent)


def check_files(directory: Path) -> None:
    """Refuse (``ValueError`` naming it) any file a distilrubert checkpoint never holds, such as a pickle."""
    for path in sorted(directory.iterdir()):
        if not _KNOWN.match(path.name) or not path.is_file():
            raise ValueError(
                f"{path}: not a file distilrubert checkpoints hold (they hold only safetensors and JSON, never "
                "pickles); refusing to resume from this checkpoint: remove the file if you trust the rest, or "
                "pass --overwrite to start over")


def verify(directory: Path) -> None:
    """Raise :class:`CorruptCheckpointError` unless every file matches ``manifest.json`` (sizes, sha256)."""
    try:
        manifest = _load_json(directory / MANIFEST)
        files = manifest["files"]
        if manifest.get("format") != FORMAT or not isinstance(files, dict):
            raise ValueError(f"format {manifest.get('format')!r}, expected {FORMAT}")
    except FileNotFoundError:
        raise CorruptCheckpointError("no manifest.json (an incomplete checkpoint)") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise CorruptCheckpointError(f"manifest.json is unreadable ({error})") from None
    missing = [name for name in _FIXED if name not in files]
    if missing:
        raise CorruptCheckpointError(f"the manifest lists no {', '.join(missing)}")
    for name, entry in sorted(files.items()):
        path = directory / name
        if not _KNOWN.match(name) or not path.is_file():
            raise CorruptCheckpointError(f"{name} is missing")
        size = path.stat().st_size
        if size != entry.get("size"):
            raise CorruptCheckpointError(f"{name} has {size} bytes, the manifest says {entry.get('size')}")
        if _sha256(path) != entry.get("sha256"):
            raise CorruptCheckpointError(f"{name} does not match its sha256 in the manifest")


def step_dirs(output: Path) -> list[Path]:
    """``OUTPUT/checkpoints/step-N`` directories, newest first."""
    root = output / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found, reverse=True)]


def select_checkpoint(output: Path, warn: bool = True) -> Path | None:
    """The newest checkpoint that matches its manifest; older ones are tried with a warning naming what is wrong.

    ``None`` when there is no checkpoint at all; ``ValueError`` when there are some but none is usable, or one
    holds a file a checkpoint never holds (:func:`check_files`).
    """
    candidates = step_dirs(output)
    problems = []
    for path in candidates:
        check_files(path)
        try:
            verify(path)
        except CorruptCheckpointError as error:
            problems.append(f"{path.name}: {error}")
            if warn:
                logger.warning("checkpoint %s is corrupt (%s); falling back to the previous one", path, error)
            continue
        return path
    if candidates:
        raise ValueError(f"--output {output}: no usable checkpoint ({'; '.join(problems)}); "
                         "pass --overwrite to start over")
    return None


def load_checkpoint(directory: Path, *, rank: int, device: Any, module: Any, optimizer: Any, scheduler: Any,
                    scaler: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore a (verified) checkpoint into the objects; return its trainer state and settings."""
    from safetensors.torch import load_model

    load_model(module, str(directory / "model.safetensors"), device=str(device))
    load_optimizer(directory, optimizer)
    scheduler.load_state_dict(_load_json(directory / "scheduler.json"))
    if scaler is not None and (directory / "scaler.json").is_file():
        scaler.load_state_dict(_load_json(directory / "scaler.json"))
    if not load_rng_state(directory, rank, device.type):
        logger.warning("checkpoint %s has no RNG state for process %d (another number of processes): the resumed "
                       "run is not an exact continuation", directory, rank)
    return _load_json(directory / "trainer_state.json"), _load_json(directory / "settings.json")


def run_settings(options: Any) -> dict[str, Any]:
    """The options that define a run (all but :data:`RUN_CONTROL`), as JSON values."""
    from distilrubert.config import to_dict

    # Through JSON so that a fresh run compares like one read back from a checkpoint (tuples as lists).
    return json.loads(json.dumps({k: v for k, v in to_dict(options).items() if k not in RUN_CONTROL}))


def settings_differences(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, list[Any]]:
    """``{option: [in the checkpoint, now]}`` for every option that differs (absent = ``None``)."""
    return {key: [saved.get(key), current.get(key)] for key in sorted(saved.keys() | current.keys())
            if key not in saved or key not in current or saved[key] != current[key]}


def describe_differences(differences: dict[str, list[Any]]) -> str:
    def short(value: Any) -> str:
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 60 else text[:57] + "..."

    return ", ".join(f"{key} {short(old)} -> {short(new)}" for key, (old, new) in differences.items())
