"""The native (C++) kernel of the ``reduce`` KL, built with the system compiler at first use.

:func:`reduce_kl_kernel` compiles ``csrc/reduce_kl.cpp`` with ``torch.utils.cpp_extension`` (ninja and
the system C++ compiler, ``-O3``, vector flags chosen by torch's own CPU capability: AVX-512, AVX2 or
none) once per machine kind; torch caches the build under ``TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``), so later processes load it in a fraction of a second. The first build
takes about 30 s on a 2-core machine.

When the build fails (no compiler, no ninja) a single warning is given and ``None`` returned; callers
then use the torch kernels (compiled, else eager), which give the same result more slowly.
``DISTILRUBERT_NO_NATIVE=1`` skips the kernel altogether.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "reduce_kl.cpp"
_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mprefer-vector-width=512"],
    "AVX2": ["-mavx2", "-mfma"],
}
_STATE: dict[str, Any] = {}


def cpu_capability() -> str:
    """torch's CPU capability (``AVX512``, ``AVX2``, ``DEFAULT``, ...)."""
    import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # older torch: no vector flags
        return "DEFAULT"


def reduce_kl_kernel() -> Any | None:
    """The compiled extension module (with ``reduce_kl``), or ``None`` when disabled or the build failed.

    The outcome is kept for the process: a failed build is not retried.
    """
    if "module" in _STATE:
        return _STATE["module"]
    _STATE["module"] = None
    if os.environ.get("DISTILRUBERT_NO_NATIVE", "") not in ("", "0"):
        return None
    capability = cpu_capability()
    flags = _FLAGS.get(capability, [])
    try:
        from torch.utils.cpp_extension import load

        logger.info("building/loading the native reduce KL kernel (%s); the first build takes about 30 s",
                    capability)
        _STATE["module"] = load(name=f"distilrubert_reduce_kl_{capability.lower()}", sources=[str(SOURCE)],
                                extra_cflags=["-O3", "-fno-math-errno", *flags], verbose=False)
    except Exception as error:  # no compiler / ninja / headers: the torch kernels do the same work
        warnings.warn(f"reduce KL: building the native kernel failed ({type(error).__name__}: {str(error)[:300]}); "
                      "using the torch kernels (same result, slower)", stacklevel=2)
    return _STATE["module"]


def huge_page_buffer(numel: int):
    """A float32 CPU tensor of ``numel`` elements on a fresh anonymous mapping backed by transparent huge pages.

    The reduce kernel walks its ``(tokens, positions)`` teacher block row by row, a new 4 KB page every few
    tokens; on a virtual machine each TLB miss is a nested page walk, and 2 MB pages made the kernel 12-16%
    faster in a side check. A fresh mapping is needed because ``madvise(MADV_HUGEPAGE)`` does not convert
    pages already faulted in (as a reused heap block's are). On other systems, or when THP is off, this is
    an ordinary buffer. The tensor keeps its mapping alive.
    """
    import mmap
    import sys

    import torch

    size = max(int(numel), 1) * 4
    if not sys.platform.startswith("linux"):
        return torch.empty(numel)
    buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # private: THP (shared = shmem)
    madvise = getattr(buffer, "madvise", None)
    if madvise is not None and hasattr(mmap, "MADV_HUGEPAGE"):
        with contextlib.suppress(OSError):  # THP unavailable: 4 KB pages
            madvise(mmap.MADV_HUGEPAGE)
    return torch.frombuffer(buffer, dtype=torch.float32, count=int(numel))
