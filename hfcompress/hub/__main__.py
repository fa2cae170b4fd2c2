"""``python -m hfcompress.hub --verify DIR``: the verification subprocess that ``verify_folder`` starts."""

import sys

from .verify import main

sys.exit(main(sys.argv[1:]))
