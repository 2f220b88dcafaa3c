"""Every benchmark, one command, a few minutes on 2 cores:

    python benchmarks/run.py [--quick]

Prints markdown tables (as in the README's Performance section), headed by
the date, the machine and the torch they were measured with. All figures are
ratios against a baseline measured in the same command.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_collectives  # noqa: E402
import bench_compile  # noqa: E402
import bench_exact  # noqa: E402
import bench_fake_tensors  # noqa: E402
import bench_garbage  # noqa: E402
import bench_pytest  # noqa: E402
import bench_scale  # noqa: E402
import bench_unittest  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, no MultiProcessTestCase")
    args = parser.parse_args()
    import torch

    print(f"Measured {datetime.date.today()} on {platform.machine()} with {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, torch {torch.__version__}.\n")
    print("### Per test (setup + call + teardown, median)\n")
    bench_pytest.main(["--tests", "150" if args.quick else "300", "--rounds", "1" if args.quick else "3"]
                      + (["--skip-mp"] if args.quick else []))
    print("\n### Per collective (median µs per call, world of 4, 64 floats)\n")
    bench_collectives.main(["--rounds", "5" if args.quick else "15"])
    print("\n### Plugin cost on a run with no fake worlds\n")
    print(bench_pytest.plugin_cost(3000 if not args.quick else 1000))
    print("\n### Compiled code across worlds\n")
    bench_compile.main([])
    print("\n### A world's garbage, collected as it goes down\n")
    bench_garbage.main(["--rounds", "2" if args.quick else "6"])
    print("\n### Exact values (values=\"exact\")\n")
    bench_exact.main(["--tests", "100" if args.quick else "150", "--rounds", "2" if args.quick else "3"]
                     + (["--skip-mp"] if args.quick else []))
    print("\n### unittest suites in exact worlds\n")
    bench_unittest.main(["--rounds", "1" if args.quick else "3"] + (["--skip-mp"] if args.quick else []))
    print("\n### Will it fit? (tensors=\"fake\", one training step)\n")
    bench_fake_tensors.main(["--plans", "8B-fsdp,8B-fsdp-tp" if args.quick else ",".join(bench_fake_tensors.PLANS)])
    print("\n### Scale\n")
    bench_scale.main(["--calls", "200000" if args.quick else "1000000"])


if __name__ == "__main__":
    main()
