"""Thin I/O over Slurm's accounting commands: read a batch of jobs, write comment fields.

What Slurm 22.05 really does (captured in tests/data/sacct/):
- `sacct -P` prints AdminComment/Comment raw, `|` and newlines included, so the default
  delimiter cannot be split safely. carbond asks for `--delimiter=\\x1f` (ASCII unit separator),
  puts the free-text fields last and JobIDRaw once more after them. A user can put \\x1f and
  newlines in `--comment` (seen: a forged second row); the closing JobIDRaw must equal the
  opening one and ids must be unique, so any such row is detected and the batch re-read
  with `--json`, which is unambiguous.
- `sacct --json` is robust but ~30x larger (about 3 KB per job) and breaks when
  SLURM_TIME_FORMAT is set (exit 0, `errors: Unable to parse time format`, no jobs), so it
  runs without it. Its times are epoch seconds anyway.
- `sacct -S/-E` do not take epoch seconds: they get ISO times with TZ=UTC.
- A job cancelled before it started shows Start == End (the cancel time) and
  NodeList "None assigned": it never ran, so its start is None here.
- `sacctmgr -i modify job where jobid=N set AdminComment=V`: exit 0 and "Modified jobs"
  (also when V is unchanged); exit 1 and "Access/permission denied" without AdminLevel=Operator.
  When slurmdbd does not know the job (yet), exit 1 and, by series (tests/data/<series>/):
  22.05 stdout " Nothing modified"; 24.11 stderr "Request didn't affect anything" and "Data has
  not changed since time specified"; 26.05 the latter, under a stdout " Modified jobs...".
- 25.11+: `... set tres=energy=J` replaces the job's energy TRES (earlier series: exit 1,
  "Unknown option: tres=energy=J").
- `sacctmgr ... where jobid=N` with N an array's or het job's id modifies *every* task or
  component (`sacct -j N` lists them all too); `jobid=N_T` / `jobid=N+K` address one. So writes
  go to the JobID sacct shows (`1234_7`, `311+1`), and a write that reports more than one
  modified job is an error.
- 22.05 sacctmgr lowercases ASCII letters of V, drops a leading quote and turns the other
  quotes into backticks; spaces, tabs, newlines, `|`, non-ASCII and 5,000-byte values pass.
  23.02+ keep the case; the quotes are still turned into backticks (seen on 24.11 and 26.05).
- `sacct --json`: data_parser v0.0.38 (22.05), v0.0.42 (24.11), v0.0.45 (26.05); see parse_json.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .config import SlurmConfig
from .errors import CarbondError, SlurmError, SlurmStopping
from .hostlist import expand
from .jobs import Job, even_split, tres_counts, tres_mem_gb
from .times import EPOCH_MAX

Runner = Callable[..., Any]
"""subprocess.run-compatible: runner(args, capture_output=True, env=..., timeout=..., check=False)."""

log = logging.getLogger("carbond.slurm")

FIELD_OPTIONS = {"admin_comment": "AdminComment", "system_comment": "SystemComment", "comment": "Comment"}
COLUMNS = ("JobIDRaw", "JobID", "State", "Start", "End", "NodeList", "AllocTRES", "Partition", "Account",
           "User", "Cluster", "AdminComment", "SystemComment", "Comment", "JobIDRaw")
"""Free-text columns last (only they may hold newlines), then JobIDRaw again to close the row."""
DELIMITER = "\x1f"
ENDED_STATES = ("BF", "CA", "CD", "DL", "F", "NF", "OOM", "PR", "TO")
"""Every terminal state, for backfill's `sacct --state`."""
ACTIVE_STATES = frozenset({"PENDING", "RUNNING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                           "RESIZING", "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT", "STOPPED"})
NO_NODES = frozenset({"", "none assigned", "none", "(null)"})
MAX_IDS_PER_CALL = 2000
"""Bounds the argv length; a daemon batch is normally far smaller, so one call."""


class SlurmCommandError(SlurmError):
    """A Slurm command failed; carries the command (argv list), exit status and stderr."""

    retryable = True

    def __init__(self, cmd: Sequence[str], returncode: int | None, stderr: str, what: str = "failed",
                 retryable: bool | None = None) -> None:
        if retryable is not None:
            self.retryable = retryable
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stderr = stderr.strip()
        shown = " ".join(a if len(a) <= 120 else a[:117] + "..." for a in self.cmd)
        status = f"exit {returncode}" if returncode is not None else "no exit status"
        super().__init__(f"{shown}: {what} ({status}): {self.stderr or '(no stderr)'}")


class JobNotInDatabase(SlurmCommandError):
    """slurmdbd does not know the job yet ("Nothing modified"): retry later."""


class SlurmPermissionError(SlurmCommandError):
    """The user lacks AdminLevel=Operator: retrying will not help."""

    retryable = False


class SlurmUnsupported(SlurmCommandError):
    """This Slurm cannot do what was asked (e.g. set a job's TRES before 25.11)."""

    retryable = False


MODIFIED, NOT_IN_DB, DENIED, UNSUPPORTED, FAILED = "modified", "not-in-db", "denied", "unsupported", "failed"


def classify_modify(returncode: int, stdout: str, stderr: str) -> str:
    """What a `sacctmgr -i modify job` call did, from its exit status and messages, any series.

    Exit 0 with "Modified jobs" is the only success: 26.05 prints "Modified jobs..." on stdout
    also when nothing was modified (exit 1). 22.05's "not in the database" stderr mentions
    privileges too ("...or your user doesn't have privilege..."), so a refusal is recognised
    only by "Access/permission denied", which every series prints for it.
    """
    both = stdout + "\n" + stderr
    if returncode == 0 and "Modified jobs" in stdout:
        return MODIFIED
    if "Access/permission denied" in both:
        return DENIED
    if ("Nothing modified" in stdout or "Request didn't affect anything" in both
            or "Data has not changed since time specified" in both):
        return NOT_IN_DB
    if "Unknown option" in both or "You didn't give me anything to set" in both:
        return UNSUPPORTED
    return FAILED


@dataclass(frozen=True)
class JobFacts:
    """What sacct knows about one job: the Job for the engine, its state and comment fields."""

    job: Job
    state: str
    admin_comment: str = ""
    system_comment: str = ""
    comment: str = ""
    cluster: str = ""

    @property
    def ended(self) -> bool:
        """Finished (end time known and not in an active state), so its footprint is final."""
        return self.job.end is not None and self.state not in ACTIVE_STATES

    def field(self, name: str) -> str:
        """Content of a comment field by its config name (admin_comment, system_comment, comment)."""
        if name not in FIELD_OPTIONS:
            raise CarbondError(f"unknown comment field {name!r}; valid: {', '.join(FIELD_OPTIONS)}")
        return getattr(self, name)


class SlurmIO:
    """Runs sacct and sacctmgr as configured; `runner` and the base `env` are injectable for tests."""

    def __init__(self, cfg: SlurmConfig, cluster: str | None = None, runner: Runner = subprocess.run,
                 read_format: str = "parsable", timeout: float = 120.0, env: dict[str, str] | None = None) -> None:
        if read_format not in ("parsable", "json"):
            raise CarbondError(f"read_format must be 'parsable' or 'json', got {read_format!r}")
        self.cfg = cfg
        self.cluster = cluster or None
        self.read_format = read_format
        self.timeout = timeout
        self._runner = runner
        self._env = dict(os.environ if env is None else env)
        self._version: tuple[int, ...] | None = None
        self.last_contact: float | None = None
        """time.time() of the last command that reached slurmdbd (for the health metric)."""

    # --- reading ---------------------------------------------------------------------------

    def read_jobs(self, job_ids: Iterable[str], groups: bool = False) -> dict[str, JobFacts]:
        """JobIDRaw -> facts of the given jobs (JobIDRaw, or JobID like `1234_7`), one sacct call.

        Unknown ids are absent. sacct also lists an array's or het job's siblings for its id;
        only the jobs asked for are returned, unless `groups`: then an array's id (or a het
        job's) also returns every task (component), as `carbond show 1234` wants.
        """
        ids = list(dict.fromkeys(str(j) for j in job_ids))
        wanted = set(ids)
        out: dict[str, JobFacts] = {}
        for i in range(0, len(ids), MAX_IDS_PER_CALL):
            for key, f in self._read(["-j", ",".join(ids[i : i + MAX_IDS_PER_CALL])]).items():
                shown = f.job.display_id
                if key in wanted or shown in wanted or (groups and re.split(r"[_+]", shown, maxsplit=1)[0] in wanted):
                    out[key] = f
        return out

    def jobs_ended_between(self, start: float, end: float) -> dict[str, JobFacts]:
        """Every job (all users) whose end time is in [start, end), for backfill."""
        # sacct's own window is by whole seconds and inclusive; widen it and cut exactly here.
        window = ["-a", "-S", _iso(start - 1), "-E", _iso(end + 1), "--state=" + ",".join(ENDED_STATES)]
        facts = self._read(window)
        return {k: f for k, f in facts.items() if f.job.end is not None and start <= f.job.end < end}

    def _read(self, selection: list[str]) -> dict[str, JobFacts]:
        if self.read_format == "json":
            return self._read_json(selection)
        try:
            return self._read_parsable(selection)
        except _Ambiguous:
            return self._read_json(selection)  # a comment holds the delimiter: JSON is exact

    def _read_parsable(self, selection: list[str]) -> dict[str, JobFacts]:
        cmd = [self.cfg.sacct, "-X", "-a", "-P", "-n", "--delimiter=" + DELIMITER, *self._cluster_opt(),
               *selection, "-o", ",".join(COLUMNS)]
        text = self._run(cmd, {"SLURM_TIME_FORMAT": "%s"})
        try:
            return {f.job.job_id: f for f in parse_parsable(text)}
        except _Ambiguous:
            raise
        except CarbondError as exc:
            raise SlurmCommandError(cmd, 0, str(exc), "unreadable output") from None

    def _read_json(self, selection: list[str]) -> dict[str, JobFacts]:
        cmd = [self.cfg.sacct, "--json", "-X", "-a", *self._cluster_opt(), *selection]
        text = self._run(cmd, {"SLURM_TIME_FORMAT": None})
        try:
            return {f.job.job_id: f for f in parse_json(text)}
        except CarbondError as exc:
            raise SlurmCommandError(cmd, 0, str(exc), "unreadable output") from None

    # --- writing ---------------------------------------------------------------------------

    def write_comment(self, job: str | Job | JobFacts, field: str, value: str) -> None:
        """Set the job's comment field to `value` (the whole field: merge first, see token.merge).

        `job` is a Job/JobFacts (addressed by write_target(job)) or the JobID as sacct shows it;
        a bare JobIDRaw is only safe for a plain job: an array's or het job's id hits them all.
        """
        if field not in FIELD_OPTIONS:
            raise CarbondError(f"unknown comment field {field!r}; valid: {', '.join(FIELD_OPTIONS)}")
        self._modify(job, f"{FIELD_OPTIONS[field]}={value}")

    def write_energy_tres(self, job: str | Job | JobFacts, joules: float) -> None:
        """Set the job's energy TRES to `joules` (Slurm 25.11+; slurm.write_energy_tres).

        Slurm replaces the value it had (from an acct_gather_energy plugin, or none): the
        original is lost, as sacctmgr's man page warns. Older series refuse the option
        (SlurmUnsupported). Call it after the token is written, for measured jobs only.
        """
        if not joules >= 0:
            raise CarbondError(f"energy must be a non-negative number of joules, got {joules!r}")
        self._modify(job, f"tres=energy={round(joules)}")

    def supports_energy_tres(self) -> bool:
        """Can this sacctmgr set a job's TRES (`set tres=energy=J`)? Slurm 25.11 and later."""
        return self.version() >= (25, 11)

    def _modify(self, job: str | Job | JobFacts, assignment: str) -> None:
        """`sacctmgr -i modify job where jobid=<one job> set <assignment>`; raises by outcome."""
        job_id = write_target(job)
        where = [f"jobid={job_id}"] + ([f"cluster={self.cluster}"] if self.cluster else [])
        cmd = [self.cfg.sacctmgr, "-i", "modify", "job", "where", *where, "set", assignment]
        proc = self._call(cmd, {})
        out, err = _text(proc.stdout), _text(proc.stderr)
        outcome = classify_modify(proc.returncode, out, err)
        if outcome in (MODIFIED, NOT_IN_DB, DENIED, UNSUPPORTED):
            self.last_contact = time.time()  # slurmdbd answered
        if outcome == MODIFIED:
            modified = re.findall(r"^\s*(\d+) submitted at", out, re.M)
            if len(modified) > 1:
                raise SlurmCommandError(cmd, 0, out, f"modified {len(modified)} jobs ({', '.join(modified)}), "
                                        f"not one: {job_id} is an array or het job id", retryable=False)
            return
        if outcome == DENIED:
            raise SlurmPermissionError(cmd, proc.returncode, err or out, "refused: the user needs AdminLevel=Operator")
        if outcome == NOT_IN_DB:
            raise JobNotInDatabase(cmd, proc.returncode, err or out, f"job {job_id} is not in slurmdbd (yet)")
        if outcome == UNSUPPORTED:
            raise SlurmUnsupported(cmd, proc.returncode, err or out, "this Slurm does not support it")
        raise SlurmCommandError(cmd, proc.returncode, err or out)

    def write_many(self, items: Iterable[tuple[str | Job | JobFacts, str, str]], concurrency: int | None = None,
                   on_done: Callable[[str, SlurmError | None], None] | None = None,
                   cancel: Callable[[], bool] | None = None) -> dict[str, SlurmError | None]:
        """Write (job, field, value) items, at most `concurrency` (slurm.concurrency) at once.

        Each sacctmgr call is ~0.27 s of mostly waiting, so they overlap well. Returns
        JobIDRaw (or the string given) -> None on success or the error (retry the retryable).
        `on_done(raw id, result)` runs as each write returns (so it is marked at once, not after
        the batch); once `cancel()` is true, writes not yet started fail with a retryable error.
        """
        items = list(items)
        if not items:
            return {}
        workers = max(1, min(concurrency or self.cfg.concurrency, len(items)))

        def one(item: tuple[str, str, str]) -> SlurmError | None:
            if cancel is not None and cancel():
                return SlurmStopping("not written: carbond is stopping")
            try:
                self.write_comment(*item)
                result = None
            except SlurmError as exc:
                result = exc
            if on_done is not None:
                on_done(_raw_id(item[0]), result)
            return result

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sacctmgr") as pool:
            results = list(pool.map(one, items))
        return {_raw_id(item[0]): res for item, res in zip(items, results, strict=True)}

    def read_runs(self, job_ids: Iterable[str]) -> dict[str, list[Run]]:
        """JobIDRaw -> every run of the job (`sacct -D`: a requeued job has one row per run), oldest first."""
        ids = list(dict.fromkeys(str(j) for j in job_ids))
        out: dict[str, list[Run]] = {}
        for i in range(0, len(ids), MAX_IDS_PER_CALL):
            cmd = [self.cfg.sacct, "-D", "-X", "-a", "-P", "-n", "--delimiter=" + DELIMITER, *self._cluster_opt(),
                   "-j", ",".join(ids[i : i + MAX_IDS_PER_CALL]), "-o", ",".join(RUN_COLUMNS)]
            for run in parse_runs(self._run(cmd, {"SLURM_TIME_FORMAT": "%s"})):
                out.setdefault(run.job_id, []).append(run)
        for runs in out.values():
            runs.sort(key=lambda r: (r.start is None, r.start or 0.0))
        return out

    def suspended_jobs(self) -> set[str]:
        """JobIDRaw of every job suspended right now (`squeue -t SUSPENDED`, one cheap call)."""
        squeue = os.path.join(os.path.dirname(self.cfg.sacct), "squeue")
        cmd = [squeue, "-h", "-t", "SUSPENDED", *self._cluster_opt(), "-o", "%A"]
        return {line.strip() for line in self._run(cmd, {}).splitlines() if line.strip().isdigit()}

    def suspend_time(self, job_id: str) -> float | None:
        """The job's SuspendTime (its last suspend or resume, exact), from slurmctld; None if unknown."""
        scontrol = os.path.join(os.path.dirname(self.cfg.sacct), "scontrol")
        cmd = [scontrol, "-o", "show", "job", str(job_id)]
        try:
            text = self._run(cmd, {"SLURM_TIME_FORMAT": "%s"})
        except SlurmError:
            return None
        m = re.search(r"(?:^|\s)SuspendTime=(\d+)(?:\s|$)", text)
        return float(m.group(1)) if m else None

    def time_limit(self, job_id: str) -> float | None:
        """The job's time limit in seconds (`sacct -o Timelimit`); None: UNLIMITED or unknown."""
        from .times import parse_duration

        cmd = [self.cfg.sacct, "-X", "-n", "-P", *self._cluster_opt(), "-j", str(job_id), "-o", "Timelimit"]
        try:
            lines = self._run(cmd, {}).strip().splitlines()
            return parse_duration(lines[0]) if lines else None
        except CarbondError:
            return None

    def running_gpu_jobs(self) -> set[str]:
        """Ids of the running jobs that hold GPUs (one squeue call; carbond.gpu_capture)."""
        from .gpu_capture import parse_running_gpu_jobs

        squeue = os.path.join(os.path.dirname(self.cfg.sacct), "squeue")
        cmd = [squeue, "-h", "-t", "RUNNING", *self._cluster_opt(), "-O", "JobID:30,tres-alloc:2000"]
        return parse_running_gpu_jobs(self._run(cmd, {}))

    def job_details(self, job_id: str) -> str:
        """`scontrol -d -o show job ID` (per-node GRES indices while the job runs)."""
        scontrol = os.path.join(os.path.dirname(self.cfg.sacct), "scontrol")
        return self._run([scontrol, "-d", "-o", "show", "job", str(job_id)], {})

    # --- nodes -----------------------------------------------------------------------------

    def node_cpus(self) -> dict[str, int]:
        """Node name -> CPUs, from sinfo (beside the configured sacct), for attribution by CPUs."""
        sinfo = os.path.join(os.path.dirname(self.cfg.sacct), "sinfo")
        cmd = [sinfo, "-h", "-N", *self._cluster_opt(), "-o", "%N|%c"]
        out: dict[str, int] = {}
        for line in self._run(cmd, {}).splitlines():
            node, _, cpus = line.strip().partition("|")
            if node and cpus.isdigit():
                out[node] = int(cpus)
        return out

    # --- version ---------------------------------------------------------------------------

    def version(self) -> tuple[int, ...]:
        """sacctmgr's version, e.g. (22, 5, 8), read once."""
        if self._version is None:
            cmd = [self.cfg.sacctmgr, "--version"]
            self._version = parse_version(self._run(cmd, {}))
        return self._version

    def lowercases(self) -> bool:
        """Does this sacctmgr lowercase comment values? Slurm before 23.02 does."""
        return self.version() < (23, 2)

    # --- plumbing --------------------------------------------------------------------------

    def _cluster_opt(self) -> list[str]:
        return ["-M", self.cluster] if self.cluster else []

    def _run(self, cmd: list[str], env: dict[str, str | None]) -> str:
        proc = self._call(cmd, env)
        if proc.returncode != 0:
            raise SlurmCommandError(cmd, proc.returncode, _text(proc.stderr))
        self.last_contact = time.time()
        return _text(proc.stdout)

    def _call(self, cmd: list[str], env_changes: dict[str, str | None]) -> Any:
        env = dict(self._env, TZ="UTC")
        for key, value in env_changes.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        try:
            return self._runner(cmd, capture_output=True, env=env, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            raise SlurmCommandError(cmd, None, f"no answer within {self.timeout:g} s", "timed out") from None
        except OSError as exc:
            raise SlurmCommandError(cmd, None, str(exc), "could not run") from None


def node_cpu_lookup(slurm: SlurmIO) -> Callable[[str], int | None]:
    """Node CPU counts from Slurm for nodes the config does not describe (read once, again on a miss)."""
    cache: dict[str, int] = {}

    def lookup(node: str) -> int | None:
        if node not in cache:
            try:
                cache.update(slurm.node_cpus())
            except SlurmError as exc:
                log.warning("cannot read node CPU counts from Slurm: %s", exc)
        return cache.get(node)

    return lookup


def write_target(job: str | Job | JobFacts) -> str:
    """The id sacctmgr's `where jobid=` needs to modify exactly this job: `1234_7`, `311+1`, or 42."""
    if isinstance(job, str):
        return job
    j = job.job if isinstance(job, JobFacts) else job
    return j.display_id if ("_" in j.display_id or "+" in j.display_id) else j.job_id


def _raw_id(job: str | Job | JobFacts) -> str:
    if isinstance(job, str):
        return job
    return job.job.job_id if isinstance(job, JobFacts) else job.job_id


# --- parsing (pure functions, tested on captured output) ------------------------------------

RUN_COLUMNS = ("JobIDRaw", "State", "Start", "End", "NodeList", "AllocTRES", "Suspended", "JobIDRaw")
"""No free-text column, so a row is exactly one line: nothing a user typed can split it."""


@dataclass(frozen=True)
class Run:
    """One run of a job as slurmdbd keeps it (a requeued job has one per start)."""

    job_id: str
    state: str
    start: float | None
    end: float | None
    nodes: tuple[str, ...]
    cpus: int
    suspended: float
    """Seconds suspended during this run (sacct keeps only the total)."""


def parse_runs(text: str) -> list[Run]:
    """Rows of `sacct -D -X -P -n --delimiter=D -o <RUN_COLUMNS>` with SLURM_TIME_FORMAT=%s."""
    out = []
    for line in text.splitlines():
        if not line:
            continue
        f = line.split(DELIMITER)
        if len(f) != len(RUN_COLUMNS) or f[0] != f[-1] or not re.fullmatch(r"[0-9]+", f[0]):
            raise SlurmError(f"sacct -D printed a row of {len(f)} fields, expected {len(RUN_COLUMNS)}")
        nodes = () if f[4].strip().lower() in NO_NODES else expand(f[4])
        cpus, _ = tres_counts(f[5])
        start = _epoch(f[2]) if nodes else None
        out.append(Run(f[0], f[1].split(" ")[0].upper(), start, _epoch(f[3]), nodes, cpus, parse_elapsed(f[6])))
    return out


def parse_elapsed(text: str) -> float:
    """sacct's `[D-][HH:]MM:SS` duration -> seconds; '' or unknown -> 0."""
    text = text.strip()
    m = re.fullmatch(r"(?:([0-9]+)-)?(?:([0-9]+):)?([0-9]+):([0-9]+)", text)
    if not m:
        return 0.0
    d, h, mi, sec = (int(g) if g else 0 for g in m.groups())
    return float(((d * 24 + h) * 60 + mi) * 60 + sec)


class _Ambiguous(SlurmError):
    """The parsable output cannot be split unambiguously (a comment holds the delimiter)."""


def parse_parsable(text: str, delimiter: str = DELIMITER, columns: Sequence[str] = COLUMNS) -> list[JobFacts]:
    """Rows of `sacct -X -P -n --delimiter=D -o <columns>` with SLURM_TIME_FORMAT=%s.

    Only free-text columns may contain newlines: the newline that ends a row is the last one
    before the next row's first field, a job id. A row must close with its own JobIDRaw and
    no id may repeat; otherwise a field held the delimiter (by accident or to forge a row).
    """
    if columns[0] != "JobIDRaw" or columns[-1] != "JobIDRaw":
        raise SlurmError("parse_parsable needs JobIDRaw as the first and the last column")
    n = len(columns)
    parts = text.split(delimiter)
    rows: list[list[str]] = []
    cur = [parts[0]]
    for part in parts[1:]:
        if len(cur) == n - 1:
            last, _, nxt = part.rpartition("\n")
            cur.append(last)
            rows.append(cur)
            cur = [nxt]
        else:
            cur.append(part)
    ids = [r[0] for r in rows]
    if (cur != [""] or any(not re.fullmatch(r"[0-9]+", r[0]) or r[-1] != r[0] for r in rows)
            or len(set(ids)) != len(ids)):
        raise _Ambiguous(f"sacct output does not split into rows of {n} fields; a field may hold the delimiter")
    col = {name: i for i, name in reversed(list(enumerate(columns)))}  # first occurrence of a name
    return [_facts_from_row({name: r[i] for name, i in col.items()}) for r in rows]


def _facts_from_row(r: dict[str, str]) -> JobFacts:
    cpus, gpus = tres_counts(r.get("AllocTRES", ""))
    return _facts(
        mem_gb=tres_mem_gb(r.get("AllocTRES", "")),
        job_id=r["JobIDRaw"], display_id=r.get("JobID", ""), state=r.get("State", ""),
        start=_epoch(r.get("Start", "")), end=_epoch(r.get("End", "")), nodelist=r.get("NodeList", ""),
        cpus=cpus, gpus=gpus, partition=r.get("Partition", ""), account=r.get("Account", ""),
        user=r.get("User", ""), cluster=r.get("Cluster", ""), admin_comment=r.get("AdminComment", ""),
        system_comment=r.get("SystemComment", ""), comment=r.get("Comment", ""),
    )


def parse_json(text: str) -> list[JobFacts]:
    """Jobs of `sacct --json -X`, any data parser from v0.0.38 (22.05) to v0.0.45 (26.05).

    Field names are stable across them; the shapes are not: since v0.0.40 `state.current`
    is a list of flags and optional integers are `{"set", "infinite", "number"}` objects;
    a never-started job's `time.start` is NO_VAL (4294967294) or 0. See `_int`.
    """
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise SlurmError(f"sacct --json printed invalid JSON: {exc}") from None
    except RecursionError:
        raise SlurmError("sacct --json printed JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise SlurmError("sacct --json printed no JSON object")
    errors = doc.get("errors") or []
    if errors:
        errors = errors if isinstance(errors, list) else [errors]
        raise SlurmError("sacct --json reported: " + "; ".join(_json_error(e) for e in errors)[:2000])
    jobs = doc.get("jobs") or []
    if not isinstance(jobs, list):
        raise SlurmError("sacct --json: 'jobs' is not a list")
    out = []
    for j in jobs:
        try:
            out.append(_facts_from_json(j))
        except (AttributeError, KeyError, TypeError, ValueError, OverflowError, RecursionError) as exc:
            job = j.get("job_id", "?") if isinstance(j, dict) else "?"
            raise SlurmError(f"sacct --json: job {str(job)[:40]}: unexpected shape "
                             f"({type(exc).__name__}: {str(exc)[:200]})") from None
    return out


NO_VAL = 0xFFFFFFFE
"""Slurm's NO_VAL (4294967294): "not set"; INFINITE is 0xFFFFFFFF. Both mean no value here."""


def _int(value: Any) -> int | None:
    """An integer in any data parser's spelling; None when unset, infinite or NO_VAL.

    v0.0.38: plain int or null. v0.0.39+: `{"set": bool, "infinite": bool, "number": int}`.
    """
    if isinstance(value, dict):
        if not value.get("set", True) or value.get("infinite"):
            return None
        value = value.get("number")
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float) and not value.is_integer():  # also NaN and inf (OverflowError in int())
        raise ValueError(f"not a whole number: {value!r}")
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError(f"not a whole number: {value[:40]!r}")
    if not isinstance(value, (int, float, str)):
        raise TypeError(f"not a number: {type(value).__name__}")
    number = int(value)
    return None if number in (NO_VAL, NO_VAL + 1) else number


def _job_id(value: Any) -> str:
    """A job id: a positive whole number (null, NO_VAL or 0 is no job to write to)."""
    number = _int(value)
    if number is None or number <= 0:
        raise ValueError(f"job_id {str(value)[:40]!r} is not a job id")
    return str(number)


def _json_time(value: Any) -> float | None:
    """A time of the job: epoch seconds, or None for unset (NO_VAL, 0)."""
    number = _int(value)
    return None if not number else _checked_epoch(number, str(value))


def _str(value: Any) -> str:
    """A string field; null (unset) becomes "". A list or mapping is no string field (TypeError)."""
    if value is None:
        return ""
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"expected a string, got {type(value).__name__}")


def _json_state(state: Any) -> str:
    """`{"current": "COMPLETED"}` (v0.0.38) or `{"current": ["COMPLETED", ...]}` (v0.0.40+) -> COMPLETED."""
    current = state.get("current", "") if isinstance(state, dict) else state
    if isinstance(current, list):
        current = current[0] if current else ""
    return _str(current)


def _json_error(e: Any) -> str:
    if isinstance(e, dict):
        return ", ".join(str(e[k]) for k in ("source", "description", "error") if e.get(k))
    return str(e)


def _json_tres(allocated: Any) -> str:
    items = []
    for x in allocated or []:
        count = _int(x.get("count"))
        if count is not None:
            items.append(f"{x['type']}{'/' + x['name'] if x.get('name') else ''}={count}")
    return ",".join(items)


def _facts_from_json(j: dict[str, Any]) -> JobFacts:
    t = j.get("time") or {}
    tres = _json_tres((j.get("tres") or {}).get("allocated"))
    cpus, gpus = tres_counts(tres)
    comments = j.get("comment") or {}
    return _facts(
        mem_gb=tres_mem_gb(tres),
        job_id=_job_id(j["job_id"]), display_id=_display_id(j), state=_json_state(j.get("state")),
        start=_json_time(t.get("start")), end=_json_time(t.get("end")), nodelist=_str(j.get("nodes")),
        cpus=cpus, gpus=gpus, partition=_str(j.get("partition")), account=_str(j.get("account")),
        user=_str(j.get("user")), cluster=_str(j.get("cluster")), admin_comment=_str(comments.get("administrator")),
        system_comment=_str(comments.get("system")), comment=_str(comments.get("job")),
    )


def _display_id(j: dict[str, Any]) -> str:
    array, het = j.get("array") or {}, j.get("het") or {}
    array_job, task = _int(array.get("job_id")), _int(array.get("task_id"))
    if array_job and task is not None:
        return f"{array_job}_{task}"
    het_job, offset = _int(het.get("job_id")), _int(het.get("job_offset"))
    if het_job and offset is not None:
        return f"{het_job}+{offset}"
    return _job_id(j["job_id"])


def _facts(*, job_id: str, display_id: str, state: str, start: float | None, end: float | None, nodelist: str,
           cpus: int, gpus: int, partition: str, account: str, user: str, cluster: str, admin_comment: str,
           system_comment: str, comment: str, mem_gb: float = 0.0) -> JobFacts:
    nodes = () if nodelist.strip().lower() in NO_NODES else expand(nodelist)
    if not nodes:
        start = None  # cancelled before it ran: sacct shows Start == End == the cancel time
    unknown = bool(nodes) and cpus <= 0  # an empty AllocTRES (seen in real sacct output): never 0 CPUs
    job = Job(job_id=job_id, start=float(start) if start is not None else None,
              end=float(end) if end is not None else None, nodes=nodes,
              cpus=() if unknown else even_split(cpus, len(nodes)), gpus=gpus, partition=partition, account=account,
              user=user, display_id=display_id, mem_gb=mem_gb,
              warnings=(f"AllocTRES has no CPU count: charged whole nodes ({len(nodes)})",) if unknown else ())
    return JobFacts(job=job, state=state.split(" ")[0].upper(), admin_comment=admin_comment,
                    system_comment=system_comment, comment=comment, cluster=cluster)


def _epoch(text: str) -> float | None:
    text = text.strip()
    if text.lower() in ("", "unknown", "none", "0"):
        return None
    if not re.fullmatch(r"[0-9]+", text):
        raise SlurmError(f"sacct time {text[:40]!r} is not epoch seconds; is SLURM_TIME_FORMAT=%s honoured?")
    return _checked_epoch(int(text) if len(text) <= 12 else EPOCH_MAX + 1, text)  # int() of 5,000 digits raises


def _checked_epoch(number: int, text: str) -> float:
    """`number` as a time, if it is one carbond can store and print (1970 to 9999 UTC)."""
    if not 0 <= number <= EPOCH_MAX:
        raise SlurmError(f"sacct time {text[:40]!r} is outside 1970-01-01 to 9999-12-31 UTC")
    return float(number)


def parse_version(text: str) -> tuple[int, ...]:
    """`slurm-wlm 22.05.8` / `slurm 23.02.1` -> (22, 5, 8)."""
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        raise SlurmError(f"cannot read a Slurm version from {text.strip()!r}")
    return tuple(int(g) for g in m.groups() if g is not None)


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(epoch)))


def _text(data: bytes | str | None) -> str:
    """Command output as str; undecodable bytes kept (surrogateescape) so a rewrite is byte-exact."""
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode("utf-8", "surrogateescape")
    return data
