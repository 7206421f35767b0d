"""One line per kernel of an Nsight Compute report exported as CSV (``ncu --import R.ncu-rep --csv --page details``):
its duration, DRAM and memory throughput, occupancy, registers, and the warp-state figures, to read where a kernel
waits (PARTS=ncu of scripts/diag/persistent_check.sh).

    python scripts/diag/ncu_summary.py R.csv
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict

# (the column's title, the metric: its name and unit as parsed below, first found wins)
COLUMNS = (
    ("us", ("Duration [us]",)),
    ("DRAM %", ("DRAM Throughput [%]",)),
    ("memory %", ("Memory Throughput [%]",)),
    ("memory GB/s", ("Memory Throughput [GB/s]", "DRAM Bandwidth [GB/s]")),
    ("occupancy %", ("Achieved Occupancy [%]",)),
    ("registers", ("Registers Per Thread [register/thread]",)),
    ("block", ("Block Size []",)),  # the report's columns
    ("grid", ("Grid Size []",)),
    ("cycles per issue", ("Warp Cycles Per Issued Instruction [cycle]",)),
)
SCALES = {  # ncu's unit -> (ours, factor)
    "nsecond": ("us", 1e-3), "usecond": ("us", 1.0), "msecond": ("us", 1e3), "second": ("us", 1e6),
    "Mbyte/second": ("GB/s", 1e-3), "Gbyte/second": ("GB/s", 1.0), "Tbyte/second": ("GB/s", 1e3),
}  # fmt: skip


def metric(name: str, unit: str, value: str) -> tuple[str, str]:
    """(name [unit], value) with times in us and rates in GB/s."""
    if unit in SCALES:
        ours, factor = SCALES[unit]
        try:
            return f"{name} [{ours}]", f"{float(value.replace(',', '')) * factor:.2f}"
        except ValueError:
            pass
    return f"{name} [{unit}]", value


def main(path: str) -> None:
    kernels: dict[str, dict[str, str]] = defaultdict(dict)
    names: dict[str, str] = {}
    with open(path, newline="") as handle:
        rows = csv.DictReader(line for line in handle if line.startswith('"'))  # skip ncu's own messages
        for row in rows:
            kernel = row["ID"]
            names[kernel] = row["Kernel Name"]
            kernels[kernel] |= {"Block Size []": row.get("Block Size", "-"), "Grid Size []": row.get("Grid Size", "-")}
            key, value = metric(row["Metric Name"], row.get("Metric Unit") or "", row["Metric Value"])
            kernels[kernel][key] = value
    print("\t".join(["id", "kernel"] + [title for title, _ in COLUMNS]))
    for kernel, metrics in kernels.items():
        cells = [next((metrics[name] for name in candidates if name in metrics), "-") for _, candidates in COLUMNS]
        print("\t".join([kernel, names[kernel][:48], *cells]))


if __name__ == "__main__":
    main(sys.argv[1])
