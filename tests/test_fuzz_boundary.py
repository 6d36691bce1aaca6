"""Property fuzzing of the parsers and loaders at the trust boundary (issue 16).

Every target gets hostile input (what a user, a forged spool record, a broken or hostile
upstream could hand carbond) and must answer with the project's documented errors only
(a CarbondError subclass; argparse's SystemExit 2 on the command line), never a crash, and
never a wrong output (times in range, secrets masked, round trips exact).

Bounded for `make test`: derandomize=True (hypothesis derives a fixed seed from each test's
name, so CI runs the same cases every time), no example database, a fixed number of cases
per target (FUZZ_EXAMPLES, a few seconds each). CARBOND_FUZZ_EXAMPLES raises it for a long run.
The fixed regressions below each reproduce one crash the fuzzing found.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carbond import config, jobs, slurm, spool, times, token
from carbond.errors import CarbondError, ConfigError, JobInputError, SlurmError, TimeFormatError

FUZZ_EXAMPLES = int(os.environ.get("CARBOND_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))

# ---- what hostile input is made of -----------------------------------------------------------

NASTY_TEXT = ["", " ", "²", "١٢", "٨٠", "\0", "a\0b", "\ud800", "\n", "|", "\x1f", "nan", "inf", "-1", "1e400",
              "9" * 30, "a{99999999999}", "(?P<node>", "(?P<node>a{99999999999})", "127.0.0.1:70000", ":", "[::1]:",
              "http://tok@h/", "http://u:p@[::1", "http://h:99999/", "carbond:co2e_g=1", "x" * 300, "0", "18",
              "n[1-", "n[1-3]", "2024-13-45", "1970-01-01T00:00:00Z", "Unknown", "None"]
NASTY_NUMBERS = [0, -1, 1, 2**31, 2**64, 10**30, 1.5, -0.0, float("nan"), float("inf"), -float("inf"), 1e308]
scalars = st.one_of(
    st.sampled_from(NASTY_TEXT), st.sampled_from(NASTY_NUMBERS), st.booleans(), st.none(),
    st.text(max_size=20), st.integers(), st.floats(),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=8) | st.sampled_from(["match", "url", "cpu", "set", "number"]), inner, max_size=3), max_leaves=8)


def config_mappings(cls: type = config.Config, depth: int = 0) -> st.SearchStrategy:
    """Mappings shaped like `cls` (its keys, sometimes the right types), with hostile leaves."""
    hints = typing.get_type_hints(cls)
    optional = {}
    for f in dataclasses.fields(cls):
        if f.name == "source":
            continue
        optional[f.name] = _for_hint(hints[f.name], depth)
    return st.fixed_dictionaries({}, optional=optional) | values


def _for_hint(hint, depth: int) -> st.SearchStrategy:
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    inner = args[0]
    if typing.get_origin(inner) is tuple:
        return st.lists(config_mappings(typing.get_args(inner)[0], depth + 1), max_size=2) | values
    if dataclasses.is_dataclass(inner):
        return config_mappings(inner, depth + 1)
    good = {bool: st.booleans(), int: st.integers(-5, 100_000), float: st.floats(-10, 1e6),
            str: st.sampled_from(["n[1-2]", "http://127.0.0.1:8428", "http://h:99999/", "http://[::1", "https://u@h:x/", "constant", "127.0.0.1:9847", "cpus",
                                  "report", "admin_comment", "1", "RG10", "^(?P<node>[^.:]+)"])}[inner]
    return good | scalars


def _leaf_keys(cls: type = config.Config, prefix: str = "") -> list[tuple[str, typing.Any]]:
    """Every dotted key of the configuration with its type (a list of node classes as nodes.0)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name == "source":
            continue
        args = [a for a in typing.get_args(hints[f.name]) if a is not type(None)] or [hints[f.name]]
        inner = args[0]
        if typing.get_origin(inner) is tuple:
            inner, key = typing.get_args(inner)[0], f"{prefix}{f.name}.0"
        else:
            key = prefix + f.name
        out.append((key, inner))
        if dataclasses.is_dataclass(inner):
            out += _leaf_keys(inner, key + ".")
    return out


