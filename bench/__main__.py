"""``python -m bench [signaling|media|record|redis|sfu|all] [options]``: run the benchmarks (default: signaling).

Each benchmark module is imported only when it runs, so one with missing extras cannot break
the others. Options after the name go to that benchmark (``python -m bench signaling --help``).
"""

from __future__ import annotations

import importlib
import sys

BENCHES = {
    "signaling": "bench.signaling",
    "media": "bench.media",
    "record": "bench.record",
    "redis": "bench.redis_scale",
    "sfu": "bench.sfu",
}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    name = "signaling"
    if args and not args[0].startswith("-"):
        name = args.pop(0)
    if name in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    names = list(BENCHES) if name == "all" else [name]
    for n in names:
        if n not in BENCHES:
            print(f"unknown benchmark {n!r}; choose from {', '.join([*BENCHES, 'all'])}", file=sys.stderr)
            return 2
    status = 0
    for n in names:
        try:
            module = importlib.import_module(BENCHES[n])
        except ModuleNotFoundError as exc:
            if exc.name != BENCHES[n]:
                raise
            print(f"benchmark {n!r} is not available here ({BENCHES[n]} is missing)", file=sys.stderr)
            status = status or 1
            continue
        # "all" runs each benchmark with its defaults; options only make sense for one
        status = int(module.main(args if len(names) == 1 else []) or 0) or status
    return status


if __name__ == "__main__":
    sys.exit(main())
