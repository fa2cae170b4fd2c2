"""hfcompress's built-in plugins, installed as ``hfcompress_plugins``.

Each module is one plugin, registered through the ``hfcompress`` entry-point group exactly as a
third-party plugin would be, and imports only the public API in :mod:`hfcompress.plugin`.
"""
