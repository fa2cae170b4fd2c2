"""The search's two halves of the held-out data: ``search`` (scored by every trial) and ``final``.

The recipe's held-out split (``hfcompress.data``: by a hash of each text) is cut again by a
second, independent hash of each text: about half goes to ``search``, the rest to ``final``.
Trials are scored on ``search`` only; the chosen candidate's final evaluation (the numbers in
the output folder) uses ``final``, which no trial ever scored, so the search cannot overfit the
data it is reported on. Duplicated texts always land on the same side.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from ..errors import BadInputError

if TYPE_CHECKING:  # pragma: no cover
    import datasets

PARTS = ("search", "final")
_SALT = b"hfcompress-search-split\0"


def in_final(text: str) -> bool:
    digest = hashlib.sha256(_SALT + text.strip().encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < 0.5


def select_eval_part(ds: datasets.Dataset, part: str) -> datasets.Dataset:
    """The ``part`` (``search`` or ``final``) of the held-out dataset ``ds``; never empty."""
    if part not in PARTS:
        raise ValueError(f"eval_part must be one of {PARTS}, got {part!r}")
    want_final = part == "final"
    keep = [i for i, text in enumerate(ds["text"]) if in_final(text) == want_final]
    if not keep:
        raise BadInputError(
            f"data: the search splits the {len(ds)} held-out samples into a search part and a final part, and "
            f"the {part} part is empty; give more data (or a larger data.eval_fraction)"
        )
    return ds.select(keep)
