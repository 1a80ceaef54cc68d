"""Planning aids: what will this cost (``cost``), how long will it take (``estimate``).

Everything here is a pure function over plain data: no I/O, no clock. Callers gather the
facts (disk usage, recovery points, protection status) and pass them in.
"""

from __future__ import annotations

from vmvault.planning.cost import (
    GB,
    DiskUsage,
    PointUsage,
    PriceTable,
    Report,
    ReportRow,
    VmUsage,
    billing_active,
    billing_decision,
    instance_count,
    instance_price,
    monthly_report,
    protected_instance_size,
    storage_attribution,
    storage_price,
)

__all__ = [
    "GB",
    "DiskUsage",
    "PointUsage",
    "PriceTable",
    "Report",
    "ReportRow",
    "VmUsage",
    "billing_active",
    "billing_decision",
    "instance_count",
    "instance_price",
    "monthly_report",
    "protected_instance_size",
    "storage_attribution",
    "storage_price",
]
