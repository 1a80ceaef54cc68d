"""Object stores behind one small interface (see :mod:`vmvault.backends.base`)."""

from vmvault.backends.base import Backend, validate_key
from vmvault.backends.local import LocalBackend

__all__ = ["Backend", "LocalBackend", "validate_key"]
