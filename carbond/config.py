"""Configuration: read YAML once, validate everything, hand out frozen dataclasses.

Every problem (unknown key, wrong type, missing value, unreadable secret file) is collected
and reported together, each naming its dotted key, so an administrator fixes the file in one go.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import reprlib
import stat
import types
import typing
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, HostlistError

log = logging.getLogger("carbond.config")

DEFAULT_PATH = "/etc/carbond/carbond.yaml"
MAX_FILE_BYTES = 1 << 20
"""A configuration file is a few kilobytes; a larger one is refused before YAML parses it."""
MAX_REGEX_CHARS = 1000
"""node_regex is a short pattern; a longer one is refused before it is compiled."""
MAX_INT = 2**53
"""Whole numbers beyond this are not exact as floats (the engine's arithmetic): refused."""
WATCHDOG_SECONDS = 60.0
"""WatchdogSec of systemd/carbond.service; a Slurm call must return within half of it."""
DEFAULT_POWER_QUERY = 'amperageProbeReading{amperageProbeLocationName="System Board Pwr Consumption"}'
KINDS = ("gauge", "counter")
"""What a power series holds: watts, or joules since some start."""
PROVIDERS = ("uk-carbon-intensity", "electricitymaps", "prometheus", "csv", "constant")
COMMENT_FIELDS = ("admin_comment", "system_comment", "comment")
ATTRIBUTIONS = ("cpus", "exclusive")
IDLE_POLICIES = ("report", "spread")


@dataclass(frozen=True)
class BasicAuth:
    username: str
    password_file: str


@dataclass(frozen=True)
class VictoriaConfig:
    url: str = "http://127.0.0.1:8428"
    query: str = DEFAULT_POWER_QUERY
    node_label: str = "alias"
    node_regex: str | None = None
    """Extracts the Slurm node name from the node label's value: a regex with a group named `node`
    (e.g. `^(?P<node>[^.:]+)` maps instance="n1.cluster:9290" to n1); unset, the value is the name."""
    scale: float = 1.0
    """Watts per unit of the series (0.001 for milliwatts); joules per unit for a counter."""
    kind: str = "gauge"
    """`gauge`: the series is power; `counter`: energy since some start (RAPL, Redfish energy),
    read exactly between its samples (resets handled)."""
    bearer_token_file: str | None = None
    basic_auth: BasicAuth | None = None
    tenant: str | None = None
    ca_file: str | None = None
    timeout: float = 20.0
    chunk_seconds: int = 86400
    """Longest time span one export request covers; longer windows are split."""
    max_nodes_per_request: int = 500
    """Most nodes named in one request's selector, to keep URLs and responses bounded."""
    max_watts: float = 100_000.0
    """A node's power sample above this (or 10x its class' max_watts) is dropped and counted."""
    max_line_bytes: int = 16 << 20
    """Largest export line (one series of one chunk) or JSON answer; larger is an outage."""
    max_response_bytes: int = 512 << 20
    """Largest export answer; larger is an outage (lower chunk_seconds or max_nodes_per_request)."""


@dataclass(frozen=True)
class IntensityConfig:
    provider: str = "uk-carbon-intensity"
    url: str | None = None
    region: str | None = None
    zone: str | None = None
    token_file: str | None = None
    query: str | None = None
    path: str | None = None
    value: float | None = None
    timeout: float = 20.0
    refresh_seconds: int = 1800
    max_response_bytes: int = 16 << 20
    """Largest API answer; larger is an outage of the provider."""
    max_g_per_kwh: float = 2000.0
    """Largest plausible intensity: a provider answering more (or less than 0) is an outage."""
    """A provisional (forecast or under-a-day-old) cache entry is re-fetched at most this often."""


@dataclass(frozen=True)
class TresWeights:
    """Watts per allocated CPU, GPU and GB of memory: splits a node's power without per-GPU series."""

    cpu: float = 1.0
    gpu: float = 0.0
    mem_gb: float = 0.0


@dataclass(frozen=True)
class NodeClass:
    match: str
    cpus: int | None = None
    idle_watts: float | None = None
    max_watts: float | None = None
    name: str | None = None
    """Shown in reports and taken by `carbond estimate --nodes-class` (default: `match`)."""
    gpus: int | None = None
    mem_gb: float | None = None
    weights: TresWeights | None = None

    @property
    def label(self) -> str:
        return self.name or self.match


@dataclass(frozen=True)
class GpuConfig:
    """Per-GPU power series in VictoriaMetrics (dcgm-exporter by default)."""

    query: str = "DCGM_FI_DEV_POWER_USAGE"
    node_label: str = "Hostname"
    gpu_label: str = "gpu"
    job_label: str | None = None
    """A label naming the job on the series (dcgm-exporter's `hpc_job`), when GPUs are not mapped by index."""
    unit_factor: float = 1.0
    kind: str = "gauge"
    """`counter` for DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION (mJ since boot: unit_factor 0.001)."""
    """Multiplies the samples into watts: 0.001 for `nvidia_gpu_power_usage_milliwatts`."""


@dataclass(frozen=True)
class EmbodiedConfig:
    g_per_node_hour: float = 0.0


@dataclass(frozen=True)
class SlurmConfig:
    comment_field: str = "admin_comment"
    sacct: str = "sacct"
    sacctmgr: str = "sacctmgr"
    concurrency: int = 16
    """sacctmgr calls in flight at once: each has ~0.25 s fixed latency but they overlap freely."""
    retry_seconds: int = 3600
    """How long a job is retried for a reason of its own (slurmdbd unaware of it) before dead-lettering.
    Time while a whole service is down (sacct failing, VictoriaMetrics down) does not count."""
    timeout: float = 20.0
    """Seconds any one sacct/sacctmgr/squeue call may take; must stay under WatchdogSec/2."""
    reconcile_seconds: int = 300
    """How often slurmdbd is asked for ended jobs that never reached the spool (0: never)."""
    reconcile_lag_seconds: int = 600
    """A job is reconciled only this long after its end, so its spool record has had time to arrive."""
    suspend_poll_seconds: float = 5.0
    """How often squeue is asked which jobs are suspended, to record suspend intervals (0: never)."""
    write_energy_tres: bool = False
    """Slurm 25.11+: also set the job's energy TRES to the measured joules (replaces Slurm's value)."""


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = "127.0.0.1:9847"
    per_user: bool = False
    max_label_values: int = 500
    """Distinct values of each of the partition, account and user labels; the rest are `_other`."""


@dataclass(frozen=True)
class Config:
    cluster: str = ""
    state_dir: str = "/var/lib/carbond"
    spool_dir: str = "/var/spool/carbond"
    pue: float = 1.0
    attribution: str = "cpus"
    max_gap: float = 300.0
    """Longest gap between two power samples that is bridged by interpolation."""
    settle_seconds: float = 90.0
    """How long the daemon waits after a job's end for a power sample past it."""
    victoriametrics: VictoriaConfig = field(default_factory=VictoriaConfig)
    intensity: IntensityConfig = field(default_factory=IntensityConfig)
    nodes: tuple[NodeClass, ...] = ()
    embodied: EmbodiedConfig = field(default_factory=EmbodiedConfig)
    gpu: GpuConfig | None = None
    idle: str = "report"
    """report: energy no job carries stays unattributed; spread: it is shared among the node's jobs."""
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    source: str = ""

    def node_class(self, node: str) -> NodeClass | None:
        """The first `nodes` entry whose hostlist contains `node` (Slurm's first-match rule)."""
        for cls, names in _node_index(self.nodes):
            if node in names:
                return cls
        return None


_NODE_INDEX_CACHE: dict[tuple[NodeClass, ...], list[tuple[NodeClass, frozenset[str]]]] = {}


def _node_index(classes: tuple[NodeClass, ...]) -> list[tuple[NodeClass, frozenset[str]]]:
    from .hostlist import expand

    if classes not in _NODE_INDEX_CACHE:
        _NODE_INDEX_CACHE[classes] = [(c, frozenset(expand(c.match))) for c in classes]
    return _NODE_INDEX_CACHE[classes]


def read_secret(path: str | None, env: str | None = None) -> str | None:
    """A secret from the environment variable `env` or the file `path`; never logged."""
    if env and os.environ.get(env):
        return os.environ[env].strip()
    if not path:
        return None
    return Path(path).read_text(encoding="utf-8").strip()


def load(path: str | None = None, sections: Collection[str] | None = None) -> Config:
    """Load and validate; `path` falls back to $CARBOND_CONFIG, then the packaged default.

    With `sections` (top-level keys), only those are validated and only their files opened:
    `carbond show` needs Slurm's settings, not the daemon's secrets. The others keep defaults.
    """
    path = path or os.environ.get("CARBOND_CONFIG") or DEFAULT_PATH
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"cannot read the file: {exc.strerror or exc}"], path) from None
    except ValueError as exc:  # a NUL in the path
        raise ConfigError([f"cannot read the file: {exc}"], repr(path)) from None
    return from_bytes(raw, path, sections)


