"""Where alerts go: the inventory's ``[alerts]`` table (webhooks, SMTP)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SmtpSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str
    port: int = Field(default=25, ge=1, le=65535)
    sender: str = Field(alias="from")
    to: list[str] = Field(min_length=1)
    starttls: bool = False
    username: str | None = None
    # A file holding the password, so the inventory itself carries no secret.
    password_file: str | None = None


class AlertSettings(BaseModel):
    """The inventory's ``[alerts]`` table."""

    model_config = ConfigDict(extra="forbid")

    webhooks: list[str] = []
    smtp: SmtpSettings | None = None
    timeout: float = Field(default=5.0, gt=0, le=60)
