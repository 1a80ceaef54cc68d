"""The vault's config object (``config``, in the clear: the format, sizes, the vault's id)
and how new recovery points are named."""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from vmvault.errors import CorruptObject, UnsupportedFormat
from vmvault.vault.format import FORMAT_NAME, FORMAT_VERSION


@dataclass(frozen=True)
class VaultConfig:
    vault_id: str
    version: int
    chunk_size: int
    block_size: int
    pack_target: int
    compression_level: int
    created: str

    def to_json(self) -> bytes:
        return json.dumps({"format": FORMAT_NAME, **asdict(self)}, indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes) -> VaultConfig:
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict):
                raise TypeError("not a JSON object")
            if doc.get("format") != FORMAT_NAME:
                raise UnsupportedFormat("this directory is not a vmvault vault")
            if doc.get("version") != FORMAT_VERSION:
                raise UnsupportedFormat(
                    f"vault format version {doc.get('version')} is not supported "
                    f"(this vmvault reads version {FORMAT_VERSION})"
                )
            config = cls(**{k: doc[k] for k in cls.__dataclass_fields__})
            for name, value in asdict(config).items():
                # `type(...) is`: JSON's true is no chunk size; the annotations are strings.
                if type(value).__name__ != cls.__dataclass_fields__[name].type:
                    raise TypeError(f"{name} is {type(value).__name__}")
            if min(config.chunk_size, config.block_size, config.pack_target) <= 0:
                raise ValueError("sizes must be positive")
            if config.block_size % config.chunk_size:
                raise ValueError("the block size is not a multiple of the chunk size")
            return config
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise CorruptObject(f"vault config is malformed: {exc}") from None


def new_point_id(now: datetime | None = None) -> str:
    """Point ids sort by creation time and are unique without coordination."""
    now = now or datetime.now(UTC)
    # Microseconds: points of one second still sort in the order they were made.
    return f"{now:%Y%m%dT%H%M%S.%f}Z-{secrets.token_hex(4)}"
