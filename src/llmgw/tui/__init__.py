"""The ``llmgw top`` terminal dashboard (Textual): a front end of the core, like ``cli/``.

Nothing outside ``tui/`` imports this package except ``cli/top_cmd.py``, and that only inside the
command, so Textual is loaded by ``llmgw top`` alone. ``data``, ``actions`` and ``fmt`` do not import
Textual; ``app`` and ``modals`` do.
"""
