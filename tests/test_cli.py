"""`carbond footprint` end to end against a real VictoriaMetrics, and the CLI's error contract."""

from __future__ import annotations

import json

import numpy as np
import pytest

from carbond.cli import main

T0 = 1_729_987_200  # 2024-10-27T00:00:00Z, the night UK clocks go back


@pytest.fixture
def setup(vm, tmp_path):
    """Two nodes with known traces and a CSV of half-hourly intensities 100, 110, 120, ..."""
    a, b = vm.node("cli"), vm.node("cli")
    t = np.arange(T0 - 600, T0 + 4 * 3600, 30.0)
    vm.import_series(a, t, 100 + 0.05 * (t - T0 + 600))  # a ramp: 100 W rising 0.05 W/s
    vm.import_series(b, t, np.full(t.size, 200.0))
    vm.flush()
    rows = ["from,to,intensity"] + [
        f"{_iso(T0 + k * 1800)},{_iso(T0 + (k + 1) * 1800)},{100 + 10 * k}" for k in range(-2, 10)
    ]
    (tmp_path / "ci.csv").write_text("\n".join(rows) + "\n")
    cfg = tmp_path / "carbond.yaml"
    cfg.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        f"victoriametrics:\n  url: {vm.url}\n"
        f"intensity:\n  provider: csv\n  path: {tmp_path / 'ci.csv'}\n"
        f"nodes:\n  - match: {a},{b}\n    cpus: 8\n"
    )
    return str(cfg), a, b


def _iso(epoch: int) -> str:
    from carbond.times import iso

    return iso(epoch)


def run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_footprint_of_a_window_matches_the_analytic_integral(setup, capsys):
    cfg, a, _ = setup
    start, end = T0 + 1000, T0 + 2800  # 1000 s in the first half-hour, 1000 s in the second
    code, out, err = run(capsys, "--config", cfg, "footprint", "--nodes", a, "--start", str(start),
                         "--end", "2024-10-27T00:46:40+00:00", "--json")
    assert code == 0, err
    d = json.loads(out)

    def p(x):
        return 100 + 0.05 * (x - T0 + 600)

    def joules(lo, hi):
        return (p(lo) + p(hi)) / 2 * (hi - lo)

    first, second = joules(start, T0 + 1800), joules(T0 + 1800, end)
    assert d["energy_kwh"] == pytest.approx((first + second) / 3.6e6, rel=1e-9)
    assert [x["intensity_g_per_kwh"] for x in d["periods"]] == [100, 110]
    assert d["co2e_g"] == pytest.approx((first * 100 + second * 110) / 3.6e6, rel=1e-9)
    assert d["method"] == "measured" and d["coverage"] == 1.0 and d["nodes"][0]["share"] == 1.0
    assert [x["start"] for x in d["periods"]] == ["2024-10-27T00:16:40Z", "2024-10-27T00:30:00Z"]


def test_footprint_of_sacct_jobs_in_local_time_across_the_autumn_hour(setup, capsys, tmp_path):
    cfg, a, b = setup
    table = tmp_path / "sacct.txt"
    table.write_text(
        "JobIDRaw|JobID|Start|End|NodeList|AllocTRES\n"
        f"1|1|2024-10-27T01:10:00|2024-10-27T01:50:00|{a}|cpu=4\n"  # 01:xx happens twice tonight
        f"2|2|{T0 + 600}|{T0 + 4200}|{a},{b}|cpu=8,node=2\n"
        "3|3|Unknown|Unknown|None assigned|cpu=1\n"
    )
    code, out, err = run(capsys, "--config", cfg, "footprint", "--jobs", str(table), "--timezone", "Europe/London",
                         "--json", "--stats")
    assert code == 0, err
    one, two, three = (json.loads(line) for line in out.splitlines())
    assert "ambiguous" in one["warnings"][0] and one["start"] == "2024-10-27T00:10:00Z"  # first 01:10 is BST
    assert one["nodes"][0]["share"] == 0.5
    assert {n["node"]: n["share"] for n in two["nodes"]} == {a: 0.5, b: 0.5}
    assert two["nodes"][1]["energy_kwh"] == pytest.approx(200 * 0.5 * 3600 / 3.6e6, rel=1e-9)
    assert three["status"] == "not-started"
    assert "3 jobs" in err and "VictoriaMetrics request" in err


