"""``python -m gaia_source.emulator``: run one emulated node in the foreground (:func:`gaia_source.emulator.main`)."""

import os
import sys

# One BLAS thread: an embeddings batch is a small matrix product, which OpenBLAS's threads slow down ~5x on a busy
# machine (set before numpy is imported; a caller's explicit setting wins).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from . import main  # noqa: E402

sys.exit(main())
