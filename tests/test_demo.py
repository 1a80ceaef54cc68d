"""The README's first command, on a small disk: every step runs and proves its result."""

from __future__ import annotations

from pathlib import Path

from conftest import run_cli


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    result = run_cli(
        "demo", "--workdir", str(work), "--size", "24M", env={"VMVAULT_PASSPHRASE": ""}
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert result.stdout.count("byte-identical") == 2
    assert "demo complete" in result.stdout
    assert (work / "vault" / "config").is_file()
