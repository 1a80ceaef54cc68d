"""Alerts: job failures and security events, stored in the catalog, then delivered.

Raising an alert only writes a row (an outbox): any process may raise one, CLI or worker,
and whichever long-running process holds the delivery settings (the server, the scheduler)
sends the undelivered ones to webhooks and by email, retrying a few times.

Modules: ``settings`` (the inventory's ``[alerts]`` table), ``store`` (raise, list),
``deliver`` (webhooks, SMTP). Nothing is imported here, so the inventory stays light.
"""
