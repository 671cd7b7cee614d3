"""The `soul` console script. It restarts once with the optimized BLAS preloaded before the
command line is imported: imported first, the restart would pay for its imports twice (half a
second on every command)."""

from __future__ import annotations

import sys


def entry() -> None:
    from evolution.weights.blas import BlasError, reexec_with_optimized_blas

    try:
        reexec_with_optimized_blas()
    except BlasError as e:
        sys.exit(f"Error: {e}")
    from soul.cli import main

    main()
