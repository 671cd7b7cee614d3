"""Which BLAS mlx multiplies with, and arranging a fast one on Linux (design §5).

The Linux `mlx-cpu` wheel bundles the reference netlib BLAS: a 1024x1024 float32 matmul runs
at ~8 GFLOP/s where OpenBLAS does 100-250 (2 cores). libmlx takes `cblas_sgemm` from whatever
the dynamic linker finds first, so OpenBLAS preloaded (LD_PRELOAD) replaces the bundled
library, and LD_PRELOAD is read only when a process starts: `reexec_with_optimized_blas()`
restarts the process once with it. Results differ between BLAS builds in the last bits, so the
BLAS is part of the environment that a generation of weights records (`blas_in_use()`).

SOUL_BLAS chooses: unset or `auto` preloads Debian's OpenBLAS (`apt-get install
libopenblas0-pthread`) when it is installed; `reference` keeps the bundled library; a path
preloads that library instead.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SETTING = "SOUL_BLAS"
# Set only in the restarted process: stops a second restart and holds the caller's LD_PRELOAD.
CALLER_PRELOAD = "SOUL_BLAS_CALLER_PRELOAD"
DEBIAN_OPENBLAS = Path(f"/usr/lib/{platform.machine()}-linux-gnu/openblas-pthread/libblas.so.3")


class BlasError(ValueError):
    """SOUL_BLAS asks for something that cannot be done; the message says what."""


def optimized_library() -> Path | None:
    """The BLAS library to preload for mlx, or None to keep the one bundled with mlx."""
    setting = os.environ.get(SETTING, "auto")
    if setting == "reference" or sys.platform != "linux":
        return None
    if setting in ("", "auto"):
        return DEBIAN_OPENBLAS if DEBIAN_OPENBLAS.is_file() else None
    library = Path(setting)
    if not library.is_file():
        raise BlasError(f"{SETTING}={setting} names no file; use auto, reference or a BLAS library's path")
    return library


def reexec_with_optimized_blas() -> None:
    """Restart this process with the optimized BLAS preloaded, unless it is already.

    Call it first thing in an entry point, never at import: it replaces the running process.
    In the restarted process it gives LD_PRELOAD back its caller's value, so programs started
    from here (PostgreSQL, git, ...) do not load OpenBLAS; a soul process among them arranges
    its own.
    """
    if CALLER_PRELOAD in os.environ:
        caller = os.environ.pop(CALLER_PRELOAD)
        if caller:
            os.environ["LD_PRELOAD"] = caller
        else:
            os.environ.pop("LD_PRELOAD", None)
        return
    library = optimized_library()
    preload = os.environ.get("LD_PRELOAD", "")
    if library is None or str(library) in preload.replace(":", " ").split():
        return
    env = dict(os.environ, LD_PRELOAD=f"{library} {preload}".strip(), **{CALLER_PRELOAD: preload})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


# ---------------------------------------------------------------------------------------------
# What this process runs on.


@dataclass(frozen=True)
class Blas:
    library: str  # the file that libmlx's cblas_sgemm comes from
    name: str  # OpenBLAS's own configuration string, or what the library is

    def __str__(self) -> str:
        return f"{self.name} ({self.library})"


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def _defining_file(scope: ctypes.CDLL, symbol: str) -> str | None:
    try:
        function = getattr(scope, symbol)
    except AttributeError:
        return None
    info = _DlInfo()
    if not ctypes.CDLL(None).dladdr(ctypes.cast(function, ctypes.c_void_p), ctypes.byref(info)):
        return None
    return os.path.realpath(info.dli_fname.decode())


def blas_in_use() -> Blas:
    """The BLAS that mlx's matmuls run on in this process."""
    import mlx.core as mx  # here, not at the top: entry points import this module before restarting

    # The dynamic linker binds libmlx's cblas_sgemm to the first definition in the global scope
    # (the program, LD_PRELOAD, RTLD_GLOBAL libraries), else to one among libmlx's dependencies.
    everywhere = ctypes.CDLL(None)
    library = _defining_file(everywhere, "cblas_sgemm")
    if library is None:
        library = _defining_file(ctypes.CDLL(mx.__file__, mode=os.RTLD_NOLOAD | os.RTLD_LAZY), "cblas_sgemm")
        if library is None:
            return Blas("?", "unknown BLAS")
        if "mlx" in Path(library).parent.name:  # mlx_cpu.libs/libblas-<hash>.so.3: the wheel's own
            return Blas(library, "reference BLAS bundled with mlx")
        return Blas(library, Path(library).name)
    try:
        get_config = everywhere.openblas_get_config
    except AttributeError:
        return Blas(library, Path(library).name)
    get_config.restype = ctypes.c_char_p
    return Blas(library, get_config().decode().strip())


def matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
    """Measured float32 GFLOP/s of an n x n matmul on mlx's CPU."""
    import mlx.core as mx

    a = mx.random.normal((n, n), key=mx.random.key(0))
    b = mx.random.normal((n, n), key=mx.random.key(1))
    mx.eval(mx.matmul(a, b, stream=mx.cpu))  # warm-up: threads, caches
    start = time.perf_counter()
    for _ in range(repeats):
        mx.eval(mx.matmul(a, b, stream=mx.cpu))
    seconds = (time.perf_counter() - start) / repeats
    return 2 * n**3 / seconds / 1e9


def main() -> None:
    """`python -m evolution.weights.blas`: the BLAS a soul process runs on, and how fast it multiplies."""
    try:
        reexec_with_optimized_blas()
    except BlasError as e:
        sys.exit(f"soul: {e}")
    print(f"BLAS: {blas_in_use()}")
    print(f"float32 matmul 1024x1024: {matmul_gflops():.1f} GFLOP/s")


if __name__ == "__main__":
    main()