def from_bytes(raw: bytes, source: str = "", sections: Collection[str] | None = None) -> Config:
    """Parse and validate a configuration file's bytes: UTF-8 YAML of at most MAX_FILE_BYTES."""
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError([f"the file is larger than {MAX_FILE_BYTES} bytes"], source)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"not UTF-8 text (byte {exc.start} is {raw[exc.start:exc.start + 1]!r})"], source) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_problem(exc)], source) from None
    except RecursionError:
        raise ConfigError(["not valid YAML: nested too deeply"], source) from None
    except (ValueError, TypeError, OverflowError) as exc:  # a scalar YAML resolves but cannot build (2024-13-45)
        raise ConfigError([f"not valid YAML: {type(exc).__name__}: {exc}"], source) from None
    return from_mapping(data if data is not None else {}, source, sections)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """`not valid YAML at line L, column C: what` (the file name is the ConfigError's prefix)."""
    mark = getattr(exc, "problem_mark", None)
    what = " ".join(str(x) for x in (getattr(exc, "context", None), getattr(exc, "problem", None)) if x)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"not valid YAML{where}: {what or exc}"


def from_mapping(data: Any, source: str = "", sections: Collection[str] | None = None) -> Config:
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError(["the top level must be a mapping of keys"], source)
    if sections is not None:
        data = {k: v for k, v in data.items() if k in sections}  # the rest: defaults, which open no file
    cfg = _build(Config, data, "", problems)
    if cfg is not None:
        problems.extend(_check(cfg))
    if problems:
        raise ConfigError(problems, source)
    assert cfg is not None
    return dataclasses.replace(cfg, source=source)