LEAVES = _leaf_keys()


@st.composite
def config_patches(draw):
    """A valid-looking configuration with one to three keys set to hostile values: a crash hides
    behind no other problem (the way a site's file is wrong in one place)."""
    data: dict = {"intensity": {"provider": draw(st.sampled_from(config.PROVIDERS))}}
    if draw(st.booleans()):
        data["nodes"] = [{"match": "n[1-2]"}]
    for key, hint in draw(st.lists(st.sampled_from(LEAVES), min_size=1, max_size=3)):
        value = draw(_for_hint(hint, 0)) if not dataclasses.is_dataclass(hint) else draw(values)
        parts = key.split(".")
        node = data
        for part in parts[:-1]:
            if part == "nodes":
                if not (isinstance(data.get("nodes"), list) and data["nodes"] and isinstance(data["nodes"][0], dict)):
                    data["nodes"] = [{"match": "n1"}]
                node = data["nodes"][0]
            elif part != "0":
                if not isinstance(node.get(part), dict):
                    node[part] = {}
                node = node[part]
        if parts[-1] == "0":  # a node class itself
            data["nodes"] = [value]
        else:
            node[parts[-1]] = value
    return data


def _only_config_errors(call):
    try:
        return call()
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) for p in exc.problems)
        assert len(str(exc)) < 20_000  # bounded: an alias bomb is not printed out
        return None


# ---- config ----------------------------------------------------------------------------------

@FUZZ
@given(config_patches() | config_mappings())
def test_fuzz_config_from_mapping(mapping):
    cfg = _only_config_errors(lambda: config.from_mapping(mapping, "fuzz.yaml"))
    if cfg is not None:  # what validates is sane: finite numbers, one listen rule, a dump that loads back
        assert math.isfinite(cfg.pue) and cfg.pue >= 1
        assert all(n.idle_watts is None or n.idle_watts >= 0 for n in cfg.nodes)
        config.parse_listen(cfg.metrics.listen)
        from carbond.httpconn import Connections

        Connections(cfg.victoriametrics.url, 1.0)  # the URL that passed is one the client takes
        printed = config.dump(cfg)  # loads back to what was printed (URLs' credentials masked)
        assert config.dump(config.from_bytes(printed.encode(), "again")) == printed


yaml_texts = st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from(["pue: ", "cluster: ", "nodes:\n  - match: ", "metrics:\n  listen: ", "intensity:\n  region: ",
                              "victoriametrics:\n  node_regex: ", ".nan", ".inf", "-.inf", "2024-13-45", "&a [x]",
                              "*a", "[", "]", "{", "!!binary A", "!!python/object:os.system x", "'²'", "\"\\0\"",
                              "\"\\ud800\"", "\n", "\t", "0x1F", "1e400", "~", "\xe9", "? [a]\n: 1"]),
             max_size=12).map(lambda parts: "".join(parts).encode("utf-8", "surrogatepass")),
)


@FUZZ
@given(yaml_texts)
def test_fuzz_config_load_from_bytes(raw):
    _only_config_errors(lambda: config.from_bytes(raw, "fuzz.yaml"))


def test_config_load_from_a_file_with_hostile_bytes(tmp_path):
    p = tmp_path / "c.yaml"
    for raw in (b"\xff\xfe\x00c", b"cluster: \xc3\x28\n", b"pue: .nan\n", b"nodes: [{match: []}]\n"):
        p.write_bytes(raw)
        with pytest.raises(ConfigError):
            config.load(str(p))


# ---- URL masking -----------------------------------------------------------------------------

secret = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=12, max_size=20).map(lambda s: "S3" + s)
hosts = st.sampled_from(["vm.example", "127.0.0.1", "[::1]", "h", ""])
urlish = st.text(alphabet="abc:/@?#[]%.", max_size=8)


@FUZZ
@given(st.sampled_from(["http://", "https://", "", "ftp://", "http:/"]), secret, st.one_of(st.none(), secret), hosts,
       st.sampled_from(["", ":8428", ":99999", ":x"]), urlish)
