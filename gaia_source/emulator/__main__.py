"""``python -m gaia_source.emulator``: run one emulated node in the foreground (:func:`gaia_source.emulator.main`)."""

import sys

from . import main

sys.exit(main())
