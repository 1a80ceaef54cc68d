"""The catalog: a queryable copy of what the vault holds, plus the job history.

The vault is the source of truth; everything here but jobs can be rebuilt from it
(`vmvault vault reindex`). Block maps never enter the catalog: one row per point and per
disk, not per block.
"""

from vmvault.catalog.store import Catalog, default_catalog_url

__all__ = ["Catalog", "default_catalog_url"]
