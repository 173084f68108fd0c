"""Start-up cost of the `basinlab` command against torch's own import, measured side by side.

    python3 benchmarks/startup.py [--repeats 5]

Each measurement is a fresh interpreter (`python3 -c ...` or the CLI), interleaved round by round so that
machine noise hits all of them alike; the table gives medians and ratios to `import torch`.
Targets (issue 12): `import basinlab.cli` <= 1.2x `import torch`; a bad option answers in well under
2 s plus torch's import.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CASES = {
    "import torch": [sys.executable, "-c", "import torch"],
    "import basinlab.cli": [sys.executable, "-c", "import basinlab.cli"],
    "import basinlab.api": [sys.executable, "-c", "import basinlab.api"],
    "basinlab train --bogus (exit 2)": [sys.executable, "-m", "basinlab", "train", "--bogus"],
    "basinlab train --epochs 0 (exit 2)": [sys.executable, "-m", "basinlab", "train", "--epochs", "0"],
}


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in CASES}
    wall(CASES["import torch"])  # warm the file cache once
    for _ in range(args.repeats):
        for name, command in CASES.items():
            times[name].append(wall(command))
    base = statistics.median(times["import torch"])
    print(f"{'what':40s} {'median s':>9s} {'x import torch':>15s}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:40s} {median:9.3f} {median / base:15.2f}")


if __name__ == "__main__":
    main()
