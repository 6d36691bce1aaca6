"""Command line: thin over the library. A CarbondError becomes one line on stderr and exit 1;
nothing, not even a bug, reaches the user as a traceback (the daemon logs it)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

# carbond does no linear algebra worth a thread: without this, importing numpy starts an
# OpenBLAS thread per core that spins a while (a one-job footprint: 0.42 -> 0.32 CPU-s).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from . import __version__  # noqa: E402
from .errors import CarbondError  # noqa: E402

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
    fp.add_argument("--cpus", type=_positive, help="with --nodes: CPUs held in all (default: whole nodes)")
    fp.add_argument("--start", help="with --nodes: ISO 8601 with offset, or epoch seconds")
    fp.add_argument("--end", help="with --nodes: ISO 8601 with offset, or epoch seconds")
    fp.add_argument("--timezone", help="with --jobs: IANA zone of local sacct times, e.g. Europe/London")
    fp.add_argument("--json", action="store_true", help="JSON (one object per line for --jobs)")
    fp.add_argument("--stats", action="store_true", help="print jobs/s and VictoriaMetrics requests to stderr")
    fp.add_argument("--workers", type=_count, default=None, metavar="N",
                    help="with --jobs --json: processes accounting runs of windows side by side (default: one "
                         "per core for large inputs, none for small ones)")
    fp.add_argument("--window", type=_hours, default=24.0, metavar="HOURS",
                    help="with --jobs: stream by job start in windows of this many hours (default 24; "
                         "0: all at once, holding every node's samples over the whole span)")

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
    bf.add_argument("--rewrite", action="store_true",
                    help="with --write: re-publish tokens the ledger holds as unwritable (field was left alone)")
    bf.add_argument("--window", type=_hours, default=24.0, metavar="HOURS",
                    help="read sacct and account jobs by end time in windows of this many hours (default 24)")

    from .subcommands import add_parsers

    add_parsers(command)  # report, estimate, idle

    chk = command("check-config", "validate the config and exit")
    chk.add_argument("--print", dest="print_config", action="store_true",
                     help="also print the effective configuration (defaults filled in) as YAML; "
                          "secrets are never printed, only the names of the files that hold them")
    return p


def _checked(kind: str, parse, ok, rule: str):
    """An argparse type: `parse` the text (else "not {kind}"), then `ok` it (else the rule)."""
    def check(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {kind}: {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{rule}: {text!r}")
        return value

    return check


_hours = _checked("a number of hours", float, lambda v: 0 <= v <= 366 * 24, f"hours must be 0 to {366 * 24}")
_positive = _checked("a number", float, lambda v: 0 < v < 1e9, "must be a positive number")
_count = _checked("a whole number", int, lambda v: 0 <= v <= 4096, "must be 0 to 4096")


def main(argv: list[str] | None = None) -> int:
    from .fsmode import restrict_umask

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    umask = restrict_umask()  # state files 0640, directories 0750, even for root under umask 022
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
    finally:
        os.umask(umask)  # the process ends here; restored for callers that run main() in-process


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
        return show(cfg, args.job_ids, as_json=args.json, any_field=any_field,
                    full_config=lambda: config.load(args.config))
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
        from .fsmode import make_state_dir

        make_state_dir(cfg.state_dir)
        return run(cfg)
    if args.command == "backfill":
        from .backfill import backfill

        return backfill(cfg, args.start, args.end, write=args.write, as_json=args.json, rewrite=args.rewrite,
                        window=args.window * 3600 or None)
    if args.command in ("report", "estimate", "idle"):
        from .subcommands import run

        return run(args, cfg)
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
    from .errors import JobInputError
    from .hostlist import expand
    from .jobs import Job, even_split
    from .services import build
    from .times import check_span, parse_time

    t0 = time.perf_counter()
    if args.nodes:
        if not (args.start and args.end):
            raise JobInputError("--nodes needs --start and --end")
        nodes = expand(args.nodes)
        start, _ = parse_time(args.start)
        end, _ = parse_time(args.end)
        check_span(start, end, "the window")
        cpus = even_split(args.cpus, len(nodes)) if args.cpus else ()
        items = [Job("window", start, end, nodes, cpus)]
    else:
        if args.start or args.end or args.cpus:
            raise JobInputError("--start/--end/--cpus go with --nodes, not --jobs")
        return _footprint_jobs(args, cfg, t0)
    services = build(cfg)
    engine, victoria = services.engine, services.victoria
    failed = _Failures()
    if args.json:
        n = report.write_json_batches(map(failed.batch, engine.batches(items)), sys.stdout)
    else:
        n = report.write_table(map(failed.footprint, engine.account(items)), sys.stdout)
    sys.stdout.flush()
    if args.stats:
        _stats(n, t0, victoria.requests_made)
    return failed.exit_status(n, args.json)


class _Failures:
    """Counts jobs that could not be accounted while their output streams past."""

    def __init__(self) -> None:
        self.count = 0

    def exit_status(self, n: int, as_json: bool) -> int:
        if not self.count:
            return EXIT_OK
        where = "the error field" if as_json else "NOTE"
        print(f"carbond: {self.count} of {n} job(s) could not be accounted (see {where})", file=sys.stderr)
        return EXIT_ERROR

    def footprint(self, fp):
        self.count += fp.status == "error"
        return fp

    def batch(self, b):
        self.count += b.failures()
        return b


def _footprint_jobs(args: argparse.Namespace, cfg, t0: float) -> int:
    """Jobs of a sacct table, streamed by start time (or all at once with --window 0). A job of
    several lines (`sacct -D`: its runs) or with suspended time is accounted whole at the end,
    as the daemon accounts it (carbond.accounting)."""
    from . import report
    from .accounting import ledger_view
    from .engine import WINDOW, one_malloc_arena
    from .jobs import TimeBuckets
    from .services import build
    from .times import check_span

    if args.jobs == "-":
        sys.stdin.reconfigure(errors="replace")  # a byte that is not UTF-8 spoils its line, not the run
    stream = sys.stdin if args.jobs == "-" else _open(args.jobs)
    services = build(cfg)
    engine, victoria = services.engine, services.victoria
    failed = _Failures()
    window = args.window * 3600 or ALL_AT_ONCE
    one_malloc_arena()
    ledger = ledger_view(cfg.state_dir, cfg.cluster)
    with stream, TimeBuckets(stream, window, args.timezone, gpu_special=cfg.gpu is not None and ledger is not None
                             ) as buckets:
        if window == ALL_AT_ONCE and buckets.span is None and buckets.lo <= buckets.hi:
            check_span(buckets.lo, buckets.hi, "the table (with --window 0)")  # one read over the whole span: bounded
        workers = args.workers if args.workers is not None else _workers(buckets.jobs)
        if args.json and workers > 1:
            return _footprint_segments(args, cfg, t0, buckets, engine, failed, workers, window, ledger)
        batches = map(failed.batch, engine.stream(buckets.windows(), span=buckets.span, align=min(window, WINDOW)))
        if args.json:
            n = report.write_json_batches(batches, sys.stdout)
            n += report.write_json(map(failed.footprint, _specials(cfg, engine, buckets, ledger)), sys.stdout)
        else:
            fps = (fp for b in batches for fp in b.footprints())
            n = report.write_table(_chain(fps, lambda: map(failed.footprint, _specials(cfg, engine, buckets, ledger))),
                                   sys.stdout)
    if args.stats:
        _stats(n, t0, victoria.requests_made, engine.cache.stats.samples if engine.cache else None)
    return failed.exit_status(n, args.json)


ALL_AT_ONCE = 1e12
"""--window 0: one window for any real span."""


def _chain(first, then):
    yield from first
    yield from then()


def _specials(cfg, engine, buckets, ledger) -> list:
    """The jobs TimeBuckets set aside (runs, suspends, GPUs), through carbond.accounting; suspend
    intervals and GPU indices from the ledger when this user may read it."""
    from .accounting import JobHistory, account_in_windows
    from .engine import _bad

    items = buckets.special_histories(ledger)
    done = iter(account_in_windows(engine, [h for h in items if isinstance(h, JobHistory)], buckets.window))
    return [next(done) if isinstance(h, JobHistory) else _bad(h, cfg.pue) for h in items]


def _footprint_segments(args: argparse.Namespace, cfg, t0: float, buckets, engine, failed: _Failures, workers: int,
                        window: float, ledger=None) -> int:
    """JSON lines of many jobs, segments of windows accounted on every core (carbond.segments)."""
    from .segments import write_parallel
    from .services import build

    def fresh():
        s = build(cfg)
        return s.engine, s.victoria

    sys.stdout.flush()
    totals = write_parallel(buckets, engine, fresh, sys.stdout.buffer, workers, window)
    sys.stdout.flush()
    failed.count += totals.failures
    if buckets.specials:
        from . import report

        buckets.collect_specials()  # the workers set them aside in their own processes
        totals.lines += report.write_json(map(failed.footprint, _specials(cfg, engine, buckets, ledger)), sys.stdout)
    if args.stats:
        _stats(totals.lines, t0, engine.power.requests_made + totals.requests, totals.samples)
    return failed.exit_status(totals.lines, args.json)


def _workers(jobs: int) -> int:
    """A process per core pays from some ten thousand jobs on (each one reads what its first
    window needs afresh, and the output is copied once more)."""
    import os

    return (os.cpu_count() or 1) if jobs >= 20_000 else 0


def _stats(n: int, t0: float, requests: int, samples: int | None = None) -> None:
    import resource

    secs = time.perf_counter() - t0
    fetched = f", {samples:,} power samples fetched" if samples is not None else ""
    rss = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024
    print(
        f"carbond: {n} jobs in {secs:.2f} s ({n / secs:,.0f} jobs/s), "
        f"{requests} VictoriaMetrics request(s){fetched}, peak RSS {rss:.0f} MB",
        file=sys.stderr,
    )


def _open(path: str):
    from .errors import JobInputError

    try:
        return open(path, encoding="utf-8", errors="replace")  # a bad byte spoils its line, not the run
    except OSError as exc:
        raise JobInputError(f"cannot read {path}: {exc.strerror}") from None
