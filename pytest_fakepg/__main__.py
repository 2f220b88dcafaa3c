"""Build pytest-fakepg's fakepg backend ahead of time, or find its cache.

  python -m pytest_fakepg build   compile the backend for the installed torch now
                                  (CI images, before pytest -n) instead of on first use
  python -m pytest_fakepg where   print the cache root and this torch's build directory
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_fakepg",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="{build,where}")
    build = sub.add_parser("build", help="compile the backend for the installed torch")
    build.add_argument("-v", "--verbose", action="store_true", help="show the compiler's output")
    sub.add_parser("where", help="print the cache root and the build directory")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0

    from . import _backend

    if args.command == "where":
        print(f"cache root:      {_backend.cache_root()}")
        print(f"build directory: {_backend.build_dir()}")
        return 0
    start = time.perf_counter()
    try:
        directory = _backend.build(verbose=args.verbose)
        _backend.load()
    except _backend.BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"fakepg backend ready in {directory} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
