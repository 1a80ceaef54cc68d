"""Turning the individual runs into medians, ratios, a plain-text table, JSON and Markdown.

MB = 10^6 bytes and MB/s = logical image size / wall time, as in the baseline, so the
numbers compare directly with the project's baseline (BASELINE.md in the shared bench notes).
MiB is used only for RSS.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import bench_tools

MB, MiB = 1e6, float(1 << 20)
STEPS = ("backup1", "backup2", "restore")
REQUEST_KINDS = ("GET", "PUT", "HEAD", "LIST", "DELETE", "OTHER")  # countproxy.KINDS
INCREMENTAL_REQUEST_TARGET = 100  # the issue's: an incremental makes fewer than 100 requests
TOOL_ORDER = ("vmvault", "restic", "borg", "benji", "machine", "limit")
OTHERS = ("restic", "borg", "benji")


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def machine_info() -> dict[str, Any]:
    """What the numbers depend on: cores, RAM, kernel, CPU model, OS."""
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    for path, key, label in (
        ("/proc/meminfo", "MemTotal", "ram_bytes"),
        ("/proc/cpuinfo", "model name", "cpu"),
        ("/etc/os-release", "PRETTY_NAME", "os"),
    ):
        try:
            for line in Path(path).read_text().splitlines():
                name, sep, value = line.partition(":" if ":" in line else "=")
                if sep and name.strip() == key:
                    value = value.strip().strip('"')
                    info[label] = int(value.split()[0]) * 1024 if label == "ram_bytes" else value
                    break
        except OSError:
            pass
    return info


def environment(tools: list[str]) -> dict[str, Any]:
    """Machine, versions and load, taken before the runs (the code may change while they run)."""
    return {
        "machine": machine_info() | {"loadavg_start": list(os.getloadavg())},
        "versions": versions(tools),
        "tool_notes": tool_notes(tools),
    }


def tool_notes(tools: list[str]) -> dict[str, str]:
    """How a tool that ran is set up, where the table alone would not say (Benji's
    configuration is the benchmark's own choice)."""
    note = bench_tools.benji_note() if "benji" in tools else None
    return {"benji": note} if note else {}


def versions(tools: list[str]) -> dict[str, str]:
    found = {t: bench_tools.tool_version(t) for t in [*tools, "zstd"]}
    for lib in ("blake3", "zstandard", "cryptography"):
        found[lib] = metadata.version(lib)
    return found


def _median(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(
    runs: list[dict[str, Any]], image_size: int, store: str = "local"
) -> dict[str, dict[str, Any]]:
    """Median over the successful reps of each (tool, step) on one store (a local directory
    unless named); failures are counted, not averaged."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        if r.get("store", "local") == store:  # reports from before object stores: local
            groups.setdefault((r["tool"], r["step"]), []).append(r)
    summary: dict[str, dict[str, Any]] = {}
    for (tool, step), group in groups.items():
        ok = [r for r in group if r["ok"]]
        wall = _median([r["wall"] for r in ok])
        cell: dict[str, Any] = {
            "n": len(ok),
            "failed": len(group) - len(ok),
            "wall_s": wall,
            "mb_per_s": image_size / wall / MB if wall else None,
            "cpu_s": _median([r["user"] + r["sys"] for r in ok]),
            "rss_mib": _median([r["maxrss"] / MiB for r in ok]),
            "repo_mb": _median([r["repo_bytes"] / MB for r in ok if r["repo_bytes"] is not None]),
            "growth_mb": _median(
                [r["growth_bytes"] / MB for r in ok if r["growth_bytes"] is not None]
            ),
            "walls": [r["wall"] if r["ok"] else None for r in group],
            "errors": [r["error"] for r in group if r["error"]],
        }
        if step == "restore":
            cell["verified"] = bool(ok) and all(r["extra"].get("verified") for r in ok)
            cell["restored_allocated_mb"] = _median(
                [r["extra"].get("restored_allocated", 0) / MB for r in ok]
            )
        counted = [r["requests"] for r in ok if r.get("requests")]
        if counted:
            cell["requests"] = {
                kind: _median([c["requests"].get(kind, 0) for c in counted])
                for kind in REQUEST_KINDS
            }
            cell["requests_total"] = _median([c["total"] for c in counted])
            cell["mb_up"] = _median([c["bytes_up"] / MB for c in counted])
            cell["mb_down"] = _median([c["bytes_down"] / MB for c in counted])
            cell["error_answers"] = _median([c["errors"] for c in counted])
            cell["store_cpu_s"] = _median(
                [r["extra"]["store_cpu"] for r in ok if "store_cpu" in r.get("extra", {})]
            )
        summary.setdefault(tool, {})[step] = cell
    return summary


def store_names(runs: list[dict[str, Any]]) -> list[str]:
    """The object stores that runs were made on, in the order they ran."""
    seen: dict[str, None] = {}
    for r in runs:
        if r.get("store", "local") != "local":
            seen.setdefault(r["store"], None)
    return list(seen)


def store_ratios(
    stores: dict[str, dict[str, dict[str, Any]]], local: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Per object store: vmvault's speedup against restic there and on the local directory
    (the target: at least as large), requests restic / vmvault, and the incremental's
    request count against the target of fewer than 100."""
    result: dict[str, Any] = {}
    for store, summary in stores.items():
        if "restic" not in summary or "vmvault" not in summary:
            continue
        speedup = {
            s: _div(_wall(summary, "restic", s), _wall(summary, "vmvault", s)) for s in STEPS
        }
        on_local = {s: _div(_wall(local, "restic", s), _wall(local, "vmvault", s)) for s in STEPS}
        requests = {
            s: _div(_requests(summary, "restic", s), _requests(summary, "vmvault", s))
            for s in STEPS
        }
        incremental = _requests(summary, "vmvault", "backup2")
        result[store] = {
            "speedup vmvault vs restic": speedup,
            "speedup vmvault vs restic, local directory": on_local,
            "speedup at least the local one": {
                s: _at_least(speedup[s], on_local[s]) for s in STEPS
            },
            "requests restic / vmvault": requests,
            "vmvault incremental requests": incremental,
            "vmvault incremental under 100 requests": (
                None if incremental is None else incremental < INCREMENTAL_REQUEST_TARGET
            ),
        }
    return result


def _at_least(value: float | None, floor: float | None) -> bool | None:
    return None if value is None or floor is None else value >= floor


def _requests(summary: dict[str, dict[str, Any]], tool: str, step: str) -> float | None:
    total: float | None = summary.get(tool, {}).get(step, {}).get("requests_total")
    return total


def add_limits(summary: dict[str, dict[str, Any]], limits: dict[str, Any], size: int) -> None:
    """The limit of each vmvault step as a pseudo-tool row, so it prints like the others."""
    for step, lim in limits.items():
        summary.setdefault("limit", {})[step] = {
            "n": 1,
            "failed": 0,
            "wall_s": lim["wall_s"],
            "mb_per_s": size / lim["wall_s"] / MB if lim["wall_s"] else None,
            "cpu_s": lim["cpu_s"],
            "walls": [lim["wall_s"]],
            "errors": [],
        }


def _wall(summary: dict[str, dict[str, Any]], tool: str, step: str) -> float | None:
    wall: float | None = summary.get(tool, {}).get(step, {}).get("wall_s")
    return wall


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(summary: dict[str, dict[str, Any]], changed_bytes: int) -> dict[str, Any]:
    """Speedups (other / vmvault time: >1 means vmvault is faster), sizes, growth, limit."""
    vm = summary.get("vmvault", {})
    result: dict[str, Any] = {"speedup": {}, "repo_size_after_backup1": {}}
    for other in (t for t in OTHERS if t in summary):  # tools that ran, even if they failed
        result["speedup"][f"vmvault vs {other}"] = {
            step: _div(_wall(summary, other, step), _wall(summary, "vmvault", step))
            for step in STEPS
        }
        result["repo_size_after_backup1"][f"vmvault / {other}"] = _div(
            vm.get("backup1", {}).get("repo_mb"),
            summary.get(other, {}).get("backup1", {}).get("repo_mb"),
        )
    result["growth_per_changed"] = {
        tool: _div(summary[tool]["backup2"].get("growth_mb"), changed_bytes / MB)
        for tool in ("vmvault", *OTHERS)
        if "backup2" in summary.get(tool, {})
    }
    result["vmvault_over_limit"] = {
        step: _div(_wall(summary, "vmvault", step), _wall(summary, "limit", step)) for step in STEPS
    }
    return result


def build(
    *,
    started: datetime,
    environment: dict[str, Any],
    args: dict[str, Any],
    unavailable: dict[str, str],
    image: dict[str, Any],
    runs: list[dict[str, Any]],
    machine: dict[str, Any],
    sparse: dict[str, Any] | None,
    stores: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything the JSON holds; the text and Markdown views are made from this alone."""
    summary = summarize(runs, image["size"])
    on_stores = {s: summarize(runs, image["size"], s) for s in store_names(runs)}
    add_limits(summary, machine.get("limits", {}), image["size"])
    changed = image.get("mutation", {}).get("bytes_written", 0)
    # Other work on the machine skews every number: the load average says how much there was.
    load_end = {"loadavg_end": list(os.getloadavg())}
    return {
        "date": started.isoformat(),
        "finished": utc_now().isoformat(),
        "machine": environment["machine"] | load_end,
        "versions": environment["versions"],
        "tool_notes": environment.get("tool_notes", {}),
        "args": args,
        "unavailable": unavailable,
        "image": image,
        "summary": summary,
        "ratios": ratios(summary, changed),
        "limits": machine,
        "sparse": sparse,
        "stores": stores or {},
        "object_stores": on_stores,
        "store_ratios": store_ratios(on_stores, summary),
        "runs": runs,
    }


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def main_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per tool and step; failed or unavailable cells say so."""
    rows = []
    summary = report["summary"]
    for tool in TOOL_ORDER:
        for step, c in summary.get(tool, {}).items():
            note = []
            if c["failed"]:
                note.append(f"FAILED {c['failed']}/{c['failed'] + c['n']}")
            if step == "restore" and "verified" in c and c["n"]:
                state = "verified" if c.get("verified") else "NOT VERIFIED"
                note.append(f"{state}, {c['restored_allocated_mb']:.0f} MB allocated")
            if tool == "limit":
                note.append("lower bound for vmvault")
            rows.append(
                [
                    tool,
                    step,
                    str(c["n"]),
                    _fmt(c["wall_s"]),
                    _fmt(c["mb_per_s"], 0),
                    _fmt(c["cpu_s"]),
                    _fmt(c.get("rss_mib"), 0),
                    _fmt(c.get("repo_mb"), 1),
                    _fmt(c.get("growth_mb"), 1),
                    "; ".join(note),
                ]
            )
    for tool, why in report["unavailable"].items():
        rows.append([tool, "all", "0", "-", "-", "-", "-", "-", "-", why])
    return rows


MAIN_HEADER = [
    "tool",
    "step",
    "n",
    "wall s",
    "MB/s",
    "CPU s",
    "RSS MiB",
    "repo MB",
    "growth MB",
    "note",
]


def ratio_rows(report: dict[str, Any]) -> list[list[str]]:
    r = report["ratios"]
    rows = [
        [f"speedup {name} (x faster)", *(_times(v[s]) for s in STEPS)]
        for name, v in r["speedup"].items()
    ]
    rows.append(["vmvault time / limit", *(_times(r["vmvault_over_limit"][s]) for s in STEPS)])
    for name, v in r["repo_size_after_backup1"].items():
        rows.append([f"repo size after backup1, {name}", _fmt(v), "", ""])
    for tool, v in r["growth_per_changed"].items():
        rows.append([f"{tool} growth / bytes changed", "", _fmt(v), ""])
    return rows


RATIO_HEADER = ["ratio", "backup1", "backup2", "restore"]

STORE_HEADER = [
    "store",
    "tool",
    "step",
    "n",
    "wall s",
    "MB/s",
    "CPU s",
    "store CPU s",
    "GET",
    "PUT",
    "HEAD",
    "LIST",
    "DELETE",
    "other",
    "requests",
    "MB up",
    "MB down",
    "repo MB",
    "note",
]


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def store_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per object store, tool and step: time, requests by kind, bytes each way."""
    rows = []
    for store, summary in report.get("object_stores", {}).items():
        for tool in TOOL_ORDER:
            for step, c in summary.get(tool, {}).items():
                note = []
                if c["failed"]:
                    note.append(f"FAILED {c['failed']}/{c['failed'] + c['n']}")
                if step == "restore" and c["n"]:
                    note.append("verified" if c.get("verified") else "NOT VERIFIED")
                if c.get("error_answers"):
                    note.append(f"{c['error_answers']:.0f} answers >= 400")
                kinds = c.get("requests") or {}
                rows.append(
                    [
                        store,
                        tool,
                        step,
                        str(c["n"]),
                        _fmt(c["wall_s"]),
                        _fmt(c["mb_per_s"], 0),
                        _fmt(c["cpu_s"]),
                        _fmt(c.get("store_cpu_s")),
                        *(_count(kinds.get(k)) for k in REQUEST_KINDS),
                        _count(c.get("requests_total")),
                        _fmt(c.get("mb_up"), 1),
                        _fmt(c.get("mb_down"), 1),
                        _fmt(c.get("repo_mb"), 1),
                        "; ".join(note),
                    ]
                )
    for store, info in report.get("stores", {}).items():
        if not info.get("ok"):
            rows.append([store, "all", "all", "0", *["-"] * 14, f"not available: {info['error']}"])
    return rows


def _yes(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "NO")


def store_ratio_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for store, r in report.get("store_ratios", {}).items():
        speed, local = (
            r["speedup vmvault vs restic"],
            r["speedup vmvault vs restic, local directory"],
        )
        met, req = r["speedup at least the local one"], r["requests restic / vmvault"]
        rows.append([f"{store}: speedup vmvault vs restic", *(_times(speed[s]) for s in STEPS)])
        rows.append([f"{store}: same on the local directory", *(_times(local[s]) for s in STEPS)])
        rows.append([f"{store}: at least the local speedup", *(_yes(met[s]) for s in STEPS)])
        rows.append([f"{store}: requests restic / vmvault", *(_times(req[s]) for s in STEPS)])
        rows.append(
            [
                f"{store}: vmvault incremental < {INCREMENTAL_REQUEST_TARGET} requests",
                "",
                f"{_yes(r['vmvault incremental under 100 requests'])} "
                f"({_count(r['vmvault incremental requests'])})",
                "",
            ]
        )
    return rows


def align(header: list[str], rows: list[list[str]]) -> str:
    """A plain-text table; numbers right-aligned, text left-aligned."""
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]

    def cell(i: int, value: str) -> str:
        numeric = value.replace(".", "").replace("x", "").replace("-", "").isdigit()
        return value.rjust(widths[i]) if numeric else value.ljust(widths[i])

    lines = ["  ".join(cell(i, v) for i, v in enumerate(row)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(v.replace("|", "/") for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _load(values: list[float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


def _headline(report: dict[str, Any]) -> str:
    img, args, m = report["image"], report["args"], report["machine"]
    mutation = img.get("mutation", {})
    return (
        f"image {img['size'] / MB:.0f} MB logical ({img['allocated'] / MB:.0f} MB allocated), "
        f"{args['reps']} rep(s), medians; mutation {args['mutate']} % = "
        f"{mutation.get('writes', 0)} writes, {mutation.get('bytes_written', 0) / MB:.1f} MB; "
        f"{m.get('nproc')} CPUs, load average {_load(m['loadavg_start'])} at start"
    )


def notes_lines(report: dict[str, Any]) -> list[str]:
    """One paragraph per tool whose set-up the report states (reports from before: none)."""
    return [f"{tool}: {note}" for tool, note in report.get("tool_notes", {}).items()]


def sparse_line(report: dict[str, Any]) -> str:
    s = report["sparse"]
    if not s:
        return "sparse image check: skipped"
    if not s["ok"]:
        return f"sparse image check FAILED: {s.get('error')}"
    return (
        f"sparse image: {s['size'] / MB:.0f} MB logical, {s['allocated'] / MB:.0f} MB allocated: "
        f"vmvault full backup {s['wall']:.2f} s, CPU {s['cpu']:.2f} s, "
        f"peak RSS {s['maxrss'] / MiB:.0f} MiB"
    )


def text(report: dict[str, Any]) -> str:
    """The stdout view: main table, ratios, object stores, sparse check."""
    parts = [
        _headline(report),
        align(MAIN_HEADER, main_rows(report)),
        align(RATIO_HEADER, ratio_rows(report)),
        *notes_lines(report),
    ]
    if report.get("object_stores") or report.get("stores"):
        parts.append(align(STORE_HEADER, store_rows(report)))
        parts.append(align(RATIO_HEADER, store_ratio_rows(report)))
    parts.append(sparse_line(report))
    return "\n\n".join(parts)


def _limit_rows(report: dict[str, Any]) -> tuple[list[list[str]], list[list[str]]]:
    speeds = report["limits"].get("speeds", {})
    speed_rows = [
        [name, _fmt(v) if name.endswith(("fraction", "ratio")) else _fmt(v / MB, 0)]
        for name, v in speeds.items()
    ]
    part_rows = [
        [step, *(f"{k}={_fmt(v)}" for k, v in parts.items())]
        for step, parts in report["limits"].get("limits", {}).items()
    ]
    return speed_rows, part_rows


def _run_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in report["runs"]:
        rows.append(
            [
                r.get("store", "local"),
                r["tool"],
                str(r["rep"]),
                r["step"],
                "ok" if r["ok"] else "FAILED",
                _fmt(r["wall"]),
                _fmt(None if r["user"] is None else r["user"] + r["sys"]),
                _fmt(None if r["maxrss"] is None else r["maxrss"] / MiB, 0),
                _fmt(None if r["repo_bytes"] is None else r["repo_bytes"] / MB, 1),
                _fmt(None if r["growth_bytes"] is None else r["growth_bytes"] / MB, 1),
                _count((r.get("requests") or {}).get("total")),
                (r["error"] or "").replace("\n", " ")[:120],
            ]
        )
    return rows


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    ram = m.get("ram_bytes", 0) / (1 << 30)
    speed_rows, part_rows = _limit_rows(report)
    parts = [
        "# vmvault benchmark: vmvault vs restic vs borg vs Benji, and the machine's limits",
        f"Date: {report['date']} (UTC). Command: `bench/run.py` with {report['args']}.",
        f"Machine: {m.get('nproc')} CPUs ({m.get('cpu', '?')}), {ram:.1f} GiB RAM, "
        f"kernel {m.get('kernel')}, {m.get('os', '?')}, Python {m.get('python')}. "
        f"Load average (1/5/15 min) at start {_load(m['loadavg_start'])}, "
        f"at end {_load(m['loadavg_end'])}.",
        "Versions: " + ", ".join(f"{k} `{v}`" for k, v in report["versions"].items()) + ".",
        _headline(report)
        + ". Image mix: "
        + ", ".join(f"{k} {v / MB:.0f} MB" for k, v in report["image"]["by_kind"].items())
        + ".",
        "Every source read comes from a warm page cache. MB = 10^6 bytes; MB/s = logical "
        "image size / wall; CPU = user+sys of the process tree; RSS = largest process.",
        "## Results (median of successful reps)",
        markdown_table(MAIN_HEADER, main_rows(report)),
        *notes_lines(report),
        "## Ratios",
        "Speedup = other tool's time / vmvault's time (>1: vmvault is faster). "
        "vmvault time / limit: how far vmvault is from this machine's lower bound (1.00 = at it). "
        "Growth / bytes changed: repository growth of backup2 over the bytes the mutation wrote.",
        markdown_table(RATIO_HEADER, ratio_rows(report)),
        "## Machine limits",
        "Speeds (MB/s unless a fraction or ratio), median of reps:",
        markdown_table(["speed", "value"], speed_rows),
        "How a limit is computed:\n\n```text\n" + report["limits"].get("formula", "") + "\n```",
        "Limit parts (CPU seconds before dividing by the cores):",
        markdown_table(["step", "parts"], [[r[0], ", ".join(r[1:])] for r in part_rows]),
        *_store_section(report),
        "## Sparse image (memory independent of disk size)",
        sparse_line(report) + ".",
        "## Every run",
        markdown_table(
            [
                "store",
                "tool",
                "rep",
                "step",
                "ok",
                "wall s",
                "CPU s",
                "RSS MiB",
                "repo MB",
                "growth MB",
                "requests",
                "error",
            ],
            _run_rows(report),
        ),
    ]
    return "\n\n".join(parts) + "\n"


STORE_METHOD = (
    "vmvault and restic on each object store started here on loopback (SeaweedFS's S3 "
    "gateway; Azurite's blob service), each run in a new bucket or container, the same "
    "image, mutation and verification as above. Requests are counted from the outside: "
    "each tool talks to the server through the same counting HTTP proxy (bench/countproxy.py),"
    " which forwards every request verbatim. LIST = S3 ListObjects / Azure List Blobs; "
    "MB up/down = request/response body bytes; repo MB = the objects' sizes after the step; "
    "CPU s = the tool's own; store CPU s = the server's and the counting proxy's during the "
    "step (they share the machine's cores with the tool, so on 2 cores a step takes at least "
    "(CPU s + store CPU s) / 2). "
    "S3 is plain HTTP for both tools; Azure is HTTPS for both (restic 0.14 reaches Azure only "
    "at https://ACCOUNT.blob.core.windows.net: it goes through the proxy as an HTTPS proxy "
    "that terminates TLS with its own CA). restic keeps its index in a local cache "
    "(fresh per run, kept between its steps, as in normal use)."
)


def _store_section(report: dict[str, Any]) -> list[str]:
    if not (report.get("object_stores") or report.get("stores")):
        return []
    servers = ", ".join(
        f"{s} `{i['server']}`" for s, i in report.get("stores", {}).items() if i.get("server")
    )
    return [
        "## Object stores (median of successful reps)",
        STORE_METHOD + (f" Servers: {servers}." if servers else ""),
        markdown_table(STORE_HEADER, store_rows(report)),
        "Speedup = restic's time / vmvault's on the same store; requests restic / vmvault "
        "> 1 means vmvault made fewer. Targets: a speedup on each store at least the one on "
        f"the local directory; an incremental of fewer than {INCREMENTAL_REQUEST_TARGET} "
        "requests.",
        markdown_table(RATIO_HEADER, store_ratio_rows(report)),
    ]


def write(report: dict[str, Any], out: Path) -> list[Path]:
    """bench-<UTC timestamp>.json, latest.json and latest.md under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.fromisoformat(report["date"]).strftime("%Y%m%dT%H%M%SZ")
    doc = json.dumps(report, indent=2, sort_keys=False) + "\n"
    paths = [out / f"bench-{stamp}.json", out / "latest.json", out / "latest.md"]
    paths[0].write_text(doc)
    paths[1].write_text(doc)
    paths[2].write_text(markdown(report))
    return paths
