"""Reports: whether the fleet is protected, its backups' figures, and the monthly report."""
