"""The wheel carries the built-in plugins and registers them through the same entry-point group."""

from __future__ import annotations

import configparser
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_registers_every_builtin_plugin(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("hfcompress-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        eps = configparser.ConfigParser()
        eps.read_string(zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode())
    plugins = dict(eps["hfcompress"])
    assert {"head-pruning", "distillation", "quantization", "vader"} <= set(plugins)
    for module in plugins.values():  # every entry point's module (a file or a package) ships in the wheel
        path = module.replace(".", "/")
        assert f"{path}.py" in names or f"{path}/__init__.py" in names, module
    assert eps["console_scripts"]["hfcompress"] == "hfcompress.cli:main"
    for needed in ("hfcompress/testing/hub_server/__init__.py", "hfcompress/metrics/accuracy/accuracy.py",
                   "hfcompress_plugins/modeling/modeling_hfcompress_pruned.py"):
        assert needed in names, needed