def dump(cfg: Config) -> str:
    """The effective configuration as YAML (`check-config --print`), URL passwords masked."""
    data = _plain(dataclasses.asdict(cfg))
    data.pop("source", None)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def _plain(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _plain(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, str) and key == "url":
        return mask_url(value)
    return value


def mask_url(url: str) -> str:
    """`url` with any user name and password replaced by `***` (either may be a token), for
    output and logs. Never raises: what precedes the last `@` of the authority (the part after
    `scheme:` and its slashes, up to the first `/`, `?` or `#`) is masked, URL or not."""
    m = _URL_PARTS.match(url)
    assert m is not None  # every group is optional
    scheme, slashes, authority, rest = m.groups()
    if "@" not in authority:
        return url
    return f"{scheme or ''}{slashes}***@{authority.rpartition('@')[2]}{rest}"


_URL_PARTS = re.compile(r"((?:[A-Za-z][A-Za-z0-9+.-]*:)(?=/))?(/*)([^/?#]*)(.*)", re.S)


def _build(cls: type, data: Any, prefix: str, problems: list[str]) -> Any:
    """Build dataclass `cls` from a mapping, appending problems instead of raising.

    Returns None only when a required key is missing; every problem found is in `problems`.
    """
    if not isinstance(data, dict):
        problems.append(f"{prefix.rstrip('.') or '(top level)'}: expected a mapping, got {_kind(data)}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    for key in data:
        if key not in fields:
            shown = key if isinstance(key, str) and len(key) <= 80 else _REPR.repr(key)
            problems.append(f"{prefix}{shown}: unknown key (valid: {', '.join(sorted(fields))})")
    values: dict[str, Any] = {}
    missing = False
    for name, f in fields.items():
        key = prefix + name
        if name not in data or data[name] is None:
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required:
                problems.append(f"{key}: missing value")
                missing = True
            continue
        value = _convert(hints[name], data[name], key, problems)
        if value is not _BAD:
            values[name] = value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            missing = True  # reported; no default can stand in for a required value
        # A bad value is already reported; its default stands in, so the rest is still checked.
    return None if missing else cls(**values)


_BAD = object()


def _convert(hint: Any, value: Any, key: str, problems: list[str]) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(inner[0], value, key, problems)
    if origin is tuple:
        if not isinstance(value, list):
            problems.append(f"{key}: expected a list, got {_kind(value)}")
            return _BAD
        item = typing.get_args(hint)[0]
        out = [_convert(item, v, f"{key}[{i}]", problems) for i, v in enumerate(value)]
        return _BAD if any(v is _BAD for v in out) else tuple(out)
    if dataclasses.is_dataclass(hint):
        built = _build(hint, value, key + ".", problems)
        return _BAD if built is None else built
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) <= MAX_INT:
                return value
            problems.append(f"{key}: {value:.3g} is too large (at most {MAX_INT})")
            return _BAD
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value) if not isinstance(value, int) or abs(value) <= MAX_INT else math.inf
            if math.isfinite(number):
                return number
            problems.append(f"{key}: must be a finite number, got {_shown(key, value)}")
            return _BAD
    elif hint is str:
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            text = str(value)
            if (why := _text_problem(text)) is None:
                return text
            problems.append(f"{key}: {why}")
            return _BAD
    problems.append(f"{key}: expected {_TYPE_WORDS.get(hint, hint)}, got {_kind(value)} {_shown(key, value)}")
    return _BAD


