"""
Profiling the server during each test with py-spy (``python -m bench
--profile``; ``pip install py-spy`` first): one collapsed-stacks file per
test in the work directory (``profile-TEST.txt``; flamegraph.pl or
speedscope read them), and a summary of the functions where the samples
fell, printed after the figures.

    python -m bench.profile FILE [--top N]     summarise a file again
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from typing import Any


def py_spy() -> str | None:
    return shutil.which("py-spy") or next(
        (p for p in [os.path.join(os.path.dirname(sys.executable), "py-spy")] if os.path.exists(p)),
        None,
    )


class Recording:
    def __init__(self, pid: int, path: str, rate: int = 250) -> None:
        exe = py_spy()
        if exe is None:
            raise SystemExit("--profile needs py-spy: pip install py-spy")
        self.path = path
        self.proc = subprocess.Popen(
            [exe, "record", "-p", str(pid), "-f", "raw", "-o", path, "-r", str(rate),
             "--nonblocking", "--threads"] + (["--gil"] if os.environ.get("DASHD_PROFILE_GIL") else []),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _short(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    parts = path.split("/")
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    elif "dashd" in parts:
        parts = parts[parts.index("dashd") :]
    return "%s (%s)" % (name, "/".join(parts[-2:]))


def summarise(path: str, top: int = 25) -> str:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    threads: Counter[str] = Counter()
    with open(path) as f:
        for line in f:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(count_text)
            frames = stack.split(";")
            total += count
            threads[frames[0]] += count
            names = [_short(fr) for fr in frames[1:]]
            if not names:
                continue
            own[names[-1]] += count
            for name in set(names):
                inclusive[name] += count
    if not total:
        return "%s: no samples" % path
    lines = ["%s: %d samples; by thread: %s" % (
        os.path.basename(path), total,
        ", ".join("%s %.0f%%" % (t, 100 * c / total) for t, c in threads.most_common()))]
    lines.append("  self%   incl%  function")
    for name, count in own.most_common(top):
        lines.append("  %5.1f  %6.1f  %s" % (100 * count / total, 100 * inclusive[name] / total, name))
    lines.append("  -- by inclusive time:")
    for name, count in inclusive.most_common(top):
        lines.append("  %5.1f  %6.1f  %s" % (100 * own[name] / total, 100 * count / total, name))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.profile")
    p.add_argument("file")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    print(summarise(args.file, args.top))


if __name__ == "__main__":
    main()


__all__: list[Any] = ["Recording", "summarise"]
