"""One exception tree, so the CLI can print one line and the daemon can decide what to retry."""


class CarbondError(Exception):
    """Root of every error carbond raises on purpose."""


class ConfigError(CarbondError):
    """The configuration is invalid; carries every problem found, not just the first."""

    def __init__(self, problems: list[str], path: str = "") -> None:
        self.problems = list(problems)
        where = f"{path}: " if path else ""
        super().__init__(where + "invalid configuration:\n  " + "\n  ".join(self.problems))


class HostlistError(CarbondError):
    """A Slurm hostlist expression that Slurm itself would reject."""


class TimeFormatError(CarbondError):
    """A time that cannot be read unambiguously."""


class JobInputError(CarbondError):
    """A job description (sacct line, spool record) that cannot be used."""


class VictoriaError(CarbondError):
    """VictoriaMetrics could not be queried; the message names the URL."""


class IntensityUnavailable(CarbondError):
    """No grid intensity for a period, neither fresh nor cached; names the URL."""


class SlurmError(CarbondError):
    """A Slurm command failed; the message carries the command and its stderr."""

    retryable = True
    """Whether trying again may help (False: refused for good, e.g. no Operator grant)."""


class SlurmStopping(SlurmError):
    """A write not started because the daemon is stopping: not the job's fault, done at the next start."""


class SpoolUnavailable(CarbondError):
    """The spool directory cannot be listed (missing, permissions, I/O): an outage, not a record's fault."""
