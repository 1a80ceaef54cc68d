"""The server: a REST API under /api/v1 and a dashboard, both over the service layer."""
