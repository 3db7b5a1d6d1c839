"""A training run's output directory: preparing it, its rotating checkpoints, and the final files.

* :func:`prepare_output` checks ``--output`` before any work (refuses a finished run, foreign files, a
  checkpoint of other settings) and returns the checkpoint to resume from;
* :class:`Checkpoints` writes ``OUTPUT/checkpoints/step-N`` atomically (a temporary directory, fsynced,
  its manifest last, renamed; :mod:`distilrubert.checkpoint` holds the format) and keeps the newest
  ``--keep-checkpoints``;
* :func:`save_final_output` writes the trained model and ``run.json`` (moved last: its presence marks a
  finished run).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distilrubert import checkpoint as ckpt
from distilrubert.runinfo import check_replaceable, write_json

if TYPE_CHECKING:  # (trainer imports this module)
    from distilrubert.trainer import TrainOptions

logger = logging.getLogger(__name__)

__all__ = ["CHECKPOINTS", "Checkpoints", "check_settings", "finish_output", "latest_checkpoint", "prepare_output",
           "save_final_output"]

CHECKPOINTS = "checkpoints"


class Checkpoints:
    """``OUTPUT/checkpoints``: :meth:`save` writes ``step-N`` atomically on every process and rotates."""

    def __init__(self, output: Path, accelerator: Any, keep: int) -> None:
        self.root, self.accelerator, self.keep = Path(output) / CHECKPOINTS, accelerator, keep

    def save(self, *, step: int, module: Any, optimizer: Any, scheduler: Any, state: dict[str, Any],
             settings: dict[str, Any]) -> Path:
        accelerator = self.accelerator
        main = accelerator.is_main_process
        final = self.root / f"step-{step:08d}"
        tmp = self.root / f".step-{step:08d}.partial"
        if main:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        accelerator.wait_for_everyone()
        ckpt.write_checkpoint(tmp, main=main, rank=accelerator.process_index, device_type=accelerator.device.type,
                              module=module, optimizer=optimizer, scheduler=scheduler, scaler=accelerator.scaler,
                              state=state, settings=settings)
        accelerator.wait_for_everyone()
        if main:
            ckpt.publish(tmp, final)
            self._rotate(step)
        accelerator.wait_for_everyone()
        return final

    def _rotate(self, step: int) -> None:
        done = sorted((int(m.group(1)), p) for p in self.root.iterdir() if (m := ckpt.STEP_DIR.match(p.name)))
        # Newer ones are left from before a resume that fell back past them (corrupt): this run rewrites
        # those steps, and they must not push good checkpoints out of --keep-checkpoints.
        stale = [p for n, p in done if n > step]
        for old in stale + [p for n, p in done if n <= step][:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(output: str | Path) -> Path | None:
    """The newest checkpoint directory under ``OUTPUT/checkpoints`` (verified or not), if any."""
    found = ckpt.step_dirs(Path(output))
    return found[0] if found else None


def check_settings(output: Path, chosen: Path, saved: dict[str, Any], options: TrainOptions,
                    resolved: bool = True) -> dict[str, list[Any]]:
    """The differences between the run's settings and the checkpoint's; ``ValueError`` unless ``--force-resume``.

    ``resolved=False`` (before the verb has resolved its ``auto`` / unset options): those are skipped, so
    that the early check cannot refuse a run the full check in :func:`train` would accept.
    """
    current = ckpt.run_settings(options)
    if not resolved:
        current = {k: saved[k] if v in (None, "auto") and k in saved else v for k, v in current.items()}
    differences = ckpt.settings_differences(saved, current)
    if differences and not options.force_resume:
        raise ValueError(f"--output {output}: {chosen.name} was written by a run with other settings: "
                         f"{ckpt.describe_differences(differences)} (pass --force-resume to continue it with the "
                         "new ones, or --overwrite to start over)")
    return differences


def prepare_output(options: TrainOptions, main: bool = True) -> Path | None:
    """Check ``--output`` before any work; return the checkpoint to resume from, if any.

    With ``--overwrite`` the main process removes the old directory (the others just start fresh).
    """
    output = Path(options.output)
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"--output {output} exists and is not a directory")
    latest = latest_checkpoint(output)
    finished = (output / "run.json").is_file()
    if options.overwrite and output.is_dir():
        check_replaceable(output)
        if main:
            shutil.rmtree(output)
        return None
    if finished:
        raise FileExistsError(f"--output {output} already holds a finished run (pass --overwrite to replace it)")
    if latest is not None:
        if options.resume:
            chosen = ckpt.select_checkpoint(output, warn=main)
            if chosen is not None:  # an early check; train() compares the resolved settings
                saved = json.loads((chosen / "settings.json").read_text(encoding="utf-8"))
                check_settings(output, chosen, saved, options, resolved=False)
            return chosen
        raise FileExistsError(f"--output {output} holds checkpoints; pass --resume to continue or --overwrite")
    if output.is_dir() and any(p.name not in (CHECKPOINTS, "metrics.jsonl") for p in output.iterdir()):
        raise FileExistsError(f"--output {output} already exists and is not empty (pass --overwrite to replace it)")
    return None


def finish_output(output: Path, write: Callable[[Path], None]) -> None:
    """Write the final files into ``output`` atomically: built in a temporary directory, each file renamed in.

    ``run.json`` is written by ``write`` and moved last, so its presence marks a finished run.
    """
    tmp = output / ".final.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    names = sorted((p.name for p in tmp.iterdir()), key=lambda n: n == "run.json")
    for name in names:
        target = output / name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp / name, target)
    tmp.rmdir()


def save_final_output(command: str, options: TrainOptions, task: Any, accelerator: Any,
                      summary: dict[str, Any]) -> None:
    """The main process writes the trained model into ``options.output`` (``finish_output``) with its
    ``run.json``; every process waits for it."""
    from distilrubert.config import to_dict
    from distilrubert.runinfo import run_info

    if accelerator.is_main_process:
        module = accelerator.unwrap_model(task.module)

        def write(tmp: Path) -> None:
            task.save_final(module, tmp, summary)
            forced = {"forced_resumes": summary["forced_resumes"]} if summary.get("forced_resumes") else {}
            write_json(tmp / "run.json", run_info(command, to_dict(options), seed=options.seed,
                                                  steps=summary["steps"], **forced))

        finish_output(Path(options.output), write)
        logger.info("wrote %s", options.output)
    accelerator.wait_for_everyone()
