"""``python -m erasure.eval`` and ``accelerate launch -m erasure.eval``: the ``erase-eval`` CLI."""

import sys

from .cli import main

sys.exit(main())
