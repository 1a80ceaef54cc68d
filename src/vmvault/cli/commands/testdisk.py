"""`vmvault testdisk`: make realistic VM disk images for trying vmvault out."""

from __future__ import annotations

import secrets

import typer

from vmvault import testdisk
from vmvault.cli.options import json_option
from vmvault.cli.output import emit_json, guarded
from vmvault.cli.render.testdisk import print_created, print_mutated
from vmvault.errors import UsageError

app = typer.Typer(help="Generate and mutate realistic test disk images.", no_args_is_help=True)


def _size(text: str) -> int:
    try:
        return testdisk.parse_size(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


@app.command("create")
def create(
    image: str = typer.Argument(..., help="Image file to write (overwritten)."),
    size: str = typer.Option("1G", "--size", help="Logical size, e.g. 512M, 4G."),
    seed: int = typer.Option(1, "--seed"),
    allocated: float | None = typer.Option(
        None,
        "--allocated",
        help="Percent of the disk written (0-100]; the rest are holes. Default 60.",
    ),
    json: bool = json_option(None),
) -> None:
    """Create a sparse raw image: holes, zeros, log-like text, random data, duplicates."""

    def act() -> testdisk.DiskStats:
        nbytes = _size(size)  # a bad size is named before a bad share, as typed
        if allocated is not None and not 0 < allocated <= 100:  # NaN fails this too
            raise UsageError(f"--allocated must be above 0 and at most 100, got {allocated:g}")
        share = None if allocated is None else allocated / 100
        return testdisk.create_disk(image, nbytes, seed=seed, allocated=share)

    stats = guarded(json, act)
    if json:
        emit_json(stats.__dict__)
    else:
        print_created(stats)


@app.command("mutate")
def mutate(
    image: str = typer.Argument(..., help="Existing image to change in place."),
    percent: float = typer.Option(1.0, "--percent", help="Share of the disk to rewrite."),
    seed: int | None = typer.Option(
        None, "--seed", help="Repeat a mutation (its seed is printed). Default: a new one."
    ),
    json: bool = json_option(None),
) -> None:
    """Rewrite PERCENT of the image in scattered 64 KiB writes (a day of guest writes)."""

    def act() -> testdisk.MutationStats:
        # A fresh seed by default: a second day's writes must differ from the first's (the
        # same seed writes the same bytes to the same places, and a backup finds no change).
        day = secrets.randbelow(2**31) if seed is None else seed
        try:
            return testdisk.mutate_disk(image, percent, seed=day)
        except FileNotFoundError as exc:
            raise UsageError(str(exc)) from None
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    stats = guarded(json, act)
    if json:
        emit_json(stats.__dict__)
    else:
        print_mutated(stats)
