"""The README's two set-up commands' payloads: the demo's output and both wall times.

Runs ``python -m sklearn_wsvd demo`` and then the test suite (``python -m pytest -q``),
each once, in this environment (already installed: the install itself is not
timed), and keeps the demo's printed table and the test summary line.

    python benchmarks/bench_readme.py

Writes results/readme.json and results/readme.md.
"""

from __future__ import annotations

import subprocess
import sys
import time

from _common import HERE, RESULTS, write_json

COMMANDS = {
    "demo": [sys.executable, "-m", "sklearn_wsvd", "demo"],
    "tests": [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
}


def main():
    runs = {}
    for name, command in COMMANDS.items():
        start = time.perf_counter()
        done = subprocess.run(command, cwd=HERE.parent, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        lines = done.stdout.splitlines()
        kept = lines if name == "demo" else lines[-1:]  # the test summary
        runs[name] = {"command": " ".join(command[1:]), "seconds": seconds, "output": kept}
    write_json(RESULTS / "readme.json", {"runs": runs})
    text = [
        f"**{name}** (`python {run['command']}`): {run['seconds']:.0f} s\n\n```\n"
        + "\n".join(run["output"])
        + "\n```\n"
        for name, run in runs.items()
    ]
    (RESULTS / "readme.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
