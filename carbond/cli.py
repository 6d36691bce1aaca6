"""Command line: thin over the library. A CarbondError becomes one line on stderr and exit 1;
nothing, not even a bug, reaches the user as a traceback (the daemon logs it)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from . import __version__
from .errors import CarbondError

log = logging.getLogger("carbond")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_BUG = 0, 1, 2, 70
EXIT_STATUS = """exit status:
  0   done: every job asked for was accounted (or shown)
  1   an error stopped the command (one line on stderr), or some job could not be
      accounted or shown (footprint: status "error"; show: unknown, invalid or not yet accounted)
  2   the command line is wrong
  70  an unexpected internal error (a bug): one line on stderr; --log-level DEBUG adds the traceback
"""

SECTIONS = {"show": ("cluster", "state_dir", "slurm")}
"""Config sections a command reads; the others are not validated, and their files (secrets) not opened."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="carbond", description="Carbon footprint of Slurm jobs from measured node power.",
                                epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (default: $CARBOND_CONFIG or /etc/carbond/carbond.yaml)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="log verbosity on stderr (default INFO)")
    p.add_argument("--version", action="version", version=f"carbond {__version__}", help="print the version and exit")
    # --config is also accepted after the subcommand (`carbond run --config FILE`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help="YAML config (as before the command)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=text, description=text[0].upper() + text[1:] + ".",
                              epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter)

    fp = command("footprint", "energy and CO2e of a window on some nodes, or of jobs from sacct")
    src = fp.add_mutually_exclusive_group(required=True)
    src.add_argument("--nodes", help="Slurm hostlist, e.g. 'cpu-p-[1-2]'")
    src.add_argument("--jobs", help="sacct -P output with JobIDRaw|Start|End|NodeList|AllocTRES ('-' for stdin)")
    fp.add_argument("--cpus", type=float, help="with --nodes: CPUs held in all (default: whole nodes)")
    fp.add_argument("--start", help="with --nodes: ISO 8601 with offset, or epoch seconds")
    fp.add_argument("--end", help="with --nodes: ISO 8601 with offset, or epoch seconds")
    fp.add_argument("--timezone", help="with --jobs: IANA zone of local sacct times, e.g. Europe/London")
    fp.add_argument("--json", action="store_true", help="JSON (one object per line for --jobs)")
    fp.add_argument("--stats", action="store_true", help="print jobs/s and VictoriaMetrics requests to stderr")

    command("run", "the daemon: account every job handed over by the epilog")

    show = command("show", "a job's footprint as recorded in Slurm (needs no carbond secrets)")
    show.add_argument("job_ids", nargs="+", metavar="JOBID",
                      help="job id as sacct shows it: 1234, an array task 1234_7 (1234 alone: every task), "
                           "a het component 1234+1")
    show.add_argument("--json", action="store_true", help="one JSON object per job per line")

    bf = command("backfill", "account jobs that ended in a range and have no carbond token")
    bf.add_argument("--start", required=True, help="jobs that ended at or after this time (ISO 8601 with offset, or epoch)")
    bf.add_argument("--end", required=True, help="jobs that ended before this time (ISO 8601 with offset, or epoch)")
    bf.add_argument("--write", action="store_true", help="write the tokens (default: only show)")
    bf.add_argument("--json", action="store_true", help="one JSON object per job per line")

    chk = command("check-config", "validate the config and exit")
    chk.add_argument("--print", dest="print_config", action="store_true",
                     help="also print the effective configuration (defaults filled in) as YAML; "
                          "secrets are never printed, only the names of the files that hold them")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _dispatch(args)
    except CarbondError as exc:
        print(f"carbond: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_OK
    except Exception as exc:  # the last resort: a bug is one line for a user, a traceback in the log
        if args.command == "run":
            log.critical("carbond stopped by an unexpected error", exc_info=True)
        else:
            log.debug("unexpected error", exc_info=True)
        print(f"carbond: internal error: {type(exc).__name__}: {exc} (a bug; --log-level DEBUG shows where)",
              file=sys.stderr)
        return EXIT_BUG


def _quiet_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush does not complain."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _dispatch(args: argparse.Namespace) -> int:
    from . import config

    if args.command == "show":
        from .show import show

        cfg, any_field = _show_config(args.config)
        return show(cfg, args.job_ids, as_json=args.json, any_field=any_field)
    cfg = config.load(args.config)
    if args.command == "check-config":
        if args.print_config:
            print(config.dump(cfg), end="")
        print(f"{cfg.source}: ok", file=sys.stderr if args.print_config else sys.stdout)
        return EXIT_OK
    if args.command == "footprint":
        return _footprint(args, cfg)
    if args.command == "run":
        from .daemon import run

        return run(cfg)
    if args.command == "backfill":
        from .backfill import backfill

        return backfill(cfg, args.start, args.end, write=args.write, as_json=args.json)
    raise AssertionError(args.command)


def _show_config(path: str | None):
    """The sections `show` needs. A user who may not read the site's config (0640 root:carbond)
    still gets their job: defaults, and the token looked for in every comment field."""
    from . import config

    chosen = path or os.environ.get("CARBOND_CONFIG")
    if chosen is None and not os.access(config.DEFAULT_PATH, os.R_OK):
        log.debug("%s not readable: Slurm defaults, every comment field searched", config.DEFAULT_PATH)
        return config.Config(), True
    return config.load(chosen, sections=SECTIONS["show"]), False


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
    failed = _Failures()
    if args.json:
        n = report.write_json_batches(map(failed.batch, engine.batches(items)), sys.stdout)
    else:
        n = report.write_table(map(failed.footprint, engine.account(items)), sys.stdout)
    sys.stdout.flush()
    if args.stats:
        secs = time.perf_counter() - t0
        print(
            f"carbond: {n} jobs in {secs:.2f} s ({n / secs:,.0f} jobs/s), "
            f"{victoria.requests_made} VictoriaMetrics request(s)",
            file=sys.stderr,
        )
    if failed.count:
        where = "the error field" if args.json else "NOTE"
        print(f"carbond: {failed.count} of {n} job(s) could not be accounted (see {where})", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


class _Failures:
    """Counts jobs that could not be accounted while their output streams past."""

    def __init__(self) -> None:
        self.count = 0

    def footprint(self, fp):
        self.count += fp.status == "error"
        return fp

    def batch(self, b):
        import numpy as np

        from .footprint import JobFootprint

        self.count += sum(1 for s in b.slots if isinstance(s, JobFootprint) and s.status == "error")
        if b.acc is not None:
            bad = ~np.isfinite(b.acc.energy_j) | ~np.isfinite(b.acc.operational_g)
            self.count += int(np.count_nonzero(bad))
        return b


def _open(path: str):
    from .errors import JobInputError

    try:
        return open(path, encoding="utf-8")
    except OSError as exc:
        raise JobInputError(f"cannot read {path}: {exc.strerror}") from None