def test_fuzz_mask_url_never_shows_userinfo(scheme, user, password, host, port, tail):
    userinfo = user + (f":{password}" if password else "")
    url = f"{scheme}{userinfo}@{host}{port}/{tail}"
    shown = config.mask_url(url)
    assert user not in shown and (password is None or password not in shown), (url, shown)
    assert "***@" in shown


@FUZZ
@given(st.text(max_size=40))
def test_fuzz_mask_url_never_raises(url):
    shown = config.mask_url(url)
    assert isinstance(shown, str)
    if "@" not in url:
        assert shown == url


# ---- token -----------------------------------------------------------------------------------

comment_text = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(list(" ;,=:|\n\t")), max_size=60) | \
    st.sampled_from(["carbond:co2e_g=1,energy_kwh=2", "x carbond:co2e_g=1;", "carbond:", "carbond:a=", "JS1:abc",
                     "{\"a\": 1}", "[" * 50])
token_values = st.dictionaries(st.text(alphabet="abcz_09", min_size=1, max_size=6),
                               st.one_of(st.floats(), st.integers(), st.booleans(), st.none(),
                                         st.text(alphabet="abz09._+-", min_size=1, max_size=6), st.text(max_size=4)),
                               max_size=5)


@FUZZ
@given(comment_text)
def test_fuzz_token_parse_and_skip_reason(field):
    parsed = token.parse(field)
    assert parsed is None or (isinstance(parsed, dict) and parsed)
    assert token.skip_reason(field) in (None, token.MANGLED, token.FOREIGN)


@FUZZ
@given(comment_text, token_values)
def test_fuzz_token_format_and_merge_round_trip(existing, values):
    try:
        tok = token.format_token(values)
    except JobInputError:
        return
    merged = token.merge(existing, tok)
    assert token.merge(merged, tok) == merged  # idempotent
    if token.find(existing) is None:
        assert merged.startswith(existing)  # every other byte kept
    assert token.find(merged).group(0) == tok


@FUZZ
@given(comment_text, comment_text)
def test_fuzz_token_merge_refuses_what_is_no_token(existing, tok):
    try:
        merged = token.merge(existing, tok)
    except JobInputError:
        return
    assert token.find(merged).group(0) == tok


# ---- spool reader (read only: carbond/spool.py belongs to another change) --------------------

record_values = st.one_of(st.sampled_from(["", "1", "0", "²", "١٢", "9" * 25, "1:0", "n[1-2]", "n1,n2", "2,1(x2)",
                                           "1(x0)", "4(x99999999)", "\x7f", "a=b"]),
                          st.text(alphabet="n[]-,0123456789()x:", max_size=12))


@st.composite
def spool_records(draw):
    header = draw(st.sampled_from(["carbond-spool 2", "carbond-spool 1", "carbond-spool 3", "junk"]))
    keys = list(spool.KEYS_V2 if header.endswith("2") else spool.KEYS)
    keys = draw(st.permutations(keys + draw(st.lists(st.sampled_from(["job_id", "bogus", ""]), max_size=1))))
    body = [f"{k}={draw(record_values)}" for k in keys]
    end = draw(st.sampled_from(["end\n", "end", "", "end\nmore\n"]))
    text = "\n".join([header, *body, end])
    return text.encode("utf-8", "surrogatepass") if draw(st.booleans()) else draw(st.binary(max_size=300))


@FUZZ
@given(spool_records())
def test_fuzz_spool_parse_record(data):
    try:
        rec = spool.parse_record(data, "/spool/7.job", mtime=1.0)
    except CarbondError:
        return
    assert rec.job_id.isascii() and rec.job_id.isdigit() and int(rec.job_id) > 0


# ---- sacct -P tables: footprint --jobs (carbond.jobs) and the daemon's reader (carbond.slurm) --

time_texts = st.one_of(st.sampled_from(["1700000000", "1700003600", "²", "١٢", "nan", "inf", "-5", "1e400", "1_000",
                                        "9" * 40, "1", "0", "Unknown", "None", "", "2024-10-27T01:30:00",
                                        "2024-03-31T01:30:00", "2024-10-27T01:30:00Z", "0001-01-01T00:00:00+01:00",
                                        "9999-12-31T23:59:59-14:00", " 12 "]),
                       st.integers(-10, 2**40).map(str), st.text(max_size=12))
