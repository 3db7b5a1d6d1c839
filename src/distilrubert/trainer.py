"""The training loop shared by ``distill`` and ``pretrain``, on HF accelerate.

One code path for a single CPU, one GPU, many GPUs and many nodes: start it with ``python`` /
``distilrubert`` or with ``accelerate launch`` (DDP; each process takes every ``world``-th batch of
the same seeded, length-grouped order). What the loop does:

* AdamW (betas 0.9/0.98, eps 1e-6), warm-up then linear decay, constant, or reduce-on-plateau (the
  released scripts': the rate halves after ``--plateau-patience`` validations without a better
  validation loss), gradient clipping, gradient accumulation, mixed precision (``auto``: bf16/fp16 on
  a GPU, fp32 on the CPU).
* Checkpoints every ``--save-every`` steps into ``OUTPUT/checkpoints/step-N`` (written to a temporary
  directory, fsynced, its manifest last, and renamed, so a kill never leaves a half checkpoint), the last
  ``--keep-checkpoints`` kept. A checkpoint holds the model, optimizer, scheduler, every process's RNG
  states, the data position (epoch, batch) and the settings that define the run, as safetensors and
  JSON only (:mod:`distilrubert.checkpoint`: no pickles, so resuming never runs code from a checkpoint).
* Resume (automatic when the output directory holds a checkpoint): the newest checkpoint that matches
  its manifest (older ones are tried with a warning) is restored, once its settings equal the run's (a
  difference is refused unless ``--force-resume``, recorded in ``run.json``); the masks depend only on
  ``(seed, step)``, so a run killed with SIGKILL and resumed ends with the same weights as an
  uninterrupted one (CPU; tested).
* A NaN/inf loss stops the run before the optimizer step with an error naming the last good
  checkpoint (which stays on disk).
* Validation every ``--eval-every`` steps on the held-out sequences; metrics to ``metrics.jsonl``
  (and TensorBoard when installed); a tqdm bar with loss, tokens/s and ETA.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from distilrubert import checkpoint as ckpt
from distilrubert.config import option
from distilrubert.errors import TrainingDiverged
from distilrubert.run_output import Checkpoints, check_settings

logger = logging.getLogger(__name__)

__all__ = ["StepHook", "TrainOptions", "TrainTask", "TrainingDivergedError", "make_scheduler", "test_hooks", "train",
           "tune_malloc"]

# Test hook: SIGKILL the process itself right after this optimizer step (used by the resume tests, which run
# the CLI in a subprocess). Read once by test_hooks(), never inside the loop.
KILL_ENV = "DISTILRUBERT_TEST_SIGKILL_AT_STEP"

TrainingDivergedError = TrainingDiverged  # the name this module used before errors.py had the error family

StepHook = Callable[[int], None]
"""Called with the step number after each optimizer step (and its checkpoint, when one is due)."""


class TrainTask(Protocol):
    """What a training task (``distill``'s alignments, its span task, ``pretrain``) gives the shared loop."""

    module: Any  # the trainable ``nn.Module`` (student plus any projections)

    def setup(self, accelerator: Any) -> None:
        """Once, after ``accelerator.prepare`` (teacher to the device, caches opened)."""

    def step_losses(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        """The losses of one batch (tensors; ``"loss"`` is the one optimised)."""

    def eval_names(self) -> list[str]:
        """The validation figures this task reports (``valid_<name>``)."""

    def eval_sums(self, module: Any, batch: dict[str, Any]) -> dict[str, tuple[float, float]]:
        """Per name, ``(sum, count)`` over one validation batch (averaged over all batches and processes)."""

    def save_final(self, module: Any, directory: Path, summary: dict[str, Any]) -> None:
        """Write the trained model (and its card and report) into ``directory``."""


def test_hooks() -> list[StepHook]:
    """The hooks the test suite asks for through the environment (``DISTILRUBERT_TEST_SIGKILL_AT_STEP``)."""
    kill_at = int(os.environ.get(KILL_ENV, "0") or 0)
    if not kill_at:
        return []

    def sigkill(step: int) -> None:
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    return [sigkill]


@dataclass(kw_only=True)
class TrainOptions:
    """Options shared by ``distill`` and ``pretrain`` (the loop, the data, the outputs)."""

    corpus: list[str] = option(help="Corpus files or directories (.txt/.jsonl/.csv, optionally .gz).",
                               metavar="PATH")
    output: str = option(help="Output directory: the trained model (HF format), metrics.jsonl, checkpoints/.",
                         metavar="DIR")
    text_field: str | None = option(None, "JSONL/CSV field holding the text (default: text, sentence).")
    max_steps: int = option(1000, "Optimizer steps to train for.")
    batch_size: int = option(32, "Sequences per process per micro-batch.")
    gradient_accumulation: int = option(1, "Micro-batches per optimizer step.")
    max_length: int = option(128, "Maximum sequence length in tokens (at most 512).")
    lr: float = option(5e-4, "Peak learning rate (AdamW).")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    warmup: float = option(0.05, "Warm-up as a fraction of --max-steps.")
    schedule: Literal["linear", "constant", "plateau"] = option(
        "linear", "Learning rate after warm-up: linear decay to 0, constant, or plateau (constant, times "
        "--plateau-factor after --plateau-patience validations without a lower validation loss).")
    plateau_factor: float = option(0.5, "plateau: factor applied to the learning rate on a plateau.")
    plateau_patience: int = option(3, "plateau: validations without improvement before the rate is cut.")
    max_grad_norm: float = option(5.0, "Gradient clipping norm (0 = off).")
    mlm_probability: float = option(0.15, "Share of student tokens masked for MLM.")
    mlm_smoothing: float = option(0.7, "Masking probability proportional to count**-smoothing (XLM/DistilBERT).")
    valid_fraction: float = option(0.01, "Held-out share of sequences (the last ones) for validation.")
    max_valid_sequences: int = option(2000, "Cap on held-out sequences.")
    eval_every: int = option(200, "Validate every N steps (and at the end; 0 = only at the end).")
    save_every: int = option(200, "Checkpoint every N steps (0 = only at the end).")
    keep_checkpoints: int = option(2, "How many recent checkpoints to keep.")
    log_every: int = option(10, "Write a metrics.jsonl line every N steps.")
    seed: int = option(42, "Seed of data order, masking, dropout and new weights.")
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = option(
        "auto", "Mixed precision; auto = bf16 (or fp16) on a GPU, none on the CPU.")
    cache_dir: str | None = option(None, "Where tokenised sequences are cached (default ~/.cache/distilrubert).")
    resume: bool = option(True, "Resume from the newest checkpoint in --output when there is one.")
    force_resume: bool = option(False, "Resume even when the checkpoint was written with other settings (corpus, "
                                "lr, seed, ...); the differences are recorded in run.json.")
    overwrite: bool = option(False, "Replace an existing --output directory.")
    tensorboard: bool = option(True, "Also log to TensorBoard when it is installed (an accelerate tracker, as "
                               "--report-to tensorboard; --no-tensorboard: not unless --report-to names it).")
    report_to: list[str] = option(
        [], "Trackers, through accelerate's log_with: tensorboard, wandb, mlflow, comet_ml, aim, clearml, dvclive, "
        "swanlab, trackio (space or comma separated); their files go under OUTPUT/trackers unless the tracker is "
        "pointed elsewhere (e.g. MLFLOW_TRACKING_URI). metrics.jsonl is always written.", metavar="TRACKER")
    progress: bool = option(True, "Show progress bars.")

    def __post_init__(self) -> None:
        self.report_to = [name.strip() for item in self.report_to for name in item.split(",") if name.strip()]
        if not self.corpus:
            raise ValueError("--corpus: give at least one corpus file or directory")
        checks = [
            ("--max-steps", self.max_steps >= 1), ("--batch-size", self.batch_size >= 1),
            ("--gradient-accumulation", self.gradient_accumulation >= 1),
            ("--max-length", 8 <= self.max_length <= 512), ("--lr", self.lr > 0),
            ("--warmup", 0 <= self.warmup < 1), ("--max-grad-norm", self.max_grad_norm >= 0),
            ("--mlm-probability", 0 < self.mlm_probability < 1), ("--mlm-smoothing", self.mlm_smoothing >= 0),
            ("--valid-fraction", 0 <= self.valid_fraction < 1),
            ("--max-valid-sequences", self.max_valid_sequences >= 0),
            ("--eval-every", self.eval_every >= 0), ("--save-every", self.save_every >= 0),
            ("--keep-checkpoints", self.keep_checkpoints >= 1), ("--log-every", self.log_every >= 1),
            ("--weight-decay", self.weight_decay >= 0), ("--plateau-factor", 0 < self.plateau_factor < 1),
            ("--plateau-patience", self.plateau_patience >= 0),
        ]
        for flag, ok in checks:
            if not ok:
                raise ValueError(f"{flag}: value out of range")
        if self.max_length > 512:
            raise ValueError("--max-length: at most 512")
        if self.schedule == "plateau" and (self.eval_every == 0 or self.valid_fraction == 0):
            raise ValueError("--schedule plateau: needs validation (--eval-every > 0 and --valid-fraction > 0)")


def tune_malloc() -> bool:
    """Keep freed memory in the process (glibc ``mallopt``) so that large work tensors are reused, not re-faulted.

    With glibc's defaults a freed 16-80 MB tensor goes back to the kernel and the next one of that size is
    page-faulted in again, 4 KB at a time, which costs ~100 ms per 64 MB on a virtual machine
    (``scripts/bench_distill.py``, ``reduce`` with a 120K teacher; docs/distillation.md). This raises the trim
    threshold to 1 GB and fixes the mmap threshold at 32 MB (the largest glibc allows), as jemalloc or
    tcmalloc would. Only the training commands call it; no effect on other C libraries or when
    ``DISTILRUBERT_NO_MALLOPT=1``. Returns whether it was applied.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux") or os.environ.get("DISTILRUBERT_NO_MALLOPT") == "1":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        return bool(libc.mallopt(m_trim_threshold, 1 << 30)) and bool(libc.mallopt(m_mmap_threshold, 1 << 25))
    except (OSError, AttributeError):  # not glibc
        return False


def _lr_lambda(options: TrainOptions) -> Callable[[int], float]:
    warmup_steps = round(options.warmup * options.max_steps)

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if options.schedule in ("constant", "plateau"):
            return 1.0
        return max(0.0, (options.max_steps - step) / max(1, options.max_steps - warmup_steps))

    return factor


def _plateau_scheduler_class() -> type:
    import torch

    class WarmupPlateauLR(torch.optim.lr_scheduler.LambdaLR):
        """Warm-up by ``lr_lambda`` (a ``LambdaLR``), times a scale that :meth:`observe` cuts on a plateau.

        ``observe(value)`` after each validation: a value below ``best * (1 - threshold)`` is an improvement;
        after more than ``patience`` observations in a row without one, the scale is multiplied by ``factor``
        (as ``torch.optim.lr_scheduler.ReduceLROnPlateau`` in ``min`` mode, relative threshold 1e-4). The
        scale, best value and counter are in ``state_dict`` (so a resumed run continues the same schedule).
        """

        def __init__(self, optimizer, lr_lambda: Callable[[int], float], factor: float = 0.5, patience: int = 3,
                     threshold: float = 1e-4) -> None:
            self.scale, self.best, self.bad = 1.0, math.inf, 0
            self.factor, self.patience, self.threshold = factor, patience, threshold
            self.warmup = lr_lambda
            super().__init__(optimizer, self._factor)

        def _factor(self, step: int) -> float:
            return self.warmup(step) * self.scale

        def observe(self, value: float) -> bool:
            """Record a validation loss; return whether the rate was cut (it applies from the next step)."""
            if not math.isfinite(value):
                return False
            bar = self.best * (1 - self.threshold) if self.best > 0 else self.best
            if value < bar:
                self.best, self.bad = value, 0
                return False
            self.bad += 1
            if self.bad > self.patience:
                self.scale *= self.factor
                self.bad = 0
                # Apply now to the current rates too, so get_last_lr() shows the cut at once.
                for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
                    group["lr"] = base * self._factor(self.last_epoch)
                self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
                return True
            return False

        def state_dict(self) -> dict[str, Any]:
            state = super().state_dict()
            state.pop("warmup", None)  # a function, rebuilt from the options
            return state

    return WarmupPlateauLR


def make_scheduler(options: TrainOptions, optimizer: Any) -> Any:
    """The learning-rate scheduler of ``--schedule`` (a ``LambdaLR``; stepped once per optimizer step)."""
    import torch

    if options.schedule == "plateau":
        return _plateau_scheduler_class()(optimizer, _lr_lambda(options), options.plateau_factor,
                                          options.plateau_patience)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(options))


def _mixed_precision(choice: str) -> str:
    import torch

    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def trackers(options: TrainOptions) -> list[str]:
    """The accelerate trackers of the run: ``--report-to``, plus TensorBoard when ``--tensorboard`` and installed."""
    from accelerate.utils import is_tensorboard_available

    names = list(dict.fromkeys(options.report_to))
    if options.tensorboard and "tensorboard" not in names and is_tensorboard_available():
        names.append("tensorboard")
    return names


def make_accelerator(options: TrainOptions) -> Any:
    """The run's ``Accelerator``: GPU when present, else CPU (so ``accelerate launch --multi_gpu
    --num_processes N`` on a machine without GPUs runs N CPU processes over gloo), with the run's trackers.

    Raises:
        ValueError: a ``--report-to`` tracker accelerate does not know or that is not installed (accelerate
            itself would only warn and log nothing).
    """
    import warnings

    import torch
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    names = trackers(options)
    output = Path(options.output)
    project = ProjectConfiguration(project_dir=str(output), logging_dir=str(output / "trackers"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # accelerate warns of trackers it drops: refused below instead
        try:
            accelerator = Accelerator(mixed_precision=_mixed_precision(options.mixed_precision),
                                      cpu=not torch.cuda.is_available(), log_with=names or None,
                                      project_config=project)
        except ValueError as err:  # an unknown tracker name
            raise ValueError(f"--report-to: {err}") from None
    active = {str(getattr(t, "value", t)) for t in accelerator.log_with}
    missing = [n for n in names if n not in active]
    if missing:
        raise ValueError(f"--report-to: {', '.join(missing)} is not installed or not an accelerate tracker "
                         f"(install it, e.g. `pip install {missing[0].replace('_', '-')}`)")
    return accelerator


def to_device(batch: dict[str, np.ndarray], device: Any) -> dict[str, Any]:
    import torch

    return {k: torch.as_tensor(v).to(device, non_blocking=True) for k, v in batch.items()}


def weights_digest(module: Any) -> str:
    """sha256 of a module's parameters and buffers (to check that DDP replicas agree)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class _Metrics:
    """``metrics.jsonl`` (appended line by line, main process) and the accelerator's trackers (``--report-to``)."""

    def __init__(self, output: Path, enabled: bool, resume_step: int | None, accelerator: Any,
                 config: dict[str, Any]) -> None:
        self.enabled = enabled
        self.path = output / "metrics.jsonl"
        self.accelerator = accelerator
        self.tracking = bool(accelerator.log_with)
        if self.tracking:
            # Trackers take flat scalars and strings: lists (the corpus paths) as text.
            flat = {k: v if isinstance(v, int | float | str | bool) or v is None else json.dumps(v, default=str)
                    for k, v in config.items()}
            accelerator.init_trackers("distilrubert", config=flat)
        if not enabled:
            return
        output.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.is_file():
            # Drop lines logged after the checkpoint we resume from: they will be logged again.
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        elif self.path.exists():
            self.path.unlink()
        if not self.tracking:
            logger.info("no tracker (--report-to; tensorboard is not installed): metrics go to metrics.jsonl only")

    def log(self, record: dict[str, Any]) -> None:
        if self.tracking:  # accelerate logs on the main process only
            prefix = record.get("split", "train")
            values = {f"{prefix}/{k}": v for k, v in record.items()
                      if isinstance(v, int | float) and k not in ("step", "epoch", "split")}
            self.accelerator.log(values, step=int(record["step"]))
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    def close(self) -> None:
        if self.tracking:
            # Not accelerator.end_training(): it also destroys the process group, which the rest of the run
            # (gathering the weight digests, the final save) still needs.
            for tracker in self.accelerator.trackers:
                tracker.finish()
            self.tracking = False


def _monitored(figures: dict[str, float]) -> float:
    """The validation loss the plateau schedule watches: the weighted total, else the MLM loss."""
    return figures.get("valid_loss", figures.get("valid_mlm", math.nan))


def train(options: TrainOptions, task: TrainTask, store: Any, collator: Any, accelerator: Any,
          resume_from: Path | None, batcher: Callable[..., list[np.ndarray]] | None = None,
          hooks: list[StepHook] | None = None) -> dict[str, Any]:
    """Run the loop until ``--max-steps``; return the summary (also handed to ``task.save_final``).

    Args:
        options: The loop options.
        task: The :class:`TrainTask`.
        store: The :class:`distilrubert.data.SequenceStore`.
        collator: The :class:`distilrubert.data.Collator`.
        accelerator: An ``accelerate.Accelerator``.
        resume_from: Checkpoint directory to resume from, or ``None``.
        batcher: ``(lengths, train_idx, batch_size, seed, epoch) -> batches`` of one epoch; default
            :func:`distilrubert.data.length_grouped_batches` (e.g. :class:`distilrubert.neighbours.NeighbourBatches`).
        hooks: :data:`StepHook` callables run after every step (default: :func:`test_hooks`).
    """
    import torch
    from tqdm.auto import tqdm

    from distilrubert.data import length_grouped_batches, split_train_valid

    output = Path(options.output)
    main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    optimizer = torch.optim.AdamW(task.module.parameters(), lr=options.lr, betas=(0.9, 0.98), eps=1e-6,
                                  weight_decay=options.weight_decay)
    scheduler = make_scheduler(options, optimizer)
    if accelerator.device.type == "cpu":
        tune_malloc()
    # The scheduler is not prepared (accelerate would step it once per process); it is checkpointed.
    model, optimizer = accelerator.prepare(task.module, optimizer)
    task.setup(accelerator)

    state: dict[str, Any] = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "tokens": 0, "elapsed": 0.0,
                             "forced_resumes": []}
    if resume_from is not None:
        saved_state, saved_settings = ckpt.load_checkpoint(
            resume_from, rank=rank, device=accelerator.device, module=accelerator.unwrap_model(model),
            optimizer=optimizer, scheduler=scheduler, scaler=accelerator.scaler)
        differences = check_settings(output, resume_from, saved_settings, options)
        state.update(saved_state)
        logger.info("resumed from %s (step %d)", resume_from, state["step"])
        if differences:  # --force-resume
            logger.warning("--force-resume: continuing %s with other settings: %s", resume_from,
                           ckpt.describe_differences(differences))
            state["forced_resumes"] = [*state["forced_resumes"], {"step": state["step"], "from": str(resume_from),
                                                                  "differences": differences}]
    from distilrubert.config import to_dict

    metrics = _Metrics(output, main, state["step"] if resume_from is not None else None, accelerator,
                       to_dict(options))

    train_idx, valid_idx = split_train_valid(len(store), options.valid_fraction, options.max_valid_sequences)
    lengths = store.lengths()
    accum = options.gradient_accumulation
    valid_batches = [valid_idx[i:i + options.batch_size]
                     for i in range(0, len(valid_idx), options.batch_size)][rank::world]

    def epoch_batches(epoch: int) -> list[np.ndarray]:
        batches = (batcher or length_grouped_batches)(lengths, train_idx, options.batch_size, options.seed, epoch)
        usable = len(batches) // (world * accum) * (world * accum)
        if usable == 0:
            raise ValueError(f"--corpus: {len(train_idx)} training sequences give {len(batches)} batches of "
                             f"{options.batch_size}; need at least {world * accum} (processes x accumulation)")
        return batches[rank:usable:world]

    def evaluate() -> dict[str, float]:
        module = accelerator.unwrap_model(model)
        module.eval()
        sums: dict[str, float] = {}
        with torch.no_grad(), accelerator.autocast():
            for i, idx in enumerate(valid_batches):
                # Fixed masks for validation: stream 1 is never used by training steps.
                batch = to_device(collator(idx, step=i * world + rank, stream=1), accelerator.device)
                for key, (total, count) in task.eval_sums(module, batch).items():
                    sums[f"{key}_sum"] = sums.get(f"{key}_sum", 0.0) + float(total)
                    sums[f"{key}_count"] = sums.get(f"{key}_count", 0.0) + float(count)
        names = sorted(task.eval_names())
        vector = torch.tensor([sums.get(f"{n}_{part}", 0.0) for n in names for part in ("sum", "count")],
                              dtype=torch.float64, device=accelerator.device)
        vector = accelerator.reduce(vector, reduction="sum")
        out = {}
        for j, name in enumerate(names):
            total, count = float(vector[2 * j]), float(vector[2 * j + 1])
            out[f"valid_{name}"] = total / count if count else float("nan")
        return out

    checkpoints = Checkpoints(output, accelerator, options.keep_checkpoints)

    def save_checkpoint() -> Path:
        return checkpoints.save(step=state["step"], module=accelerator.unwrap_model(model), optimizer=optimizer,
                                scheduler=scheduler, state=state, settings=ckpt.run_settings(options))

    last_good = resume_from
    history: dict[str, list[tuple[int, float]]] = {}
    valid_history: list[dict[str, Any]] = []
    hooks = test_hooks() if hooks is None else hooks
    bar = tqdm(total=options.max_steps, initial=state["step"], desc="training", unit="step",
               disable=not (main and options.progress), dynamic_ncols=True)
    window_tokens, window_start = 0, time.perf_counter()
    run_start = time.perf_counter() - state["elapsed"]
    batches = epoch_batches(state["epoch"])
    if resume_from is None and len(valid_batches) and options.eval_every:
        # The starting point, so every run's metrics show how far training moved the model.
        figures = evaluate()
        valid_history.append({"step": 0, **figures})
        metrics.log({"step": 0, "split": "valid", **figures})
        if options.schedule == "plateau":
            scheduler.observe(_monitored(figures))
    while state["step"] < options.max_steps:
        if state["batch_in_epoch"] + accum > len(batches):
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
            batches = epoch_batches(state["epoch"])
        model.train()
        parts: dict[str, float] = {}
        step_tokens = 0
        for i in range(accum):
            idx = batches[state["batch_in_epoch"] + i]
            micro_step = (state["step"] * accum + i) * world + rank
            batch = to_device(collator(idx, step=micro_step), accelerator.device)
            step_tokens += int(batch["attention_mask"].sum())
            sync = contextlib.nullcontext() if i == accum - 1 else accelerator.no_sync(model)
            with sync, accelerator.autocast():
                losses = task.step_losses(model, batch)
                accelerator.backward(losses["loss"] / accum)
            for key, value in losses.items():
                parts[key] = parts.get(key, 0.0) + float(value.detach()) / accum
        names = sorted(parts)
        reduced = accelerator.reduce(torch.tensor([parts[k] for k in names], dtype=torch.float64,
                                                  device=accelerator.device), reduction="mean")
        parts = {k: float(v) for k, v in zip(names, reduced.tolist(), strict=True)}
        if not math.isfinite(parts["loss"]):
            metrics.close()
            bar.close()
            where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written yet"
            raise TrainingDiverged(f"loss is {parts['loss']} at step {state['step'] + 1} "
                                        f"({', '.join(f'{k}={v:.4g}' for k, v in parts.items())}); stopped; {where}")
        if options.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), options.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        state["batch_in_epoch"] += accum
        state["tokens"] += step_tokens * world
        window_tokens += step_tokens * world
        for key, value in parts.items():
            history.setdefault(key, []).append((state["step"], value))
        bar.update(1)
        if state["step"] % options.log_every == 0 or state["step"] == options.max_steps:
            now = time.perf_counter()
            tokens_per_s = window_tokens / max(now - window_start, 1e-9)
            window_tokens, window_start = 0, now
            record = {"step": state["step"], "epoch": state["epoch"], "lr": scheduler.get_last_lr()[0],
                      **parts, "tokens_per_s": round(tokens_per_s, 1), "tokens": state["tokens"]}
            metrics.log(record)
            bar.set_postfix(loss=f"{parts['loss']:.3f}", tok_s=f"{tokens_per_s:.0f}")
        last_step = state["step"] == options.max_steps
        if len(valid_batches) and ((options.eval_every and state["step"] % options.eval_every == 0) or last_step):
            figures = evaluate()
            valid_history.append({"step": state["step"], **figures})
            metrics.log({"step": state["step"], "split": "valid", **figures})
            logger.info("step %d: %s", state["step"], ", ".join(f"{k}={v:.4f}" for k, v in figures.items()))
            if options.schedule == "plateau" and scheduler.observe(_monitored(figures)):
                logger.info("step %d: validation loss plateau, learning rate now %.3g", state["step"],
                            scheduler.get_last_lr()[0])
        if (options.save_every and state["step"] % options.save_every == 0) or last_step:
            state["elapsed"] = time.perf_counter() - run_start
            last_good = save_checkpoint()
        for hook in hooks:
            hook(state["step"])
    bar.close()
    metrics.close()
    unwrapped = accelerator.unwrap_model(model)
    from accelerate.utils import gather_object

    digests = gather_object([weights_digest(unwrapped)])
    return {
        "steps": state["step"], "epochs_started": state["epoch"] + 1, "tokens": state["tokens"],
        "seconds": round(time.perf_counter() - run_start, 1), "processes": world,
        "train_sequences": len(train_idx), "valid_sequences": len(valid_idx),
        "final_train": {k: v[-1][1] for k, v in history.items()} if history else {},
        "first_train": {k: v[0][1] for k, v in history.items()} if history else {},
        "validation": valid_history, "rank_weight_sha256": digests,
        "last_checkpoint": str(last_good) if last_good else None, "forced_resumes": state["forced_resumes"],
    }
