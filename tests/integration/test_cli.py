"""The CLI contract: one clear error line (or a JSON error), a non-zero exit, no data lost."""

from __future__ import annotations

import json
import os
from pathlib import Path

from support.cli import PASSPHRASE, run_cli, same_content
from vmvault import testdisk

MiB = testdisk.MiB


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "VMVAULT_VAULT": str(tmp_path / "vault"),
        "VMVAULT_CATALOG": f"sqlite:///{tmp_path / 'cat.db'}",
        "VMVAULT_PASSPHRASE": PASSPHRASE,
        **extra,
    }


def test_full_cycle_with_json(tmp_path: Path) -> None:
    env = _env(tmp_path)
    image = tmp_path / "d.img"
    created = run_cli("testdisk", "create", str(image), "--size", "12M", env=env)
    assert created.returncode == 0 and "d.img: 12.0 MiB, " in created.stdout, created.stdout
    assert "Traceback" not in created.stderr  # its worker processes end quietly
    init = run_cli("init", "--json", env=env)
    assert init.returncode == 0, init.stderr
    assert json.loads(init.stdout)["format_version"] == 1
    backup = run_cli("backup", str(image), "--vm", "web", "--json", env=env)
    assert backup.returncode == 0, backup.stderr
    point = json.loads(backup.stdout)
    assert point["vm"] == "web" and point["disks"][0]["name"] == "d"
    listed = json.loads(run_cli("list", "--json", env=env).stdout)
    assert [p["id"] for p in listed["points"]] == [point["id"]]
    out = tmp_path / "r.img"
    restored = run_cli("restore", point["id"][:10], str(out), "--json", env=env)
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["damaged"] == []
    assert same_content(image, out)
    verify = run_cli("verify", "latest", "--json", env=env)
    assert verify.returncode == 0 and json.loads(verify.stdout)["ok"] is True
    assert json.loads(verify.stdout)["disks"][0]["vm"] == "web"
    said = run_cli("verify", "latest", env={**env, "COLUMNS": "80"})
    assert said.stdout.startswith(f"{point['id']} web d: ok, "), said.stdout
    nothing = run_cli("list", "--vm", "nosuch", env=env)
    assert nothing.returncode == 0 and nothing.stdout == "no recovery points (vm nosuch)\n"
    check = run_cli("check", "--read-data", "--json", env=env)
    assert check.returncode == 0 and json.loads(check.stdout)["ok"] is True
    jobs = json.loads(run_cli("jobs", "list", "--json", env=env).stdout)["jobs"]
    assert [j["kind"] for j in jobs] == ["restore", "backup"]
    assert all(j["state"] == "succeeded" for j in jobs)
    text = run_cli("backup", str(image), "--vm", "web", env=env)
    assert text.returncode == 0 and "incremental" in text.stdout


def test_list_shows_each_point_by_a_prefix_restore_takes(tmp_path: Path) -> None:
    env = _env(tmp_path, COLUMNS="80")
    image = tmp_path / "d.img"
    assert run_cli("testdisk", "create", str(image), "--size", "4M", env=env).returncode == 0
    assert run_cli("init", env=env).returncode == 0
    ids = []
    for vm in ("web", "db"):
        backup = run_cli("backup", str(image), "--vm", vm, "--json", env=env)
        ids.append(json.loads(backup.stdout)["id"])
    listed = run_cli("list", env=env)
    refs = [line.split()[0] for line in listed.stdout.splitlines() if line.strip()[:1] == "2"]
    assert all(point_id.startswith(ref) for point_id, ref in zip(ids, refs, strict=True))
    assert all(len(ref) >= len("20261129T124701") for ref in refs) and refs[0] != refs[1]
    out = tmp_path / "r.img"
    assert run_cli("restore", refs[1], str(out), env=env).returncode == 0
    assert same_content(image, out)
    ambiguous = run_cli("forget", "2", "--json", env=env)  # the century both share
    assert ambiguous.returncode == 2
    assert json.loads(ambiguous.stdout)["error"]["code"] == "ambiguous_point"
    failed = run_cli("backup", str(tmp_path / "nope.img"), "--vm", "web", env=env)
    assert failed.returncode == 1
    jobs = run_cli("jobs", "list", "--state", "failed", "--vm", "web", "--json", env=env)
    assert [j["state"] for j in json.loads(jobs.stdout)["jobs"]] == ["failed"]
    db_jobs = run_cli("jobs", "list", "--vm", "db", "--json", env=env)
    db_kinds = [(j["kind"], j["point_id"]) for j in json.loads(db_jobs.stdout)["jobs"]]
    assert db_kinds == [("restore", ids[1]), ("backup", ids[1])]


