#!/usr/bin/env python3
"""Compare two `carbond footprint --json` outputs job by job: every number within a relative
tolerance (default 1e-11, i.e. 12 significant digits with a margin for the last one), every
other field equal. Order does not matter (the streamed output comes in window order).

    python3 bench/compare_out.py before.jsonl after.jsonl [--rel 1e-11]
"""

from __future__ import annotations

import argparse
import json
import math


def close(a: object, b: object, rel: float, path: str, bad: list[str]) -> None:
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        if not math.isclose(a, b, rel_tol=rel, abs_tol=1e-300):
            bad.append(f"{path}: {a!r} != {b!r}")
    elif isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            bad.append(f"{path}: keys {sorted(a)} != {sorted(b)}")
        for k in a.keys() & b.keys():
            close(a[k], b[k], rel, f"{path}.{k}", bad)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            bad.append(f"{path}: {len(a)} items != {len(b)}")
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            close(x, y, rel, f"{path}[{i}]", bad)
    elif a != b:
        bad.append(f"{path}: {a!r} != {b!r}")


def load(path: str) -> dict[str, dict]:
    with open(path, encoding="utf-8") as fh:
        return {d["job_id"]: d for d in map(json.loads, fh)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--rel", type=float, default=1e-11)
    args = ap.parse_args()
    a, b = load(args.before), load(args.after)
    bad: list[str] = []
    if a.keys() != b.keys():
        bad.append(f"job ids differ: {len(a.keys() - b.keys())} only before, {len(b.keys() - a.keys())} only after")
    for k in sorted(a.keys() & b.keys()):
        close(a[k], b[k], args.rel, k, bad)
    for line in bad[:20]:
        print(line)
    print(f"{len(a.keys() & b.keys()):,} jobs compared, {len(bad)} difference(s) beyond rel {args.rel:g}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
