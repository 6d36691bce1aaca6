"""Command line: thin over the library. A CarbondError becomes one line on stderr and exit 1."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from . import __version__
from .errors import CarbondError

log = logging.getLogger("carbond")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="carbond", description=__doc__)
    p.add_argument("--config", help="YAML config (default: $CARBOND_CONFIG or /etc/carbond/carbond.yaml)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--version", action="version", version=f"carbond {__version__}")
    # --config is also accepted after the subcommand (`carbond run --config FILE`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help="YAML config")
    sub = p.add_subparsers(dest="command", required=True)

    fp = sub.add_parser("footprint", parents=[common], help="energy and CO2e of a window on some nodes, or of jobs from sacct")
    src = fp.add_mutually_exclusive_group(required=True)
    src.add_argument("--nodes", help="Slurm hostlist, e.g. 'cpu-p-[1-2]'")
    src.add_argument("--jobs", help="sacct -P output with JobIDRaw|Start|End|NodeList|AllocTRES ('-' for stdin)")
    fp.add_argument("--cpus", type=float, help="with --nodes: CPUs held in all (default: whole nodes)")
    fp.add_argument("--start", help="with --nodes: ISO 8601 with offset, or epoch seconds")
    fp.add_argument("--end", help="with --nodes: ISO 8601 with offset, or epoch seconds")
    fp.add_argument("--timezone", help="with --jobs: IANA zone of local sacct times, e.g. Europe/London")
    fp.add_argument("--json", action="store_true", help="JSON (one object per line for --jobs)")
    fp.add_argument("--stats", action="store_true", help="print jobs/s and VictoriaMetrics requests to stderr")

    sub.add_parser("run", parents=[common], help="the daemon: account every job handed over by the epilog")

    show = sub.add_parser("show", parents=[common], help="a job's footprint as recorded in Slurm")
    show.add_argument("job_ids", nargs="+", metavar="JOBID")
    show.add_argument("--json", action="store_true")

    bf = sub.add_parser("backfill", parents=[common], help="account jobs that ended in a range and have no carbond token")
    bf.add_argument("--start", required=True)
    bf.add_argument("--end", required=True)
    bf.add_argument("--write", action="store_true", help="write the tokens (default: only show)")
    bf.add_argument("--json", action="store_true")

    from .subcommands import add_parsers

    add_parsers(sub, common)  # report, estimate, idle

    chk = sub.add_parser("check-config", parents=[common], help="validate the config and exit")
    chk.set_defaults(command="check-config")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _dispatch(args)
    except CarbondError as exc:
        print(f"carbond: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def _dispatch(args: argparse.Namespace) -> int:
    from . import config

    cfg = config.load(args.config)
    if args.command == "check-config":
        print(f"{cfg.source}: ok")
        return 0
    if args.command == "footprint":
        return _footprint(args, cfg)
    if args.command == "run":
        from .daemon import run

        return run(cfg)
    if args.command == "show":
        from .show import show

        return show(cfg, args.job_ids, as_json=args.json)
    if args.command == "backfill":
        from .backfill import backfill

        return backfill(cfg, args.start, args.end, write=args.write, as_json=args.json)
    if args.command in ("report", "estimate", "idle"):
        from .subcommands import run

        return run(args, cfg)
    raise AssertionError(args.command)


def _footprint(args: argparse.Namespace, cfg) -> int:
    from . import report
    from .engine import build_engine
    from .errors import JobInputError
    from .hostlist import expand
    from .jobs import Job, even_split, read_sacct
    from .times import parse_time

    t0 = time.perf_counter()
    if args.nodes:
        if not (args.start and args.end):
            raise JobInputError("--nodes needs --start and --end")
        nodes = expand(args.nodes)
        start, _ = parse_time(args.start)
        end, _ = parse_time(args.end)
        cpus = even_split(args.cpus, len(nodes)) if args.cpus else ()
        items = [Job("window", start, end, nodes, cpus)]
    else:
        if args.start or args.end or args.cpus:
            raise JobInputError("--start/--end/--cpus go with --nodes, not --jobs")
        stream = sys.stdin if args.jobs == "-" else _open(args.jobs)
        with stream:
            items = list(read_sacct(stream, args.timezone))
    engine, victoria = build_engine(cfg)
    if args.json:
        n = report.write_json_batches(engine.batches(items), sys.stdout)
    else:
        n = report.write_table(engine.account(items), sys.stdout)
    if args.stats:
        secs = time.perf_counter() - t0
        print(
            f"carbond: {n} jobs in {secs:.2f} s ({n / secs:,.0f} jobs/s), "
            f"{victoria.requests_made} VictoriaMetrics request(s)",
            file=sys.stderr,
        )
    return 0


def _open(path: str):
    from .errors import JobInputError

    try:
        return open(path, encoding="utf-8")
    except OSError as exc:
        raise JobInputError(f"cannot read {path}: {exc.strerror}") from None
