"""The CLI as a client of a running server (``--server URL --token T``).

The read and run commands send the same requests the dashboard does and print the answers
with the same tables as the local commands; the server's JSON errors become the CLI's
one-line errors with the server's code.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass
from typing import Any

import httpx

from vmvault.engine.progress import ProgressCallback, ProgressEvent, no_progress
from vmvault.errors import VmvaultError
from vmvault.point_refs import latest_is_ambiguous

FINAL = frozenset({"succeeded", "partially_succeeded", "failed", "cancelled"})


class RemoteError(VmvaultError):
    """An error answered by the server, or the server not answering."""

    def __init__(self, code: str, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.exit_code = 2 if 400 <= status < 500 else 1


@dataclass
class Remote:
    url: str
    token: str
    ca_cert: str | None = None
    timeout: float = 60.0

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        verify: Any = True
        if self.ca_cert:
            try:
                verify = ssl.create_default_context(cafile=self.ca_cert)
            except (OSError, ssl.SSLError) as exc:
                message = f"cannot use --ca-cert {self.ca_cert}: {exc}"
                raise RemoteError("bad_input", message, 400) from None
        try:
            return httpx.request(
                method,
                self.url.rstrip("/") + path,
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=self.timeout,
                verify=verify,
                **kwargs,
            )
        except httpx.HTTPError as exc:
            raise RemoteError("server_unreachable", f"cannot reach {self.url}: {exc}") from None

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer; an error answer raises with the server's code and message."""
        response = self._send(method, path, **kwargs)
        try:
            doc = response.json()
        except ValueError:
            raise RemoteError(
                "bad_answer",
                f"{self.url} answered {response.status_code} without JSON: is it a vmvault server?",
                response.status_code,
            ) from None
        if response.status_code >= 400:
            error = doc.get("error", {}) if isinstance(doc, dict) else {}
            raise RemoteError(
                str(error.get("code", "http_error")),
                f"server: {error.get('message', response.reason_phrase)}",
                response.status_code,
            )
        return doc

    def request_bytes(self, method: str, path: str, **params: Any) -> bytes:
        """A non-JSON answer (a chart); errors are still JSON."""
        response = self._send(method, path, params=params)
        if response.status_code >= 400:
            self.request(method, path, params=params)  # raises with the server's message
        return response.content

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("POST", path, json=body)

    def wait(
        self, job_id: int, progress: ProgressCallback = no_progress, poll: float = 0.5
    ) -> dict[str, Any]:
        """Follow a job until it ends, passing on its per-disk progress; returns its end."""
        while True:
            job: dict[str, Any] = self.get(f"/api/v1/jobs/{job_id}")
            for disk, p in sorted((job.get("progress") or {}).items()):
                progress(
                    ProgressEvent(p.get("operation", job["kind"]), disk, p["done"], p["total"])
                )
            if job["state"] in FINAL:
                return job
            time.sleep(poll)

    def point_id(self, ref: str, vm: str | None) -> str:
        """A full point id from an id, a unique prefix, or ``latest`` (of ``vm``)."""
        points = self.get("/api/v1/points", vm=vm, limit=500)["items"]
        if ref == "latest":
            if not points:
                raise RemoteError("point_not_found", "the server has no recovery points", 404)
            if vm is None and len(vms := sorted({str(p["vm"]) for p in points})) > 1:
                raise RemoteError("ambiguous_point", latest_is_ambiguous(vms), 400)
            return str(points[0]["id"])
        matches = [p["id"] for p in points if str(p["id"]).startswith(ref)]
        if len(matches) != 1:
            raise RemoteError(
                "point_not_found" if not matches else "bad_input",
                f"{ref!r} names {len(matches)} points on the server",
                404 if not matches else 400,
            )
        return str(matches[0])
