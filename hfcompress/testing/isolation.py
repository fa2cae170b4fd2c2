"""Run code as a user without hfcompress would: a prelude for ``python -c`` subprocesses.

Prepend :data:`BLOCK_HFCOMPRESS` to a script to prove that an output folder loads with plain
transformers / onnxruntime; the script stops if hfcompress is still importable.
"""

BLOCK_HFCOMPRESS = r"""
import sys
sys.modules["hfcompress"] = None
sys.modules["hfcompress_plugins"] = None
try:
    import hfcompress  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("hfcompress is importable; the isolation did not work")
"""
