"""Wall time of a one-test pytest run in an unrelated folder, with and without the specdec plugin (issue 9).

Usage: python scripts/measure_plugin_startup.py PYTHON [RUNS]  (PYTHON: the interpreter whose pytest to time)
"""

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

folder = Path(tempfile.mkdtemp(prefix="unrelated-"))
(folder / "test_one.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
python = str(Path(sys.argv[1]).absolute())
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 10
variants = {"with plugin": [], "without (-p no:specdec)": ["-p", "no:specdec"]}
times: dict[str, list[float]] = {name: [] for name in variants}


def run(extra: list[str]) -> float:
    command = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra]
    started = time.perf_counter()
    subprocess.run(command, cwd=folder, capture_output=True, check=True)
    return time.perf_counter() - started


for _ in range(2):  # warm the file cache
    for extra in variants.values():
        run(extra)
for _ in range(runs):  # interleaved, so that load on the machine hits both alike
    for name, extra in variants.items():
        times[name].append(run(extra))
for name, values in times.items():
    median = statistics.median(values)
    print(f"{name:26s} median {median:.3f} s  min {min(values):.3f}  max {max(values):.3f}  ({runs} runs)")
with_plugin, without = (statistics.median(v) for v in times.values())
print(f"difference of medians: {with_plugin - without:+.3f} s")
