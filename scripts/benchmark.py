#!/usr/bin/env python
"""``erase-bench`` (``erasure.benchmark``) by its script name: ``python scripts/benchmark.py --quick``."""

import sys

from erasure.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