def test_usage_errors_are_the_json_error_with_json(tmp_path: Path) -> None:
    env = _env(tmp_path)
    for args, words in (
        (("list", "--bogus", "--json"), "No such option: --bogus"),
        (("restore", "--json"), "Missing argument"),
        (("jobs", "list", "--state", "nope", "--json"), "'nope' is not one of"),
        (("jobs", "show", "seven", "--json"), "job_id"),
    ):
        result = run_cli(*args, env=env)
        assert result.returncode == 2, (args, result.stderr)
        error = json.loads(result.stdout)["error"]
        assert error["code"] == "bad_input" and words in error["message"], (args, error)
        assert result.stderr == ""


def test_usage_errors_are_one_line_without_json(tmp_path: Path) -> None:
    env = _env(tmp_path)
    for args, words in (
        (("list", "--bogus"), "No such option: --bogus"),
        (("restore",), "Missing argument 'point'"),
        (("jobs", "list", "--state", "bogus"), "'bogus' is not one of 'queued'"),
        (("nosuchcmd",), "No such command 'nosuchcmd'"),
    ):
        result = run_cli(*args, env=env)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stdout == ""
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, args
        assert words in result.stderr, (args, result.stderr)
    helped = run_cli("jobs", "list", "--help", env=env)  # help is click's, as ever
    assert helped.returncode == 0 and "Usage:" in helped.stdout and "--state" in helped.stdout


def test_wrong_passphrase_is_one_clear_error(tmp_path: Path) -> None:
    env = _env(tmp_path)
    assert run_cli("init", env=env).returncode == 0
    result = run_cli("list", env={**env, "VMVAULT_PASSPHRASE": "not it"})
    assert result.returncode == 1
    assert result.stderr.strip() == "error: wrong passphrase for this vault"
    as_json = run_cli("list", "--json", env={**env, "VMVAULT_PASSPHRASE": "not it"})
    assert json.loads(as_json.stdout)["error"]["code"] == "wrong_passphrase"


def test_passphrase_file_and_missing_passphrase(tmp_path: Path) -> None:
    env = _env(tmp_path)
    key = tmp_path / "pass.txt"
    key.write_text(PASSPHRASE + "\n")
    assert run_cli("init", "--passphrase-file", str(key), env=env).returncode == 0
    no_pass = {k: v for k, v in env.items() if k != "VMVAULT_PASSPHRASE"}
    no_pass["VMVAULT_PASSPHRASE"] = ""
    result = run_cli("list", env=no_pass)
    assert result.returncode == 1 and "no passphrase" in result.stderr
    ok = run_cli("list", "--passphrase-file", str(key), env=no_pass)
    assert ok.returncode == 0, ok.stderr


def test_bad_inputs_give_one_line(tmp_path: Path) -> None:
    env = _env(tmp_path)
    not_a_vault = run_cli("list", env=env)
    assert not_a_vault.returncode == 1 and "no vault at" in not_a_vault.stderr
    assert len(not_a_vault.stderr.strip().splitlines()) == 1
    assert run_cli("init", env=env).returncode == 0
    again = run_cli("init", env=env)
    assert again.returncode == 1 and "already exists" in again.stderr
    missing = run_cli("backup", str(tmp_path / "nope.img"), "--vm", "x", env=env)
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"error: disk {tmp_path / 'nope.img'} does not exist"
    directory = run_cli("backup", str(tmp_path), "--vm", "x", env=env)
    assert directory.returncode == 1 and "directory" in directory.stderr
    unknown = run_cli("restore", "20991231", str(tmp_path / "o.img"), env=env)
    assert unknown.returncode == 1 and "no recovery point" in unknown.stderr
    no_vault = run_cli("list", env={**env, "VMVAULT_VAULT": ""})
    assert no_vault.returncode == 2 and "no vault given" in no_vault.stderr
    bad_size = run_cli("testdisk", "create", str(tmp_path / "x.img"), "--size", "lots", env=env)
    assert bad_size.returncode == 2 and bad_size.stderr.startswith("error:")
    for result in (missing, directory, unknown, bad_size):
        assert "Traceback" not in result.stderr


def test_testdisk_allocated_share(tmp_path: Path) -> None:
    image = tmp_path / "a.img"
    made = run_cli("testdisk", "create", str(image), "--size", "8M", "--allocated", "40")
    assert made.returncode == 0, made.stderr
    assert abs(image.stat().st_blocks * 512 / (8 * MiB) - 0.40) < 0.02
    for bad in ("0", "100.5", "-5"):
        refused = run_cli("testdisk", "create", str(tmp_path / "b.img"), "--allocated", bad)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert refused.stderr.startswith("error: --allocated must be above 0 and at most 100")


