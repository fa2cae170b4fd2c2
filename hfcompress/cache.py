"""Where hfcompress keeps its caches (converted models, data sources, per-step outputs)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def cache_dir(*parts: str) -> Path:
    """``$HFCOMPRESS_CACHE`` (default ``~/.cache/hfcompress``) joined with ``parts``, created."""
    root = Path(os.environ.get("HFCOMPRESS_CACHE") or Path.home() / ".cache" / "hfcompress")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def fingerprint(obj: Any) -> str:
    """A stable short hash of a JSON-able object (dict keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