def _text_problem(text: str) -> str | None:
    """Why a string cannot be a configuration value: a NUL (no path or argument may hold one)
    or a lone surrogate (not encodable, so neither a file name nor a header)."""
    if "\0" in text:
        return "must not contain a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text"
    return None


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 2, 4, 4, 4, 4


def _shown(key: str, value: Any) -> str:
    """A value for a problem message: bounded (a YAML alias bomb is not printed out), and never
    a URL's credentials."""
    if key.endswith("url"):
        return mask_url(value) if isinstance(value, str) else "(not shown)"
    return _REPR.repr(value)


_TYPE_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _check(cfg: Config) -> list[str]:
    """Semantic checks that need the whole, typed configuration."""
    p: list[str] = []
    if not cfg.pue >= 1.0:
        p.append(f"pue: must be at least 1.0, got {cfg.pue}")
    if cfg.attribution not in ATTRIBUTIONS:
        p.append(f"attribution: must be one of {', '.join(ATTRIBUTIONS)}, got {cfg.attribution!r}")
    if cfg.idle not in IDLE_POLICIES:
        p.append(f"idle: must be one of {', '.join(IDLE_POLICIES)}, got {cfg.idle!r}")
    if cfg.gpu is not None and cfg.gpu.unit_factor <= 0:
        p.append("gpu.unit_factor: must be positive")
    if cfg.gpu is not None and cfg.gpu.kind not in KINDS:
        p.append(f"gpu.kind: must be one of {', '.join(KINDS)}, got {_shown('kind', cfg.gpu.kind)}")
    if cfg.victoriametrics.kind not in KINDS:
        p.append(f"victoriametrics.kind: must be one of {', '.join(KINDS)}, got {_shown('kind', cfg.victoriametrics.kind)}")
    if cfg.max_gap <= 0:
        p.append("max_gap: must be positive")
    if cfg.settle_seconds < 0:
        p.append("settle_seconds: must not be negative")
    if cfg.embodied.g_per_node_hour < 0:
        p.append("embodied.g_per_node_hour: must not be negative")
    vm = cfg.victoriametrics
    p += _url_problems("victoriametrics.url", vm.url)
    if vm.chunk_seconds < 60:
        p.append("victoriametrics.chunk_seconds: must be at least 60")
    if vm.scale <= 0:
        p.append("victoriametrics.scale: must be positive (watts per unit of the series)")
    p += _positive_limits("victoriametrics", vm, ("max_watts", "max_line_bytes", "max_response_bytes"))
    p += _positive_limits("intensity", cfg.intensity, ("max_response_bytes", "max_g_per_kwh"))
    if vm.node_regex is not None:
        if (why := _regex_problem(vm.node_regex)) is not None:
            p.append(f"victoriametrics.node_regex: {why}")
    if vm.max_nodes_per_request < 1:
        p.append("victoriametrics.max_nodes_per_request: must be at least 1")
    p += _secret_problems("victoriametrics.bearer_token_file", vm.bearer_token_file)
    if vm.basic_auth:
        p += _secret_problems("victoriametrics.basic_auth.password_file", vm.basic_auth.password_file)
    if vm.ca_file and not os.access(vm.ca_file, os.R_OK):
        p.append(f"victoriametrics.ca_file: cannot read {vm.ca_file}")
    p += _intensity_problems(cfg.intensity)
    for i, nc in enumerate(cfg.nodes):
        key = f"nodes[{i}]"
        try:
            from .hostlist import expand

            expand(nc.match)
        except HostlistError as exc:
            p.append(f"{key}.match: {exc}")
        if nc.cpus is not None and nc.cpus <= 0:
            p.append(f"{key}.cpus: must be positive")
        for name in ("idle_watts", "max_watts", "gpus", "mem_gb"):
            if (value := getattr(nc, name)) is not None and value < 0:
                p.append(f"{key}.{name}: must not be negative, got {value:g}")
        if nc.weights is not None and min(nc.weights.cpu, nc.weights.gpu, nc.weights.mem_gb) < 0:
            p.append(f"{key}.weights: must not be negative")
        if nc.idle_watts is not None and nc.max_watts is not None and nc.idle_watts > nc.max_watts:
            p.append(f"{key}: idle_watts ({nc.idle_watts}) exceeds max_watts ({nc.max_watts})")
    if cfg.slurm.comment_field not in COMMENT_FIELDS:
        p.append(f"slurm.comment_field: must be one of {', '.join(COMMENT_FIELDS)}, got {cfg.slurm.comment_field!r}")
    if cfg.slurm.concurrency < 1:
        p.append("slurm.concurrency: must be at least 1")
    # One blocking call must return within half the watchdog, or systemd kills a daemon that was
    # only waiting on a slow service: every timeout of a call the loop makes is bounded alike.
    for key, value in (("slurm.timeout", cfg.slurm.timeout), ("victoriametrics.timeout", cfg.victoriametrics.timeout),
                       ("intensity.timeout", cfg.intensity.timeout)):
        if not 0 < value < WATCHDOG_SECONDS / 2:
            p.append(f"{key}: must be above 0 and below WatchdogSec/2 = {WATCHDOG_SECONDS / 2:g} s "
                     f"(systemd/carbond.service has WatchdogSec={WATCHDOG_SECONDS:g}), got {value:g}")
    if cfg.slurm.retry_seconds < 1:
        p.append("slurm.retry_seconds: must be at least 1")
    for key in ("reconcile_seconds", "reconcile_lag_seconds", "suspend_poll_seconds"):
        if getattr(cfg.slurm, key) < 0:
            p.append(f"slurm.{key}: must not be negative")
    if cfg.metrics.max_label_values < 1:
        p.append("metrics.max_label_values: must be at least 1")
    try:
        parse_listen(cfg.metrics.listen)
    except ConfigError as exc:
        p.extend(exc.problems)
    return p