def test_streamed_windows_workers_and_all_at_once_agree(setup, capsys, tmp_path):
    cfg, a, b = setup
    table = tmp_path / "sacct.txt"
    rows = [f"{k}|{k}|{T0 + 600 * k}|{T0 + 600 * k + 2400}|{(a, b)[k % 2]}|cpu={1 + k % 4}" for k in range(20)]
    table.write_text("JobIDRaw|JobID|Start|End|NodeList|AllocTRES\n" + "\n".join(rows) + "\n")
    outs = {}
    for opts in (["--window", "0"], ["--window", "1"], ["--window", "0.25", "--workers", "2"]):
        code, out, err = run(capsys, "--config", cfg, "footprint", "--jobs", str(table), "--json", *opts)
        assert code == 0, err
        outs[" ".join(opts)] = {d["job_id"]: d for d in map(json.loads, out.splitlines())}
    whole = outs.pop("--window 0")
    assert len(whole) == 20 and all(d["status"] == "ok" for d in whole.values())
    for got in outs.values():
        assert got.keys() == whole.keys()
        for k, d in whole.items():
            assert got[k]["energy_kwh"] == pytest.approx(d["energy_kwh"], rel=1e-9)
            assert got[k]["co2e_g"] == pytest.approx(d["co2e_g"], rel=1e-9)
            assert [p["start"] for p in got[k]["periods"]] == [p["start"] for p in d["periods"]]


