"""Jobs: admission control and the shared budgets of storage pools."""