_PORT = re.compile(r"[0-9]{1,5}")
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")


def parse_listen(listen: str) -> tuple[str, int]:
    """`127.0.0.1:9847`, `[::1]:9847`, `host.example:9847`, `:9847` (all interfaces) -> (host, port).

    The one rule for metrics.listen: check-config applies it and `run` binds what it returns,
    so a value that passes the check is one the daemon can at least try to bind.
    """
    import ipaddress

    host, sep, port = listen.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    ok = bool(sep) and _PORT.fullmatch(port) is not None and int(port) <= 65535
    if ok and host:
        try:
            ip = ipaddress.ip_address(host)
            ok = bracketed == (ip.version == 6)
        except ValueError:
            ok = not bracketed and _HOSTNAME.fullmatch(host) is not None
    if not ok:
        shown = _REPR.repr(listen)
        raise ConfigError([f"metrics.listen: expected HOST:PORT (port 0-65535, [addr] for IPv6), got {shown}"])
    return host or "0.0.0.0", int(port)


def _regex_problem(pattern: str) -> str | None:
    """node_regex_problem behind a length bound, with whatever the compiler raises
    (a repetition count it cannot hold is an OverflowError, not a re.error) as a problem."""
    from .node_regex import node_regex_problem

    if len(pattern) > MAX_REGEX_CHARS:
        return f"longer than {MAX_REGEX_CHARS} characters"
    try:
        return node_regex_problem(pattern)
    except (OverflowError, RecursionError, ValueError, re.error) as exc:
        return f"not a valid regular expression: {exc}"