sacct_field = st.one_of(st.sampled_from(["n[1-2]", "n1", "None assigned", "cpu=4,gres/gpu=1", "cpu=x", "cpu=²",
                                         "billing=1", "a|b", "", "1234", "1234.batch", "1234_7"]),
                        st.text(alphabet="n[]-,0123456789=|.", max_size=10))


@st.composite
def sacct_tables(draw, with_header=True):
    cols = draw(st.permutations(["JobIDRaw", "Start", "End", "NodeList", "AllocTRES", "JobID", "User"]))
    rows = []
    for _ in range(draw(st.integers(0, 5))):
        row = {c: draw(sacct_field) for c in cols}
        row["Start"], row["End"] = draw(time_texts), draw(time_texts)
        row = {c: v.encode("utf-8", "replace").decode() for c, v in row.items()}  # as read with errors="replace"
        rows.append("|".join(row[c] for c in cols))
    lines = ["|".join(cols)] + rows if with_header else rows
    return io.StringIO("".join(ln + "\n" for ln in lines))  # as a file is read: a line ends at its newline


def _assert_jobs_sane(items):
    for it in items:
        if isinstance(it, jobs.Job):
            for t in (it.start, it.end):
                assert t is None or (math.isfinite(t) and 0 <= t <= times.EPOCH_MAX), it
            if it.start is not None and it.end is not None:
                assert it.end - it.start <= times.MAX_SPAN
        else:
            assert isinstance(it, jobs.BadLine) and it.error


@FUZZ
@given(sacct_tables(), st.sampled_from([None, "Europe/London", "UTC", "Nowhere/Else"]))
def test_fuzz_read_sacct(lines, zone):
    try:
        _assert_jobs_sane(list(jobs.read_sacct(lines, zone)))
    except CarbondError:
        pass


@FUZZ
@given(sacct_tables(), st.sampled_from([None, "Europe/London"]))
def test_fuzz_time_buckets_and_read_table(lines, zone):
    try:
        with jobs.TimeBuckets(lines, 3600.0, zone) as buckets:
            assert buckets.span is None or buckets.span[1] - buckets.span[0] <= times.MAX_SPAN
            for table in buckets.windows():
                for j in range(len(table)):
                    for t in (table.start[j], table.end[j]):
                        assert math.isnan(t) or 0 <= t <= times.EPOCH_MAX
                    if not (math.isnan(table.start[j]) or math.isnan(table.end[j])):
                        assert table.end[j] - table.start[j] <= times.MAX_SPAN
    except CarbondError:
        pass


@st.composite
def daemon_sacct_output(draw):
    rows = []
    for _ in range(draw(st.integers(0, 3))):
        job = draw(st.sampled_from(["1", "42", "²", "0", "007", ""]))
        fields = [draw(st.one_of(time_texts, sacct_field)) for _ in slurm.COLUMNS[1:-1]]
        if draw(st.booleans()):
            fields[2], fields[3] = draw(time_texts), draw(time_texts)  # Start, End
        rows.append(slurm.DELIMITER.join([job, *fields, draw(st.sampled_from([job, "1", "x"]))]))
    text = "\n".join(rows) + draw(st.sampled_from(["\n", "", "\x1f"]))
    return text


@FUZZ
@given(daemon_sacct_output())
def test_fuzz_slurm_parse_parsable(text):
    try:
        facts = slurm.parse_parsable(text)
    except CarbondError:
        return
    _assert_jobs_sane([f.job for f in facts])


@FUZZ
@given(st.lists(st.lists(st.one_of(time_texts, sacct_field), min_size=8, max_size=8), max_size=3))
def test_fuzz_slurm_parse_runs(rows):
    text = "\n".join(slurm.DELIMITER.join(r[:-1] + [r[0]]) for r in rows)
    try:
        runs = slurm.parse_runs(text)
    except CarbondError:
        return
    for r in runs:
        assert r.start is None or 0 <= r.start <= times.EPOCH_MAX


