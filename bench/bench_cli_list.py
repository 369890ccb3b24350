"""Start-up time of ``keras-normreg list`` (target: < 1 s on the 2-core machine).

Each command runs in a fresh process, ``--repeats`` times (default 5); the median wall time is
reported with the min and max. Measured:

* ``keras-normreg list``: the installed console script (next to this Python, else on PATH).
  Installed before ``keras_normreg_cli`` existed it still enters through
  ``keras_normreg.cli:main`` (imports Keras and TensorFlow); re-run ``pip install -e .`` once to
  make it enter through ``keras_normreg_cli:main``.
* ``python -m keras_normreg_cli list``: the new entry module (answers from catalog.json).
* ``python -m keras_normreg.cli list``: the package's own module (builds the list from the live
  registries: imports Keras and TensorFlow), for comparison.

Run: python bench/bench_cli_list.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_S = 1.0


def _script() -> str | None:
    here = os.path.join(os.path.dirname(sys.executable), "keras-normreg")
    return here if os.path.isfile(here) else shutil.which("keras-normreg")


def _time(cmd: list[str], repeats: int, env: dict) -> tuple[list[float], str]:
    times, out = [], ""
    for _ in range(repeats):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"{shlex.join(cmd)} failed ({proc.returncode}): {proc.stderr}")
        out = proc.stdout
    return times, out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    commands = []
    script = _script()
    if script:
        commands.append(("keras-normreg list (installed script)", [script, "list"]))
    commands += [
        ("python -m keras_normreg_cli list", [sys.executable, "-m", "keras_normreg_cli", "list"]),
        ("python -m keras_normreg.cli list", [sys.executable, "-m", "keras_normreg.cli", "list"]),
    ]
    print(f"command: python {shlex.join(['bench/bench_cli_list.py', *(argv or sys.argv[1:])])}")
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}; median of {args.repeats} fresh processes")
    if script:
        with open(script, encoding="utf-8", errors="replace") as f:
            entry = [line.strip() for line in f if line.startswith("from ")]
        print(f"installed script {script}: {entry[0] if entry else '?'}")
    print(f"| command | median s | min s | max s | stderr lines | target < {TARGET_S:.0f} s |")
    print("|---|---:|---:|---:|---:|---|")
    outputs = {}
    for label, cmd in commands:
        times, out = _time(cmd, args.repeats, env)
        outputs[label] = out
        noise = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT).stderr
        med = statistics.median(times)
        print(f"| `{label}` | {med:.3f} | {min(times):.3f} | {max(times):.3f} | "
              f"{len(noise.splitlines())} | {'met' if med < TARGET_S else 'NOT met'} |")
    same = len(set(outputs.values())) == 1
    print(f"same output from every command: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