def _intensity_problems(ic: IntensityConfig) -> list[str]:
    p: list[str] = []
    if ic.provider not in PROVIDERS:
        return [f"intensity.provider: must be one of {', '.join(PROVIDERS)}, got {ic.provider!r}"]
    need = {"electricitymaps": ["zone"], "prometheus": ["query"], "csv": ["path"], "constant": ["value"]}
    for key in need.get(ic.provider, []):
        if getattr(ic, key) is None:
            p.append(f"intensity.{key}: required by provider {ic.provider}")
    if ic.provider == "electricitymaps":
        p += _secret_problems("intensity.token_file", ic.token_file, env="CARBOND_ELECTRICITYMAPS_TOKEN")
    if ic.provider == "csv" and ic.path and not os.access(ic.path, os.R_OK):
        p.append(f"intensity.path: cannot read {ic.path}")
    if ic.provider == "constant" and ic.value is not None and ic.value < 0:
        p.append("intensity.value: must not be negative")
    if ic.refresh_seconds < 0:
        p.append("intensity.refresh_seconds: must not be negative")
    if ic.url is not None:
        p += _url_problems("intensity.url", ic.url)
    if ic.provider == "constant" and ic.value is not None and ic.value > ic.max_g_per_kwh:
        p.append(f"intensity.value: above intensity.max_g_per_kwh ({ic.max_g_per_kwh:g})")
    if ic.region is not None and ic.provider == "uk-carbon-intensity":
        r = ic.region
        if not (_REGION_ID.fullmatch(r) and 1 <= int(r) <= 17) and not _OUTWARD_CODE.fullmatch(r):
            p.append(f"intensity.region: expected a region id 1-17 or a postcode outward code, got {r!r}")
    return p


def _url_problems(key: str, url: str) -> list[str]:
    """An http(s) URL with a host and a port 0-65535 (urllib raises on a bad port only when asked
    for it: at the first request), shown without its credentials."""
    from urllib.parse import urlsplit

    if not url.startswith(("http://", "https://")):
        return [f"{key}: must start with http:// or https://, got {mask_url(url)!r}"]
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port out of range or not a number
        if not parts.hostname or any(c.isspace() for c in url):
            raise ValueError("no host name")
    except ValueError as exc:
        return [f"{key}: not a usable URL ({exc}): {mask_url(url)!r}"]
    return []


_REGION_ID = re.compile(r"[0-9]{1,2}")
_OUTWARD_CODE = re.compile(r"[A-Za-z0-9]{2,4}")
"""A UK postcode's outward code (RG10), ASCII only: it is put into the API's URL path."""


def _positive_limits(section: str, obj: Any, keys: tuple[str, ...]) -> list[str]:
    """Size and value limits: finite and above zero (a limit of 0 or NaN would refuse everything)."""
    out = []
    for key in keys:
        value = getattr(obj, key)
        if not (isinstance(value, (int, float)) and value > 0 and value != float("inf")):
            out.append(f"{section}.{key}: must be a finite number above 0, got {value!r}")
    return out


def _secret_problems(key: str, path: str | None, env: str | None = None) -> list[str]:
    """Can the secret at `path` be read, and is it safe? A file others may write is refused
    (they could swap the credential carbond sends); one everybody may read is warned about."""
    if env and os.environ.get(env):
        return []
    if path is None:
        return [f"{key}: required (or set ${env})"] if env else []
    try:
        with open(path, "rb") as fh:
            fh.read(1)
            mode = os.fstat(fh.fileno()).st_mode
    except OSError as exc:
        return [f"{key}: cannot read {path}: {exc.strerror or exc}"]
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        return [f"{key}: {path} is writable by {'others' if mode & stat.S_IWOTH else 'its group'} "
                f"(mode {stat.S_IMODE(mode):04o}): chmod go-w {path}"]
    if mode & stat.S_IROTH:
        log.warning("%s: %s is readable by every user (mode %04o): chmod o-r %s", key, path, stat.S_IMODE(mode), path)
    return []
