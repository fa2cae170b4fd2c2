"""Make real installed-distribution metadata (dist-info with entry points) in a folder.

Used to test plugin discovery through ``importlib.metadata`` exactly as pip-installed plugins
are found, without pip: put the folder on ``sys.path`` and the entry points are live.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path


def make_distribution(root: Path, name: str, entry_points: dict[str, str], modules: dict[str, str],
                      version: str = "1.0") -> Path:
    """Write ``modules`` (module name → source) and a ``NAME-VERSION.dist-info`` declaring
    ``entry_points`` (entry-point name → ``module``) in the ``hfcompress`` group, under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    dist_info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir(exist_ok=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = ["[hfcompress]"] + [f"{ep} = {target}" for ep, target in entry_points.items()]
    (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return root


def activate(root: Path) -> None:
    """Put ``root`` first on ``sys.path`` (and drop cached modules from an earlier activation)."""
    import importlib

    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
