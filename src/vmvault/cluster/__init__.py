"""A fleet: jobs sent through a Celery broker (Redis) to one worker per hypervisor, with
admission and pool budgets shared in Redis. Without a broker none of this is imported."""
