"""Making an instant VM's overlays whole, so that they no longer need the vault.

While QEMU runs: one ``block-stream`` job per disk copies what the overlay does not hold
yet from its backing export into it, while the guest keeps running and writing; when a job
completes QEMU drops the backing file from the overlay's header. With QEMU gone: the same
copy offline, ``qemu-img rebase -b ""`` (its safe mode reads the backing file through).
Either way the overlay becomes the disk, a standalone qcow2 file where it already is.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from vmvault.errors import VmvaultError
from vmvault.snapshot.qmp_client import QmpConnection

POLL = 0.25  # seconds between looks at the jobs


class FinishFailed(VmvaultError):
    code = "finish_failed"


def stream_online(qmp: Path, nodes: list[str]) -> None:
    """Stream every backing export into its overlay (``NODE-overlay``), all at once, and
    wait until each job has concluded; the first failure is raised (the disks whose job
    completed are whole, the others keep reading through their export)."""
    with QmpConnection(str(qmp)) as conn:
        jobs = {f"finish-{node}": node for node in nodes}
        for job_id, node in jobs.items():
            arguments = {"job-id": job_id, "device": f"{node}-overlay", "auto-dismiss": False}
            conn.execute("block-stream", arguments)
        failures: list[str] = []
        while jobs:
            time.sleep(POLL)
            states: list[dict[str, Any]] = conn.execute("query-jobs")
            for job in states:
                if job["id"] in jobs and job["status"] == "concluded":
                    if "error" in job:
                        failures.append(f"{jobs[job['id']]}: {job['error']}")
                    conn.execute("job-dismiss", {"id": job["id"]})
                    del jobs[job["id"]]
    if failures:
        raise FinishFailed(f"copying the disks failed: {'; '.join(failures)}")


def rebase_offline(overlay: Path) -> None:
    """Copy the backing file's data into a stopped VM's overlay and drop the backing."""
    done = subprocess.run(
        ["qemu-img", "rebase", "-q", "-f", "qcow2", "-b", "", str(overlay)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise FinishFailed(f"qemu-img rebase {overlay}: {done.stderr.strip()}")
