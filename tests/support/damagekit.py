"""Damage made on purpose in a local vault: a flipped byte inside one data chunk."""

from __future__ import annotations

from pathlib import Path

from vmvault.app.context import Context
from vmvault.vault.format import KIND_DATA


def flip_one_data_chunk(ctx: Context) -> tuple[int, int]:
    """Flip a byte inside one data blob; return the blob's offset in its pack and length."""
    vault = ctx.open_vault()
    loc = next(loc for _, loc in vault.index.items() if loc.kind == KIND_DATA)
    path = Path(ctx.vault_path) / "packs" / loc.pack_id.hex()[:2] / loc.pack_id.hex()
    data = bytearray(path.read_bytes())
    data[loc.offset + loc.length // 2] ^= 0x40
    path.write_bytes(bytes(data))
    return loc.offset, loc.length
