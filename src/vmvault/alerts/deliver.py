"""Sending stored alerts to webhooks (JSON POST) and by email (SMTP)."""

from __future__ import annotations

import hashlib
import logging
import smtplib
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import select

from vmvault.alerts.settings import AlertSettings, SmtpSettings
from vmvault.alerts.store import alert_doc
from vmvault.catalog.models import Alert

if TYPE_CHECKING:
    from vmvault.catalog.store import Catalog

log = logging.getLogger("vmvault.alerts")
MAX_ATTEMPTS = 5  # per destination; then the alert stays listed but is no longer sent


def _post(url: str, alert: Alert, timeout: float) -> None:
    response = httpx.post(url, json=alert_doc(alert, deliveries=False), timeout=timeout)
    response.raise_for_status()


def _mail(smtp: SmtpSettings, alert: Alert, timeout: float) -> None:
    message = EmailMessage()
    message["Subject"] = f"[vmvault {alert.severity}] {alert.kind}: {alert.message}"[:200]
    message["From"] = smtp.sender
    message["To"] = ", ".join(smtp.to)
    lines = [alert.message, "", f"kind: {alert.kind}", f"at: {alert.at.isoformat()}"]
    if alert.vm:
        lines.append(f"vm: {alert.vm}")
    message.set_content("\n".join(lines) + "\n")
    with smtplib.SMTP(smtp.host, smtp.port, timeout=timeout) as client:
        if smtp.starttls:
            client.starttls()
        if smtp.username:
            password = Path(smtp.password_file).read_text().strip() if smtp.password_file else ""
            client.login(smtp.username, password)
        client.send_message(message)


def _destinations(settings: AlertSettings) -> list[str]:
    return [*settings.webhooks, *(["smtp"] if settings.smtp else [])]


def label(destination: str) -> str:
    """A destination as recorded and logged: a webhook's path and query often carry its
    secret (chat webhooks do), so only the scheme, the host and a short hash are kept."""
    if destination == "smtp":
        return destination
    url = httpx.URL(destination)
    digest = hashlib.sha256(destination.encode()).hexdigest()[:8]
    return f"{url.scheme}://{url.host}{f':{url.port}' if url.port else ''}/…#{digest}"


def _settled(history: list[dict[str, Any]], name: str) -> bool:
    """Delivered to ``name``, or tried there as often as it will be."""
    tries = [d for d in history if d["to"] == name]
    return any(d["ok"] for d in tries) or len(tries) >= MAX_ATTEMPTS


def deliver_pending(catalog: Catalog, vault_id: str, settings: AlertSettings) -> int:
    """Send every pending alert to each destination not yet reached; returns how many sends
    worked.

    Each attempt is recorded on the alert (destination, ok, error, time), so the dashboard
    shows where an alert went and why it did not.
    """
    destinations = _destinations(settings)
    if not destinations:
        return 0
    sent = 0
    with catalog.session() as s:
        query = select(Alert).where(Alert.vault_id == vault_id, Alert.pending).order_by(Alert.id)
        alerts = list(s.scalars(query))
    for alert in alerts:
        history: list[dict[str, Any]] = list(alert.deliveries or [])
        for destination in destinations:
            name = label(destination)
            if _settled(history, name):
                continue
            try:
                if destination == "smtp":
                    assert settings.smtp is not None
                    _mail(settings.smtp, alert, settings.timeout)
                else:
                    _post(destination, alert, settings.timeout)
                outcome: dict[str, Any] = {"ok": True, "error": None}
                sent += 1
            except (OSError, httpx.HTTPError, smtplib.SMTPException) as exc:
                outcome = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
                log.warning("alert %d to %s failed: %s", alert.id, name, outcome["error"])
            history.append({"to": name, "at": datetime.now(UTC).isoformat(), **outcome})
        with catalog.session.begin() as s:
            row = s.get(Alert, alert.id)
            if row is not None:
                row.deliveries = history
                # Sent everywhere it can be: later passes skip it. A destination added
                # afterwards gets the alerts raised from then on, not the whole history.
                row.pending = not all(_settled(history, label(d)) for d in destinations)
    return sent
