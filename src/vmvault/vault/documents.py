"""The vault's small sealed documents besides points: where they live and how they are sealed.

``settings`` (immutability, soft delete, the retention each VM's points are kept for) and
``protection/<keyed hash of the VM>`` (one VM's protection state) are JSON sealed with the
vault's key (``Vault.get_document`` / ``put_document``); no VM name appears in a key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # vault.py reads the settings when it opens a vault
    from vmvault.vault.vault import Vault

SETTINGS_KEY = "settings"
PROTECTION_PREFIX = "protection/"
AAD_SETTINGS = b"vmvault-settings-v1"
AAD_PROTECTION = b"vmvault-protection-v1"


def protection_key(vault: Vault, vm: str) -> str:
    return f"{PROTECTION_PREFIX}{vault.keys.chunk_id(b'vm:' + vm.encode()).hex()[:32]}"


# In a copy made by replication: where it came from, and the points its own retention
# removed (so the next replication does not bring them back).
REPLICA_KEY = "replica"
AAD_REPLICA = b"vmvault-replica-v1"
