"""The README's first command, on a small disk: every step runs and proves its result."""

from __future__ import annotations

from pathlib import Path

from support.cli import run_cli


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    result = run_cli(
        "demo", "--workdir", str(work), "--size", "24M", env={"VMVAULT_PASSPHRASE": ""}
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert result.stdout.count("byte-identical") == 2
    assert "application-consistent" in result.stdout
    assert "resource excluded: temporary disk" in result.stdout
    assert "demo complete" in result.stdout
    assert (work / "vault" / "config").is_file()


def test_demo_json_summary(tmp_path: Path) -> None:
    import json

    result = run_cli("demo", "--workdir", str(tmp_path / "d"), "--size", "16M", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert [p["type"] for p in summary["points"]] == ["full", "incremental"]
    assert all(r["identical"] for r in summary["restores"]) and len(summary["restores"]) == 3
    assert summary["points"][0]["consistency"]["level"] == "application"
    bad = run_cli("demo", "--workdir", str(tmp_path / "e"), "--size", "huge", "--json")
    assert bad.returncode == 2 and json.loads(bad.stdout)["error"]["code"] == "bad_input"
