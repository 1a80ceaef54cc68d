"""Run one command and write its wall time and process-tree rusage as JSON: a tiny `time -v`.

    python -S -I bench_launch.py RESULT.json COMMAND [ARG...]

Why not ``os.wait4`` straight from the benchmark: Linux folds the peak RSS of the process
that calls exec() into the new program's max RSS, so a command forked from the benchmark
(which holds a 1 GiB buffer while measuring speeds) would report at least the benchmark's
own size. Forked from this small interpreter instead, the floor is about 7 MiB, not hundreds.
Standard library only, no site packages: it must stay small.
"""

import json
import os
import sys
import time


def main() -> int:
    result_path, argv = sys.argv[1], sys.argv[2:]
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            os.write(2, f"cannot run {argv[0]}: {exc}\n".encode())
        os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    wall = time.monotonic() - start
    result = {
        "rc": os.waitstatus_to_exitcode(status),
        "wall": wall,
        "user": usage.ru_utime,
        "sys": usage.ru_stime,
        "maxrss_kib": usage.ru_maxrss,  # of the largest process in the tree (Linux: KiB)
    }
    with open(result_path, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
