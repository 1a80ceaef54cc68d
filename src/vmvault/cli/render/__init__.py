"""The CLI's human output, one module per command group (``render/points.py`` for
``commands/points.py``...): tables and summaries of the documents the commands get.

``--json`` never comes here: the commands print their documents with ``output.emit_json``.
"""
