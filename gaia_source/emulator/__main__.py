"""``python -m gaia_source.emulator``: run one emulated node in the foreground (:func:`gaia_source.emulator.main`)."""

import os
import sys

# One BLAS thread: an embeddings batch is a small matrix product, which OpenBLAS's threads slow down ~5x on a busy
# machine, and whose idle worker spins on a core of its own (set before numpy is imported, which is why no module of
# this package imports numpy at import time: tests/test_emulator.py checks; a caller's explicit setting wins).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from . import main  # noqa: E402

sys.exit(main())