def test_testdisk_mutate_writes_a_new_day_each_run_unless_a_seed_is_repeated(
    tmp_path: Path,
) -> None:
    image = tmp_path / "m.img"
    testdisk.create_disk(image, 4 * MiB, seed=3)

    def mutate(*seed: str) -> tuple[bytes, dict[str, object]]:
        done = run_cli("testdisk", "mutate", str(image), "--percent", "10", "--json", *seed)
        assert done.returncode == 0, done.stderr
        return image.read_bytes(), json.loads(done.stdout)

    before = image.read_bytes()
    first, first_doc = mutate()
    second, second_doc = mutate()  # the README's "a day of guest writes", run again
    assert before != first != second and first_doc["seed"] != second_doc["seed"]
    again, _ = mutate("--seed", str(second_doc["seed"]))  # the same day's writes, replayed
    assert again == second


def test_latest_with_points_of_several_vms_names_no_point(tmp_path: Path) -> None:
    env = _env(tmp_path)
    assert run_cli("init", env=env).returncode == 0
    for vm, seed in (("web01", 1), ("db01", 2)):
        image = tmp_path / f"{vm}.img"
        testdisk.create_disk(image, 2 * MiB, seed=seed)
        assert run_cli("backup", str(image), "--vm", vm, env=env).returncode == 0
    target = tmp_path / "out.img"
    for argv in (("restore", "latest", str(target)), ("forget", "latest"), ("verify", "latest")):
        refused = run_cli(*argv, env=env)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert "'latest' names no single point" in refused.stderr
        assert "2 VMs (db01, web01); give --vm NAME" in refused.stderr
    assert not target.exists()
    assert len(json.loads(run_cli("list", "--json", env=env).stdout)["points"]) == 2
    mine = run_cli("restore", "latest", str(target), "--vm", "web01", "--json", env=env)
    assert mine.returncode == 0, mine.stderr
    assert same_content(target, tmp_path / "web01.img")
    doc = json.loads(mine.stdout)  # which point `latest` was, and whose
    assert doc["vm"] == "web01" and doc["point"].startswith("20")
    human = run_cli("restore", "latest", str(target), "--vm", "web01", "--force", env=env)
    said = " ".join(human.stdout.split())
    assert f"restored disk web01 of web01 (point {doc['point']}) to {target}" in said


def test_malformed_vault_config_is_named(tmp_path: Path) -> None:
    env = _env(tmp_path)
    assert run_cli("init", env=env).returncode == 0
    (tmp_path / "vault" / "config").write_text("{not json")
    result = run_cli("list", env=env)
    assert result.returncode == 1 and "vault config is malformed" in result.stderr
    (tmp_path / "vault" / "config").write_text(
        json.dumps({"format": "vmvault-vault", "version": 99})
    )
    newer = run_cli("list", env=env)
    assert newer.returncode == 1 and "version 99 is not supported" in newer.stderr


def test_init_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    env = _env(tmp_path)
    (tmp_path / "vault").mkdir()
    (tmp_path / "vault" / "precious.txt").write_text("keep me")
    result = run_cli("init", env=env)
    assert result.returncode == 2 and "not empty" in result.stderr
    assert (tmp_path / "vault" / "precious.txt").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path / "vault")) == ["precious.txt"]


def test_a_restore_refused_as_asked_leaves_no_job(tmp_path: Path) -> None:
    """A target refused as it stands (taken without --force, in a folder that does not
    exist) is refused before the restore starts: no failed job turns the dashboard red."""
    env = _env(tmp_path)
    image = tmp_path / "d.img"
    assert run_cli("testdisk", "create", str(image), "--size", "4M", env=env).returncode == 0
    assert run_cli("init", env=env).returncode == 0
    assert run_cli("backup", str(image), "--vm", "web", env=env).returncode == 0
    taken = tmp_path / "x.img"
    taken.write_bytes(b"mine")
    no_folder = tmp_path / "nodir" / "x.img"
    for target, code, says in [
        (taken, "target_exists", f"{taken} exists: give --force to replace it"),
        (no_folder, "bad_input", f"directory {no_folder.parent} does not exist"),
    ]:
        refused = run_cli("restore", "latest", str(target), env=env)
        assert refused.returncode == 2 and refused.stderr == f"error: {says}\n"
        as_json = run_cli("restore", "latest", str(target), "--json", env=env)
        assert json.loads(as_json.stdout)["error"] == {"code": code, "message": says}
    assert taken.read_bytes() == b"mine" and not no_folder.parent.exists()
    jobs = json.loads(run_cli("jobs", "list", "--json", env=env).stdout)["jobs"]
    assert [j["kind"] for j in jobs] == ["backup"]
    forced = run_cli("restore", "latest", str(taken), "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    assert same_content(image, taken)
