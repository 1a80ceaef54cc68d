"""The store-retention capability without a server: which keys a rule covers and until
when, what the S3 and Azure backends send for them (fake clients recording the calls), and
how a wrapper finds the capability. The real stores are in
tests/integration/test_store_immutability.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import pytest

from vmvault.backends.azure import AzureBackend
from vmvault.backends.base import (
    RETENTION_MARGIN,
    StoreRetention,
    WriteRetention,
    retaining,
)
from vmvault.backends.local import LocalBackend
from vmvault.backends.retry import RetryingBackend
from vmvault.backends.s3 import S3Backend
from vmvault.vault.store_retention import RETAINED_KEYS, rule_for

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

NOW = datetime(2026, 3, 1, 12, 0, 0, 500_000, tzinfo=UTC)
RULE = WriteRetention("compliance", 30, RETAINED_KEYS)


def test_what_a_rule_covers() -> None:
    for key in ("packs/ab/ab12", "index/cd34", "manifests/ef", "points/p1", "keys/default"):
        assert RULE.covers(key), key
    assert RULE.covers("config")
    # The objects rewritten in place are never retained, nor a key that only starts alike.
    for key in ("settings", "protection/ab", "gc/pending", "locks/x", "damaged/ab", "replica"):
        assert not RULE.covers(key), key
    assert not RULE.covers("configuration") and not RULE.covers("packsx/a")


def test_until_is_days_and_a_margin_in_whole_seconds() -> None:
    until = RULE.until(NOW)
    assert until == NOW.replace(microsecond=0) + timedelta(days=30) + RETENTION_MARGIN


def test_active_retentions() -> None:
    later = NOW + timedelta(days=1)
    assert StoreRetention("governance", later).active(NOW)
    assert not StoreRetention("governance", NOW - timedelta(seconds=1)).active(NOW)
    assert StoreRetention(None, None, legal_hold=True).active(NOW)
    assert not StoreRetention(None, None).active(NOW)
    assert StoreRetention(None, None, legal_hold=True).describe() == " (a legal hold)"
    assert (
        StoreRetention("compliance", later).describe() == f" until {later.isoformat()[:19]}+00:00"
    )


def test_the_rule_the_settings_ask_for() -> None:
    assert rule_for({"immutability": "locked", "store_retention_days": 9}) == WriteRetention(
        "compliance", 9, RETAINED_KEYS
    )
    on = rule_for({"immutability": "on", "store_retention_days": 9})
    assert on is not None and on.mode == "governance"
    assert rule_for({"immutability": "off", "store_retention_days": 9}) is None  # kept, unused
    assert rule_for({"immutability": "locked"}) is None  # never asked of the store
    assert rule_for({"immutability": "locked", "store_retention_days": "9"}) is None


class _S3Client:
    def __init__(self) -> None:
        self.puts: dict[str, dict[str, Any]] = {}

    def put_object(self, **kwargs: Any) -> dict[str, Any]:
        self.puts[kwargs["Key"]] = kwargs
        return {}


def test_s3_writes_covered_keys_with_object_lock_headers() -> None:
    client = _S3Client()
    backend = S3Backend("bucket", "v", client)
    backend.create("packs/ab/ab12", b"pack")  # nothing asked yet: no headers
    assert "ObjectLockMode" not in client.puts["v/packs/ab/ab12"]
    backend.retain_writes(RULE)
    backend.create("points/p1", [b"po", b"int"])
    backend.put("manifests/m1", b"m")
    backend.put("settings", b"s")
    for key in ("v/points/p1", "v/manifests/m1"):
        sent = client.puts[key]
        assert sent["ObjectLockMode"] == "COMPLIANCE"
        left = sent["ObjectLockRetainUntilDate"] - datetime.now(UTC)
        assert timedelta(days=36) < left <= timedelta(days=37)
    assert client.puts["v/points/p1"]["IfNoneMatch"] == "*"  # still a creation
    assert "ObjectLockMode" not in client.puts["v/settings"]
    backend.retain_writes(None)
    backend.put("manifests/m2", b"m")
    assert "ObjectLockMode" not in client.puts["v/manifests/m2"]


class _Blob:
    def __init__(self, container: _Container, name: str) -> None:
        self.container, self.name = container, name

    def get_blob_properties(self) -> Any:
        return self.container.props[self.name]

    def set_immutability_policy(self, policy: Any) -> dict[str, str]:
        self.container.policies[self.name] = policy
        return {}


class _Container:
    def __init__(self, **flags: Any) -> None:
        self.flags = flags
        self.uploads: dict[str, dict[str, Any]] = {}
        self.props: dict[str, Any] = {}
        self.policies: dict[str, Any] = {}

    def upload_blob(self, name: str, data: bytes, **kwargs: Any) -> None:
        self.uploads[name] = kwargs

    def get_container_properties(self) -> Any:
        return SimpleNamespace(
            immutable_storage_with_versioning_enabled=self.flags.get("versioned"),
            has_immutability_policy=self.flags.get("policy", False),
            has_legal_hold=self.flags.get("hold", False),
        )

    def get_blob_client(self, name: str) -> _Blob:
        return _Blob(self, name)


def _azure(container: _Container) -> AzureBackend:
    return AzureBackend("acct", "c1", "v", cast("ContainerClient", container))


def test_azure_only_where_the_container_has_version_level_immutability() -> None:
    # Azurite's answer: the flag absent (None), no container-level policy or hold.
    support = _azure(_Container()).retention_support()
    assert not support.available and "has no version-level immutability" in support.detail
    held = _azure(_Container(hold=True)).retention_support()
    assert not held.available and "cannot work under" in held.detail
    assert _azure(_Container(versioned=True)).retention_support().available


def test_azure_writes_and_extends_immutability_policies() -> None:
    container = _Container(versioned=True)
    backend = _azure(container)
    backend.retain_writes(WriteRetention("governance", 3, RETAINED_KEYS))
    backend.create("packs/ab/ab12", b"pack")
    backend.put("locks/x", b"lock")
    policy = container.uploads["v/packs/ab/ab12"]["immutability_policy"]
    assert policy.policy_mode == "Unlocked"  # Azure's relaxed mode, as S3's GOVERNANCE
    assert policy.expiry_time > datetime.now(UTC) + timedelta(days=9)
    assert container.uploads["v/packs/ab/ab12"]["overwrite"] is False
    assert "immutability_policy" not in container.uploads["v/locks/x"]

    until = NOW + timedelta(days=40)
    backend.retain("points/p1", StoreRetention("compliance", until))
    assert container.policies["v/points/p1"].policy_mode == "Locked"
    assert container.policies["v/points/p1"].expiry_time == until

    container.props["v/points/p1"] = SimpleNamespace(
        immutability_policy=SimpleNamespace(expiry_time=until, policy_mode="locked"),
        has_legal_hold=False,
    )
    assert backend.retention("points/p1") == StoreRetention("compliance", until)
    container.props["v/config"] = SimpleNamespace(
        immutability_policy=SimpleNamespace(expiry_time=None, policy_mode=None),
        has_legal_hold=None,
    )
    assert backend.retention("config") is None


def test_wrappers_and_directories(tmp_path: Path) -> None:
    local = LocalBackend(str(tmp_path))
    assert retaining(local) is None
    assert retaining(RetryingBackend(local)) is None
    s3 = RetryingBackend(S3Backend("bucket", "", _S3Client()))
    assert retaining(s3) is s3
    with pytest.raises(ValueError, match="needs a mode and a date"):
        S3Backend("bucket", "", _S3Client()).retain("config", StoreRetention(None, None))
