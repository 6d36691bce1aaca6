"""The `slurm` fixture: one real single-host Slurm cluster (scripts/slurm-testbed) per session.

The testbed (munge, MariaDB, slurmdbd, slurmctld, slurmd n1..n3) lives in $CARBOND_TESTBED_DIR
(default /tmp/carbond-testbed) and is reused if already up, so repeated runs start in a second.
$CARBOND_SLURM picks the Slurm series: `host` (default: Debian 12's 22.05), or a Debian suite
from SUITES (trixie: 24.11, sid: 26.05), run from a root that scripts/debian-root builds once
under $CARBOND_ROOTS (default /var/cache/carbond/roots); `make test` runs the Slurm tests once
per series. Commands go to that series' clients (SlurmTestbed.bin, first on the env's PATH).
Several pytest sessions may share it at once: each holds a lease (DIR/leases/<pid>) and the
last one to leave stops it, only if a test session started it and $CARBOND_TESTBED_KEEP was not 1.
A testbed that fails to start is a fixture *error* carrying the daemons' log tail, never a
skip: CI must not go green without having run the Slurm tests.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TESTBED = REPO / "scripts" / "slurm-testbed"
DEFAULT_DIR = "/tmp/carbond-testbed"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DELIM = "\x1f"  # sacct field delimiter no job name or comment will contain by accident
START_TIMEOUT = 300.0
DEBIAN_ROOT = REPO / "scripts" / "debian-root"
DEFAULT_ROOTS = "/var/cache/carbond/roots"


@dataclass(frozen=True)
class Suite:
    """A Slurm series as Debian ships it, and how the testbed must run it."""

    name: str
    series: str
    """Slurm series expected from this suite (sid moves: the testbed reports the real one)."""
    db: str = "root"
    """Where MariaDB runs: `root`, or `host` where the root's server and Slurm disagree."""


SUITES = {
    "host": Suite("host", "22.05"),
    "trixie": Suite("trixie", "24.11"),
    # sid's slurmdbd 26.05.5 fails its first query against sid's MariaDB 11.8.9 (error 5027,
    # "Number of columns in result (=1) set execeeds maximum allowed number of columns (=0)")
    # and works against the host's MariaDB 10.11 (see scripts/slurm-testbed).
    "sid": Suite("sid", "26.05", db="host"),
}


def selected_suite() -> Suite:
    name = os.environ.get("CARBOND_SLURM") or "host"
    if name not in SUITES:
        raise RuntimeError(f"CARBOND_SLURM={name!r}: known suites are {', '.join(SUITES)}")
    return SUITES[name]


