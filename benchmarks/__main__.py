"""The benchmark runner: ``python -m benchmarks [--quick] [--json FILE] [NAME ...]``.

Runs the named benchmarks (all of them when none is named), in this process, one after
the other; ``--quick`` asks each for its short form; ``--json FILE`` writes every figure
they returned to FILE as one flat JSON object.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable

BENCHMARKS = (
    "pipeline",
    "sessions",
    "jitter",
    "codecs",
    "throughput",
    "idle",
    "memory",
    "serve",
    "fleet",
    "analyze",
)


def _load(name: str) -> Callable[[bool], dict[str, float]]:
    module = importlib.import_module(f"benchmarks.{name}")
    run: Callable[[bool], dict[str, float]] = module.run
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"of {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="the short form of each")
    parser.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}")
    figures: dict[str, float] = {}
    for name in args.names or BENCHMARKS:
        figures.update(_load(name)(args.quick))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(figures, out, indent=2, sort_keys=True, allow_nan=False)
            out.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
