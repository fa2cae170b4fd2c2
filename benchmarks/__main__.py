"""``python -m benchmarks run [--quick] [--suite encoder|decoder|all] [--threads 1,2] [--only NAME,...]``."""

from __future__ import annotations

import sys

from .run import main

if __name__ == "__main__":
    sys.exit(main())
