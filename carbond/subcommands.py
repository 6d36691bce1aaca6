"""The command-line options of `carbond report`, `estimate` and `idle` (issue 8), kept apart from
their modules so building the parser imports neither numpy nor requests."""

from __future__ import annotations

GROUPS = ("account", "user", "partition", "node_class", "day", "month")
"""As carbond.summary.GROUPS (checked there)."""


def add_parsers(command) -> None:
    """Add the subcommands through cli.build_parser's `command(name, help)`."""
    p = command("report", "totals by account/user/partition/node class/day/month "
                "from the ledger (no Slurm, no VictoriaMetrics)")
    p.add_argument("--by", default="account", help=f"comma-separated: {', '.join(GROUPS)} (default: account)")
    p.add_argument("--start", help="jobs that ended at or after (ISO 8601 or epoch seconds)")
    p.add_argument("--end", help="jobs that ended before")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", dest="fmt", action="store_const", const="csv", help="CSV instead of a table")
    fmt.add_argument("--json", dest="fmt", action="store_const", const="json", help="one JSON object per row")
    p.set_defaults(fmt="table")

    p = command("estimate", "energy and CO2e of a planned job; with --window, the greenest start")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--partition", help="the partition the job would run in (its nodes' class from sinfo, else "
                       "the class recorded for its jobs)")
    which.add_argument("--nodes-class", dest="node_class", help="a `nodes` entry's name (or match)")
    p.add_argument("--cpus", type=int, required=True, help="CPUs the job would hold")
    p.add_argument("--gpus", type=int, default=0, help="GPUs the job would hold (default 0)")
    p.add_argument("--time", required=True, help="run time: 6h, 90m, 1d, 1-12:00:00, minutes (as sbatch)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--start", help="planned start (ISO 8601 or epoch seconds; default now)")
    when.add_argument("--window", help="search the greenest start from now within this span, e.g. 24h")
    p.add_argument("--json", action="store_true", help="JSON with how each figure was obtained")

    p = command("idle", "energy no job carried, per node, over a past range "
                "(measured = jobs + unattributed for every node and half-hour)")
    p.add_argument("--start", required=True, help="first half-hour (ISO 8601 with offset, or epoch)")
    p.add_argument("--end", required=True, help="end of the range, rounded up to a half-hour (in the past); "
                   "without --write it may fall inside a half-hour that is not over (the books so far)")
    p.add_argument("--write", action="store_true", help="record it in the ledger for `carbond report`")
    p.add_argument("--json", action="store_true", help="one JSON object per node")


def run(args, cfg) -> int:
    if args.command == "report":
        from .summary import run as go
    elif args.command == "estimate":
        from .estimate import run as go
    else:
        from .idle import run as go
    return go(args, cfg)