def root_for(suite: Suite, timeout: float = 1800.0) -> str | None:
    """The suite's Debian root (built by scripts/debian-root if missing); None for the host."""
    if suite.name == "host":
        return None
    roots = os.environ.get("CARBOND_ROOTS") or DEFAULT_ROOTS
    proc = subprocess.run(  # noqa: S603 - fixed argument list, no shell
        [str(DEBIAN_ROOT), suite.name, roots], env=_base_env({}), capture_output=True, text=True,
        timeout=timeout, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{DEBIAN_ROOT} {suite.name} {roots} failed with exit {proc.returncode}:\n{proc.stderr}")
    return proc.stdout.strip().splitlines()[-1]


class SlurmCommandError(AssertionError):
    """A Slurm client command failed; the message names the command, exit status and stderr."""


def _base_env(exports: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment without stray SLURM_* (we may run inside a job), plus the testbed's.

    The testbed's client directory (CARBOND_SLURM_BIN) comes first on PATH, so `sacct` is the
    testbed series' sacct.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    path = env.get("PATH", "")
    env["PATH"] = f"{path}:{SYSTEM_PATH}" if path else SYSTEM_PATH
    env.update(exports)
    bin_dir = exports.get("CARBOND_SLURM_BIN")
    if bin_dir and bin_dir != "/usr/bin":
        env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return env


def _parse_exports(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line[len("export ") :].partition("=")
            out[key] = value
    return out


@dataclass
class SlurmTestbed:
    """Handle on the running testbed; every command runs with its SLURM_CONF."""

    dir: Path
    env: dict[str, str]
    spool_dir: Path
    started: bool
    """True if this handle's `start` brought the daemons up (rather than joining them)."""

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def start(cls, directory: Path, timeout: float = START_TIMEOUT, root: str | None = None,
              db: str = "root", slurm_user: str = "root") -> SlurmTestbed:
        """Start (or join) the testbed in `directory`, of `root`'s Slurm if given (else the host's).

        slurm_user="slurm": SlurmUser=slurm and an Operator `carbond` user (host mode only).
        Raises RuntimeError with the log tail.
        """
        t0 = time.monotonic()
        extra = {"SLURM_TESTBED_ROOT": root, "SLURM_TESTBED_DB": db} if root else {}
        extra["SLURM_TESTBED_USER"] = slurm_user
        proc = subprocess.run(  # noqa: S603 - fixed argument list, no shell
            [str(TESTBED), "start", str(directory)],
            # n3 gets 2 GRES GPUs on a cold start (test_gpu_testbed), host and Debian roots alike (the
            # device files live under the testbed dir, which is bound into the root); "" leaves them out
            env={**_base_env({"CARBOND_TESTBED_GPUS": os.environ.get("CARBOND_TESTBED_GPUS", "2")}), **extra},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{TESTBED} start {directory} failed with exit {proc.returncode} after "
                f"{time.monotonic() - t0:.1f}s:\n{proc.stderr}{proc.stdout}"
            )
        exports = _parse_exports(proc.stdout)
        if "SLURM_CONF" not in exports:
            raise RuntimeError(f"{TESTBED} start {directory} printed no SLURM_CONF:\n{proc.stdout}")
        started = any(line.startswith("# carbond testbed: started") for line in proc.stdout.splitlines())
        return cls(
            dir=directory,
            env=_base_env(exports),
            spool_dir=Path(exports.get("CARBOND_SPOOL_DIR", str(directory / "spool"))),
            started=started,
        )

    def stop(self) -> None:
        proc = subprocess.run(  # noqa: S603 - fixed argument list, no shell
            [str(TESTBED), "stop", str(self.dir)],
            env=_base_env({}),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{TESTBED} stop {self.dir} failed:\n{proc.stderr}{proc.stdout}")

    @property
    def conf(self) -> Path:
        return Path(self.env["SLURM_CONF"])

    @property
    def version(self) -> tuple[int, ...]:
        """The running series, e.g. (24, 11, 5)."""
        return tuple(int(x) for x in self.env.get("CARBOND_SLURM_VERSION", "0").split("."))

    def bin(self, command: str) -> str:
        """Absolute path of a Slurm client of this testbed's series (`sacct`, `sacctmgr`, ...)."""
        return os.path.join(self.env.get("CARBOND_SLURM_BIN") or "/usr/bin", command)

    def log_tail(self, name: str = "slurmctld", lines: int = 30) -> str:
        """Last lines of DIR/log/<name>.log, for failure messages."""
        path = self.dir / "log" / f"{name}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(cannot read {path}: {exc})"

    # ------------------------------------------------------------------ commands

    def run(
        self,
        args: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60.0,
        input: str | None = None,
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command (argument list) with the testbed's environment (+ `env` overrides)."""
        full_env = {**self.env, **(env or {})}
        proc = subprocess.run(  # noqa: S603 - argument list, no shell
            list(args),
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            cwd=str(cwd) if cwd else None,
            check=False,
        )
        if check and proc.returncode != 0:
            raise SlurmCommandError(
                f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc

    def sbatch(self, args: Sequence[str], script: str = "sleep 1") -> str:
        """Submit `script` (a shebang is added if missing) and return the job id.

        Runs in DIR/jobs so slurm-%j.out files land there, not in the working tree.
        """
        if not script.startswith("#!"):
            script = "#!/bin/sh\n" + script
        if not script.endswith("\n"):
            script += "\n"
        jobs_dir = self.dir / "jobs"
        jobs_dir.mkdir(exist_ok=True)
        out = self.run(["sbatch", "--parsable", *args], input=script, cwd=jobs_dir).stdout.strip()
        job_id = out.split(";")[0]
        if not job_id.isdigit():
            raise SlurmCommandError(f"sbatch {' '.join(args)} printed no job id: {out!r}")
        return job_id

    def job_states(self, job_id: str) -> list[str]:
        """Current state of every record of `job_id` (array tasks: one each); [] if unknown yet.

        Asks slurmctld first; once it has purged the job (MinJobAge) falls back to sacct.
        """
        proc = self.run(["scontrol", "-o", "show", "job", str(job_id)], check=False)
        if proc.returncode == 0:
            states = [
                field.split("=", 1)[1]
                for line in proc.stdout.splitlines()
                for field in line.split()
                if field.startswith("JobState=")
            ]
            if states:
                return states
        proc = self.run(["sacct", "-X", "-n", "-P", "-o", "State", "-j", str(job_id)], check=False)
        return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]

    def wait_state(self, job_id: str, states: str | Iterable[str], timeout: float = 60.0) -> str:
        """Wait until every record of the job is in one of `states`; return that state.

        Raises AssertionError naming the job, the last states seen and the slurmctld log tail.
        """
        wanted = {states} if isinstance(states, str) else set(states)
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while True:
            seen = self.job_states(job_id)
            if seen and all(s in wanted for s in seen):
                return seen[0]
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"job {job_id}: states {seen or 'unknown'} after {timeout:.0f}s, wanted {sorted(wanted)}\n"
                    f"--- slurmctld.log ---\n{self.log_tail()}"
                )
            time.sleep(0.3)

    def sacct_rows(self, job_id: str, fields: Sequence[str], allocations: bool = True) -> list[dict[str, str]]:
        """sacct rows for the job (epoch times via SLURM_TIME_FORMAT=%s), one dict per row.

        `fields` are sacct field names ("%N" widths are dropped); dict keys are the names given.
        A value containing a newline (a job name can) is rejoined onto its row.
        """
        names = [f.split("%")[0] for f in fields]
        args = ["sacct", "-n", "-P", f"--delimiter={DELIM}", "-o", ",".join(names), "-j", str(job_id)]
        if allocations:
            args.insert(1, "-X")
        text = self.run(args, env={"SLURM_TIME_FORMAT": "%s"}).stdout
        rows: list[dict[str, str]] = []
        pending = ""
        for line in text.split("\n"):
            pending = f"{pending}\n{line}" if pending else line
            if pending.count(DELIM) >= len(names) - 1 and pending:
                rows.append(dict(zip(fields, pending.split(DELIM), strict=False)))
                pending = ""
        return rows

    def sacct_fields(self, job_id: str, fields: Sequence[str]) -> dict[str, str]:
        """One job's sacct allocation row as {field: value}; AssertionError if sacct lacks it."""
        rows = self.sacct_rows(job_id, ["JobID", "JobIDRaw", *fields])
        match = [r for r in rows if str(job_id) in (r["JobID"], r["JobIDRaw"])] or (rows if len(rows) == 1 else [])
        if not match:
            raise AssertionError(f"sacct has no single row for job {job_id}: {rows}")
        return {f: match[0][f] for f in fields}

    def wait_sacct(
        self, job_id: str, fields: Sequence[str], predicate: Callable[[dict[str, str]], bool], timeout: float = 30.0
    ) -> dict[str, str]:
        """Poll sacct_fields until predicate(row) is true (slurmdbd lags slurmctld slightly)."""
        deadline = time.monotonic() + timeout
        last: dict[str, str] | str = "no row"
        while time.monotonic() < deadline:
            try:
                last = self.sacct_fields(job_id, fields)
                if predicate(last):
                    return last
            except AssertionError as exc:
                last = str(exc)
            time.sleep(0.3)
        raise AssertionError(f"job {job_id}: sacct never satisfied the condition in {timeout:.0f}s; last: {last}")


@contextlib.contextmanager
def _lease_lock(directory: Path) -> Iterator[Path]:
    """Serialise joining and leaving between pytest sessions; yields the leases folder."""
    leases = directory / "leases"
    leases.mkdir(parents=True, exist_ok=True)
    with open(directory / ".fixture.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield leases


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire(directory: Path, suite: Suite | None = None, slurm_user: str = "root") -> SlurmTestbed:
    """Start or join the testbed (of `suite`, default $CARBOND_SLURM) and take a lease on it."""
    suite = suite or selected_suite()
    root = root_for(suite)
    with _lease_lock(directory) as leases:
        testbed = SlurmTestbed.start(directory, root=root, db=suite.db, slurm_user=slurm_user)
        if testbed.started and os.environ.get("CARBOND_TESTBED_KEEP") != "1":
            (leases / "started-by-tests").touch()
        (leases / str(os.getpid())).touch()
    return testbed


def release(testbed: SlurmTestbed) -> None:
    """Drop this process's lease; the last user stops a testbed that a test session started."""
    with _lease_lock(testbed.dir) as leases:
        (leases / str(os.getpid())).unlink(missing_ok=True)
        others = []
        for lease in leases.iterdir():
            if lease.name.isdigit():
                if _alive(int(lease.name)):
                    others.append(lease.name)
                else:
                    lease.unlink(missing_ok=True)  # a session that died without cleaning up
        flag = leases / "started-by-tests"
        if not others and flag.exists() and os.environ.get("CARBOND_TESTBED_KEEP") != "1":
            testbed.stop()
            flag.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmTestbed]:
    """The shared Slurm testbed (see module docstring)."""
    testbed = acquire(Path(os.environ.get("CARBOND_TESTBED_DIR") or DEFAULT_DIR))
    try:
        yield testbed
    finally:
        release(testbed)


def pytest_report_header(config) -> str:
    suite = selected_suite()
    where = os.environ.get("CARBOND_TESTBED_DIR") or DEFAULT_DIR
    return f"slurm testbed: CARBOND_SLURM={suite.name} (Slurm {suite.series} expected) in {where}"