def test_table_output_for_people(setup, capsys):
    cfg, a, _ = setup
    code, out, _ = run(capsys, "--config", cfg, "footprint", "--nodes", a, "--start", str(T0), "--end", str(T0 + 3600))
    assert code == 0
    assert out.startswith("JOBID") and "HALF-HOUR (UTC)" in out and "1 job(s)," in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--nodes", "n[1-", "--start", "1", "--end", "2"], "unclosed '[' in hostlist"),
        (["--nodes", "n1", "--start", "yesterday", "--end", "2"], "cannot read time 'yesterday'"),
        (["--nodes", "n1"], "--nodes needs --start and --end"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_1(setup, capsys, args, message):
    cfg, _, _ = setup
    code, out, err = run(capsys, "--config", cfg, "footprint", *args)
    assert code == 1 and out == "" and message in err and err.count("\n") == 1


def test_broken_config_names_every_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("pue: high\nintensity:\n  provider: nope\n")
    code, _, err = run(capsys, "--config", str(cfg), "check-config")
    assert code == 1 and "pue: expected a number" in err and "intensity.provider: must be one of" in err


def test_unreachable_victoriametrics_names_the_url(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"state_dir: {tmp_path}\nvictoriametrics:\n  url: http://127.0.0.1:9\n  timeout: 2\n"
                   "intensity:\n  provider: constant\n  value: 100\nattribution: exclusive\n")
    code, _, err = run(capsys, "--config", str(cfg), "footprint", "--nodes", "n1", "--start", "1700000000",
                       "--end", "1700003600")
    assert code == 1 and "http://127.0.0.1:9" in err


# -- a contract a script can rely on ------------------------------------------------------------
def test_a_node_without_samples_is_a_clear_row_and_exit_1_never_a_traceback(setup, capsys, vm):
    cfg, _, _ = setup
    lonely = vm.node("nosamples")
    args = ["--config", cfg, "footprint", "--nodes", lonely, "--start", str(T0), "--end", str(T0 + 3600)]
    code, out, err = run(capsys, *args)
    assert code == 1 and "Traceback" not in err + out
    assert f"no power samples for {lonely}" in out and "1 not accounted" in out
    assert "1 of 1 job(s) could not be accounted" in err
    code, out, err = run(capsys, *args, "--json")
    assert code == 1 and json.loads(out)["status"] == "error" and "Traceback" not in err


def test_jobs_mode_exits_1_when_any_job_fails_and_still_prints_every_job(setup, capsys, tmp_path, vm):
    cfg, a, _ = setup
    table = tmp_path / "sacct.txt"
    table.write_text("JobIDRaw|Start|End|NodeList|AllocTRES\n"
                     f"1|{T0}|{T0 + 600}|{a}|cpu=8\n"
                     f"2|{T0}|{T0 + 600}|{vm.node('nosamples')}|cpu=8\n"
                     "3|not-a-time|x|n1|cpu=1\n")
    for mode in ([], ["--json"]):
        code, out, err = run(capsys, "--config", cfg, "footprint", "--jobs", str(table), *mode)
        assert code == 1 and "2 of 3 job(s) could not be accounted" in err and "Traceback" not in err
    statuses = [json.loads(line)["status"] for line in out.splitlines()]
    assert statuses == ["ok", "error", "error"]


def test_an_unexpected_error_is_one_line_and_exit_70(setup, capsys, monkeypatch):
    import carbond.report

    def broken(*_a, **_k):
        raise TypeError("boom")

    monkeypatch.setattr(carbond.report, "write_table", broken)
    cfg, a, _ = setup
    code, out, err = run(capsys, "--config", cfg, "footprint", "--nodes", a, "--start", str(T0), "--end", str(T0 + 60))
    assert code == 70 and "Traceback" not in err and err.count("\n") == 1 and "internal error: TypeError: boom" in err


def _actions(parser, path="carbond"):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{path} {name}")
            for choice in action._choices_actions:
                yield f"{path} {choice.dest}", choice
        else:
            yield path, action


def test_every_option_and_command_has_help():
    from carbond.cli import build_parser

    seen = list(_actions(build_parser()))
    assert len(seen) > 25
    missing = [f"{where}: {a.option_strings or a.dest}" for where, a in seen if not (a.help and a.help.strip())]
    assert missing == []


def test_help_documents_the_exit_status(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["footprint", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "exit status:" in out and "70" in out


def test_yaml_error_names_the_file_and_the_line(tmp_path, capsys):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("pue: 1.2\nvictoriametrics:\n url: http://x\n  query: y\n")
    code, out, err = run(capsys, "--config", str(cfg), "check-config")
    assert code == 1 and out == ""
    assert str(cfg) in err and "not valid YAML at line 4, column 8" in err and "Traceback" not in err


def test_check_config_prints_the_effective_config_without_secrets(tmp_path, capsys):
    import yaml

    from carbond.config import from_mapping, load

    token = tmp_path / "vm-token"
    token.write_text("s3cr3t-bearer-token\n")
    token.chmod(0o600)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"cluster: c1\npue: 1.3\nvictoriametrics:\n  url: https://carbond:pa55word@vm.example:8428\n"
                   f"  bearer_token_file: {token}\n  node_label: instance\n  node_regex: '^(?P<node>[^.:]+)'\n"
                   "intensity:\n  provider: constant\n  value: 99\n")
    code, out, err = run(capsys, "--config", str(cfg), "check-config", "--print")
    assert code == 0 and err.strip() == f"{cfg}: ok"
    assert "s3cr3t" not in out and "pa55word" not in out
    printed = yaml.safe_load(out)
    assert printed["victoriametrics"]["url"] == "https://***@vm.example:8428"
    assert printed["slurm"]["retry_seconds"] == 3600  # defaults filled in
    # What is printed is the configuration carbond runs with: it loads back to the same values.
    printed["victoriametrics"]["url"] = "https://carbond:pa55word@vm.example:8428"
    assert from_mapping(printed, str(cfg)) == load(str(cfg))


def test_show_loads_only_what_it_needs_so_no_secret_is_opened(tmp_path):
    from carbond.cli import SECTIONS
    from carbond.config import load
    from carbond.errors import ConfigError

    cfg = tmp_path / "c.yaml"
    cfg.write_text("cluster: c1\nvictoriametrics:\n  bearer_token_file: /nonexistent/vm-token\n"
                   "intensity:\n  provider: electricitymaps\n  zone: DE\n  token_file: /nonexistent/em\n"
                   "slurm:\n  comment_field: comment\n")
    with pytest.raises(ConfigError, match="bearer_token_file: cannot read"):
        load(str(cfg))
    got = load(str(cfg), sections=SECTIONS["show"])
    assert got.cluster == "c1" and got.slurm.comment_field == "comment"
    cfg.write_text("slurm:\n  comment_field: nope\n")
    with pytest.raises(ConfigError, match="slurm.comment_field"):  # its own sections are still checked
        load(str(cfg), sections=SECTIONS["show"])


def test_show_without_a_readable_config_uses_defaults_and_every_field(tmp_path, monkeypatch):
    import carbond.config
    from carbond.cli import _show_config

    monkeypatch.delenv("CARBOND_CONFIG", raising=False)
    monkeypatch.setattr(carbond.config, "DEFAULT_PATH", str(tmp_path / "absent.yaml"))
    cfg, any_field = _show_config(None)
    assert any_field and cfg == carbond.config.Config()


def test_every_command_is_in_the_readme():
    import argparse
    from pathlib import Path

    from carbond.cli import build_parser

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert [c for c in sub.choices if f"carbond {c}" not in readme] == []


def test_the_cli_keeps_numpy_to_one_thread():
    """carbond does no linear algebra: numpy imported by the CLI starts no OpenBLAS threads,
    which otherwise spin and double a short command's CPU time (here: 0.42 -> 0.32 s)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    code = "import carbond.cli, numpy, os; print(len(os.listdir('/proc/self/task')))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def test_jobs_mode_charges_every_run_and_no_suspended_time_as_the_daemon_does(setup, capsys, tmp_path):
    """`sacct -D` output (a requeued job: one line per run, on other nodes) and a `Suspended` column:
    the job's footprint is the sum of its runs, and a suspended job is charged its unsuspended share
    (no ledger here: pro rata, flagged), against a hand computation from the traces."""
    cfg, a, b = setup
    table = tmp_path / "sacct.txt"
    table.write_text("JobIDRaw|Start|End|NodeList|AllocTRES|Suspended\n"
                     f"7|{T0}|{T0 + 1800}|{a}|cpu=8|00:00:00\n"
                     f"8|{T0}|{T0 + 3600}|{b}|cpu=4|00:30:00\n"
                     f"7|{T0 + 1800}|{T0 + 3600}|{b}|cpu=8|00:00:00\n"
                     f"9|{T0}|{T0 + 1800}|{b}|cpu=8|00:00:00\n")
    for window in ("24", "0"):
        code, out, err = run(capsys, "--config", cfg, "footprint", "--jobs", str(table), "--json", "--window", window)
        assert code == 0, err
        got = {d["job_id"]: d for d in map(json.loads, out.splitlines())}
        assert sorted(got) == ["7", "8", "9"]
        # job 7: the ramp on a over the first half-hour (100 W at T0 - 600 rising 0.05 W/s), then 200 W on b
        ramp_j = (100 + 0.05 * 600) * 1800 + 0.05 * 1800 ** 2 / 2
        assert got["7"]["energy_kwh"] == pytest.approx((ramp_j + 200 * 1800) / 3.6e6, rel=1e-9)
        assert got["7"]["co2e_g"] == pytest.approx((ramp_j * 100 + 200 * 1800 * 110) / 3.6e6, rel=1e-9)
        assert [n["node"] for n in got["7"]["nodes"]] == [a, b]
        # job 8: 4 of 8 CPUs of b's 200 W for an hour, half of it suspended: half the footprint, flagged
        assert got["8"]["energy_kwh"] == pytest.approx(100 * 3600 / 2 / 3.6e6, rel=1e-9)
        assert got["8"]["method"] == "mixed" and any("suspended" in w for w in got["8"]["warnings"])
        assert got["9"]["energy_kwh"] == pytest.approx(200 * 1800 / 3.6e6, rel=1e-9)


def test_an_empty_alloctres_takes_alloccpus_or_is_an_error_never_zero(setup, capsys, tmp_path):
    """Seen in real sacct output: AllocTRES empty for a job that ran. Before, such a job was accounted
    as 0 kWh, status ok, method measured, with no warning."""
    cfg, _, b = setup
    table = tmp_path / "sacct.txt"
    table.write_text("JobIDRaw|Start|End|NodeList|AllocTRES|AllocCPUS\n"
                     f"1|{T0}|{T0 + 1800}|{b}||4\n"
                     f"2|{T0}|{T0 + 1800}|{b}||\n")
    code, out, err = run(capsys, "--config", cfg, "footprint", "--jobs", str(table), "--json")
    got = {d["job_id"]: d for d in map(json.loads, out.splitlines())}
    assert code == 1 and "1 of 2 job(s) could not be accounted" in err
    assert got["1"]["status"] == "ok" and got["1"]["energy_kwh"] == pytest.approx(200 * 4 / 8 * 1800 / 3.6e6, rel=1e-9)
    assert got["2"]["status"] == "error" and "AllocCPUS" in got["2"]["error"]


def test_slurms_empty_alloctres_charges_whole_nodes_and_says_so():
    from carbond.slurm import parse_parsable

    row = "\x1f".join(["5", "5", "COMPLETED", "100", "200", "n1", "", "p", "a", "u", "c", "", "", "", "5"])
    (f,) = parse_parsable(row + "\n")
    assert f.job.cpus == () and f.job.nodes == ("n1",)  # () = whole nodes, never 0 CPUs
    assert any("no CPU count" in w for w in f.job.warnings)


# ---- issue 16: state files 0640 / directories 0750 whatever the umask ----------------------

@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_a_cli_run_under_a_loose_umask_creates_no_world_readable_ledger(tmp_path, monkeypatch, umask):
    import os
    import stat

    from carbond import cli
    from carbond.ledger import Ledger

    state = tmp_path / "state"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"state_dir: {state}\n")
    seen = {}

    def write_ledger(args):  # what backfill --write does first: the real ledger, in the real state_dir
        from carbond.config import load

        Ledger(load(args.config).state_dir, "c1").close()
        seen["umask"] = os.umask(0o777)
        os.umask(seen["umask"])
        return 0

    monkeypatch.setattr(cli, "_dispatch", write_ledger)
    old = os.umask(umask)
    try:
        assert cli.main(["--config", str(cfg), "check-config"]) == 0
        assert os.umask(umask) == umask  # main restores the caller's umask when it returns
    finally:
        os.umask(old)
    assert seen["umask"] == umask | 0o027
    assert stat.S_IMODE(state.stat().st_mode) == 0o750
    files = list(state.iterdir())
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o640 for f in files), {
        f.name: oct(f.stat().st_mode) for f in files}


@pytest.mark.parametrize("umask", [0o077, 0o022, 0o000])
def test_run_creates_state_dir_0750_whatever_the_umask(tmp_path, monkeypatch, umask):
    import os
    import stat

    import carbond.daemon
    from carbond.cli import main

    state = tmp_path / "var" / "lib" / "carbond"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"state_dir: {state}\n")
    ran = []
    monkeypatch.setattr(carbond.daemon, "run", lambda c: ran.append(c.state_dir) or 0)
    old = os.umask(umask)
    try:
        assert main(["--config", str(cfg), "run"]) == 0
    finally:
        os.umask(old)
    assert ran == [str(state)] and stat.S_IMODE(state.stat().st_mode) == 0o750


def test_run_refuses_a_state_dir_that_is_a_file(tmp_path, capsys):
    state = tmp_path / "state"
    state.write_text("")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"state_dir: {state}\n")
    code, out, err = run(capsys, "--config", str(cfg), "run")
    assert code == 1 and "state_dir" in err and "Traceback" not in err


def test_footprint_jobs_with_a_start_of_superscript_two_and_a_54_year_job(vm, tmp_path, capsys):
    """Both lines are bad lines (exit 1, a NOTE each), the good job is accounted, and the run
    is quick: the 54-year span asks for no 54 years of power or intensity (was 10 s, 336 MB)."""
    import time as _time

    a = vm.node("span")
    t = np.arange(T0 - 600, T0 + 3600, 30.0)
    vm.import_series(a, t, np.full(t.size, 100.0))
    vm.flush()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\nvictoriametrics:\n  url: {vm.url}\n"
                   f"intensity:\n  provider: constant\n  value: 100\nnodes:\n  - match: {a}\n    cpus: 4\n")
    table = tmp_path / "jobs.txt"
    table.write_bytes(b"JobIDRaw|Start|End|NodeList|AllocTRES\n"
                      + f"1|\u00b2|{T0 + 600}|{a}|cpu=4\n2|1|{T0 + 600}|{a}|cpu=4\n3|{T0}|{T0 + 600}|{a}|cpu=4\n".encode()
                      + f"4|{T0}|{T0 + 600}|{a}\xff|cpu=4\n".encode("latin-1"))
    for window in ("24", "0"):
        t0 = _time.monotonic()
        code, out, err = run(capsys, "--config", str(cfg), "footprint", "--jobs", str(table), "--json",
                             "--window", window)
        assert _time.monotonic() - t0 < 10
        assert code == 1 and "internal error" not in err, err
        got = {d["job_id"]: d for d in map(json.loads, out.splitlines())}
        assert got["3"]["status"] == "ok" and got["3"]["energy_kwh"] == pytest.approx(100 * 600 / 3.6e6)
        assert "cannot read time" in got["1"]["error"] and "spans 20023 days" in got["2"]["error"]
        assert got["4"]["status"] == "error"  # a byte that is not UTF-8 spoils its line only


def test_run_on_a_listen_address_in_use_stops_with_one_line_naming_metrics_listen(tmp_path, capsys):
    """What check-config passes, `run` binds: a port in use is a ConfigError (exit 1), not a crash."""
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        cfg = tmp_path / "c.yaml"
        (tmp_path / "spool").mkdir()
        cfg.write_text(f"state_dir: {tmp_path / 'state'}\nspool_dir: {tmp_path / 'spool'}\n"
                       f"intensity:\n  provider: constant\n  value: 1\nmetrics:\n  listen: 127.0.0.1:{port}\n")
        assert run(capsys, "--config", str(cfg), "check-config")[0] == 0
        code, out, err = run(capsys, "--config", str(cfg), "run")
    finally:
        busy.close()
    assert code == 1 and "metrics.listen: cannot listen on" in err and "internal error" not in err, err
