"""The `vmvault` script's entry point: the CLI with the cyclic collector off while it loads.

Start-up is mostly imports, and the collector runs every 700 new objects while they load,
each pass scanning what was loaded before; ``cli.main.run`` freezes what is loaded once the
command is (never scanned again) and turns the collector back on. Here, not in
``cli.main``, so that importing the CLI's modules (tests, the server) changes nothing.
"""

from __future__ import annotations

import gc


def run() -> None:
    gc.disable()
    from vmvault.cli.main import run as run_cli

    run_cli()