# ---- sacct --json ------------------------------------------------------------------------------

json_numbers = st.one_of(st.sampled_from([0, 1, 42, slurm.NO_VAL, 2**64, -1, 10**30, 1.5, 1e400, -1e400, True, None,
                                          "12", "²", "١٢", "x"]), st.integers(), st.floats())
int_fields = st.one_of(json_numbers, st.fixed_dictionaries({}, optional={
    "set": st.booleans(), "infinite": st.booleans(), "number": json_numbers}), values)


@st.composite
def sacct_json_docs(draw):
    def job():
        return draw(st.fixed_dictionaries({}, optional={
            "job_id": int_fields, "state": st.one_of(values, st.fixed_dictionaries({"current": values})),
            "time": st.fixed_dictionaries({}, optional={"start": int_fields, "end": int_fields}) | values,
            "nodes": st.one_of(st.sampled_from(["n[1-2]", "None assigned", "n[1-"]), values),
            "tres": st.fixed_dictionaries({"allocated": st.lists(st.fixed_dictionaries(
                {"type": st.sampled_from(["cpu", "gres", 1, None]), "count": int_fields},
                optional={"name": st.sampled_from(["gpu", "", 3])}), max_size=3) | values}) | values,
            "array": st.fixed_dictionaries({}, optional={"job_id": int_fields, "task_id": int_fields}) | values,
            "het": st.fixed_dictionaries({}, optional={"job_id": int_fields, "job_offset": int_fields}) | values,
            "comment": st.fixed_dictionaries({}, optional={"administrator": values, "job": values}) | values,
            "partition": values, "account": values, "user": values, "cluster": values,
        }))

    doc = {"jobs": [job() for _ in range(draw(st.integers(0, 3)))]}
    if draw(st.booleans()):
        doc["errors"] = draw(values)
    text = json.dumps(doc, allow_nan=True, default=str)
    return draw(st.sampled_from([text, text[: len(text) // 2], "[" * 3000, json.dumps(draw(values)), "1e400"]))


@FUZZ
@given(sacct_json_docs())
def test_fuzz_slurm_parse_json(text):
    try:
        facts = slurm.parse_json(text)
    except CarbondError:
        return
    for f in facts:
        assert f.job.job_id.isascii() and f.job.job_id.isdigit() and int(f.job.job_id) > 0
    _assert_jobs_sane([f.job for f in facts])


@pytest.mark.parametrize("doc", [
    '{"jobs": [{"job_id": 1, "time": {"start": 1e400}}]}',  # OverflowError: int(inf)
    '{"jobs": [{"job_id": 1, "time": {"start": ' + "9" * 30 + ', "end": 2}}]}',  # a time past year 9999
    '{"jobs": [{"job_id": 1, "time": {"start": -5}}]}',
    '{"jobs": [{"job_id": null}]}',  # was the job "None"
    '{"jobs": [{"job_id": true}]}',
    '{"jobs": [{"job_id": 1, "partition": ["a"]}]}',  # was the partition "['a']"
    '{"errors": 5}',  # TypeError: iterating an int
    "[" * 100_000,  # RecursionError
])
def test_parse_json_of_a_hostile_answer_is_a_slurm_error(doc):
    with pytest.raises(SlurmError):
        slurm.parse_json(doc)


# ---- times ---------------------------------------------------------------------------------

@FUZZ
@given(time_texts, st.sampled_from([None, "Europe/London", "America/St_Johns", "Nowhere", "../etc/passwd", ""]))
def test_fuzz_parse_time(text, zone):
    try:
        value, warning = times.parse_time(text, zone)
    except CarbondError:
        return
    assert math.isfinite(value) and 0 <= value <= times.EPOCH_MAX
    times.iso(value)  # every time read can be written


@FUZZ
@given(st.one_of(st.text(max_size=14), st.sampled_from(["9" * 400 + "w", "1-²", "١٢h", "1e400", "nan:1", "inf"])))
def test_fuzz_parse_duration(text):
    try:
        value = times.parse_duration(text)
    except CarbondError:
        return
    assert math.isfinite(value) and value >= 0


@pytest.mark.parametrize("text", ["²", "١٢", "1e400", "nan", "-5", "9" * 40])
def test_sacct_start_time_that_is_no_time_is_a_bad_line(text):
    got = list(jobs.read_sacct(io.StringIO(f"JobIDRaw|Start|End|NodeList|AllocTRES\n1|{text}|1700000000|n1|cpu=1\n")))
    assert isinstance(got[0], jobs.BadLine) and got[0].job_id == "1"
    with jobs.TimeBuckets(io.StringIO(f"JobIDRaw|Start|End|NodeList|AllocTRES\n1|{text}|1700000000|n1|cpu=1\n"),
                          86400) as buckets:
        assert [b.job_id for t in buckets.windows() for b in t.bad] == ["1"]


def test_a_54_year_job_is_a_bad_line_and_bounds_no_lookup():
    table = "JobIDRaw|Start|End|NodeList|AllocTRES\n1|1|1700000000|n1|cpu=1\n2|1699990000|1700000000|n1|cpu=1\n"
    got = list(jobs.read_sacct(io.StringIO(table)))
    assert isinstance(got[0], jobs.BadLine) and "spans 19676 days" in got[0].error and isinstance(got[1], jobs.Job)
    with jobs.TimeBuckets(io.StringIO(table), 86400) as buckets:
        bad = [b for t in buckets.windows() for b in t.bad]
        assert [b.job_id for b in bad] == ["1"] and "spans" in bad[0].error
    with jobs.TimeBuckets(io.StringIO(table + "3|1000000|1000100|n1|cpu=1\n"), 86400) as buckets:
        assert buckets.span is None  # jobs 54 years apart: no one lookup over all of it


def test_parse_time_refuses_times_outside_what_can_be_written():
    for text in ("0001-01-01T00:00:00+01:00", "1969-12-31T23:59:59Z"):
        with pytest.raises(TimeFormatError):
            times.parse_time(text)


# ---- the command line ----------------------------------------------------------------------

argv_words = st.sampled_from([
    "footprint", "run", "show", "backfill", "report", "estimate", "idle", "check-config", "--print", "--json",
    "--nodes", "--jobs", "--start", "--end", "--cpus", "--window", "--workers", "--timezone", "--write", "--stats",
    "--log-level", "DEBUG", "--config", "--help", "-h", "--version", "nan", "inf", "-1", "1e400", "²", "n[1-2]",
    "1234_7", "-", "--", "--bogus", "0", "1.5", "=",
])


@FUZZ
@given(argv=st.lists(argv_words | st.text(max_size=6), max_size=7))
def test_fuzz_cli_arguments(capsys, argv):
    """The command line with a config that cannot be read: usage errors exit 2, the rest 0 or 1
    (never 70, never a traceback), and no command reaches a service."""
    from carbond.cli import main

    try:
        code = main(["--config", "/nonexistent/carbond.yaml", *argv])
    except SystemExit as exc:  # argparse: --help/--version 0, a wrong command line 2
        code = exc.code
    err = capsys.readouterr().err
    assert code in (0, 1, 2), (argv, code, err)
    assert "Traceback" not in err and "internal error" not in err


@pytest.mark.parametrize("option, value", [("--window", "inf"), ("--window", "nan"), ("--cpus", "nan"),
                                           ("--cpus", "-4"), ("--cpus", "inf"), ("--workers", "-3")])
def test_a_nonsense_number_on_the_command_line_is_a_usage_error(option, value, capsys):
    from carbond.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["footprint", "--nodes", "n1", "--start", "1", "--end", "2", option, value])
    assert exc.value.code == 2 and option in capsys.readouterr().err


def test_a_job_too_long_to_account_widens_no_lookup():
    table = "JobIDRaw|Start|End|NodeList|AllocTRES\n1|1|1700000000|n1|cpu=1\n2|1699990000|1700000000|n1|cpu=1\n"
    with jobs.TimeBuckets(io.StringIO(table), 86400) as buckets:
        assert buckets.span == (1699990000.0, 1700000000.0)
