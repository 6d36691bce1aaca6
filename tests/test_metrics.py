"""Metrics: totals resume from the ledger, the exposition is clean under promtool, served over HTTP."""

import math
import shutil
import subprocess
import time
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from carbond import ledger as L
from carbond.errors import ConfigError
from carbond.ledger import Entry, Ledger
from carbond.metrics import Metrics, parse_listen, serve

PROMTOOL = shutil.which("promtool")


def value(registry, name, **labels):
    v = registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


def promtool_check(text: bytes) -> str:
    if PROMTOOL is None:
        pytest.fail("promtool not found: apt-get install prometheus (Debian ships /usr/bin/promtool)")
    proc = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, timeout=30,  # noqa: S603
                          check=False)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    return proc.stdout.decode() + proc.stderr.decode()


@pytest.fixture
def filled_ledger(tmp_path):
    led = Ledger(tmp_path, "c1")
    led.record_many([
        Entry(job_id="1", state=L.PENDING_WRITE, energy_j=1000.0, co2e_g=10.0, partition="cpu", account="a", user="x",
              token="carbond:co2e_g=10"),
        Entry(job_id="2", state=L.PENDING_WRITE, energy_j=500.0, co2e_g=5.0, partition="cpu", account="a", user="y",
              token="carbond:co2e_g=5"),
        Entry(job_id="3", state=L.ACCOUNTED, energy_j=2.0, co2e_g=0.5, partition="gpu", account="b", user="x"),
        Entry(job_id="4", state=L.NOT_STARTED, partition="cpu", account="a", user="x"),
        Entry.dead("5", "victoriametrics unreachable"),
    ])
    led.mark_written("1")
    led.mark_unwritable("2", "would-mangle")
    yield led
    led.close()


def test_resume_equals_the_ledger(filled_ledger):
    reg = CollectorRegistry()
    m = Metrics(reg, "c1")
    m.resume(filled_ledger)
    assert value(reg, "carbond_energy_joules_total", cluster="c1", partition="cpu", account="a") == 1500.0
    assert value(reg, "carbond_emissions_grams_total", cluster="c1", partition="gpu", account="b") == 0.5
    assert value(reg, "carbond_jobs_total", outcome="accounted") == 3
    assert value(reg, "carbond_jobs_total", outcome="not-started") == 1
    assert value(reg, "carbond_jobs_total", outcome="dead") == 1
    assert value(reg, "carbond_jobs_total", outcome="zero-length") == 0
    assert value(reg, "carbond_writes_skipped_total", reason="would-mangle") == 1
    total = sum(t.grams for t in filled_ledger.totals().values())
    emitted = sum(s.value for mf in reg.collect() if mf.name == "carbond_emissions_grams"
                  for s in mf.samples if s.name.endswith("_total"))
    assert emitted == total == 15.5


def test_accounted_summary_matches_the_ledger(filled_ledger):
    m = Metrics(CollectorRegistry(), "testcl")
    m.resume(filled_ledger)
    jobs = sum(t.jobs for t in filled_ledger.totals().values())
    grams = sum(t.grams for t in filled_ledger.totals().values())
    assert m.accounted() == (pytest.approx(jobs), pytest.approx(grams))
    assert Metrics(CollectorRegistry(), "testcl").accounted() == (0.0, 0.0)


def test_per_user_label(filled_ledger):
    reg = CollectorRegistry()
    Metrics(reg, "c1", per_user=True).resume(filled_ledger)
    assert value(reg, "carbond_energy_joules_total", cluster="c1", partition="cpu", account="a", user="y") == 500.0
    assert reg.get_sample_value("carbond_energy_joules_total", {"cluster": "c1", "partition": "cpu", "account": "a"}) \
        is None


def test_recorded_counts_only_new_entries_and_matches_a_restart(tmp_path):
    entries = [Entry(job_id=str(i), state=L.PENDING_WRITE, energy_j=3.6e6, co2e_g=200.0, partition="p", account="a",
                     user="u", token="carbond:co2e_g=200") for i in range(3)]
    entries.append(Entry(job_id="9", state=L.ZERO_LENGTH, partition="p", account="a", user="u"))
    reg = CollectorRegistry()
    m = Metrics(reg, "c1")
    with Ledger(tmp_path, "c1") as led:
        m.resume(led)
        m.recorded(entries, led.record_many(entries))
        m.recorded(entries, led.record_many(entries))  # the same spool records again: nothing new
        assert value(reg, "carbond_emissions_grams_total", cluster="c1", partition="p", account="a") == 600.0
        assert value(reg, "carbond_jobs_total", outcome="zero-length") == 1
        before = {n: value(reg, n, **lb) for n, lb in _SERIES}
    restarted = CollectorRegistry()
    with Ledger(tmp_path, "c1") as led:
        Metrics(restarted, "c1").resume(led)
        for name, labels in _SERIES:
            assert value(restarted, name, **labels) == before[name]


_SERIES = [("carbond_emissions_grams_total", {"cluster": "c1", "partition": "p", "account": "a"}),
           ("carbond_energy_joules_total", {"cluster": "c1", "partition": "p", "account": "a"}),
           ("carbond_jobs_total", {"outcome": "accounted"})]


def test_another_writer_shows_in_the_running_daemons_metrics_without_a_restart(tmp_path):
    reg = CollectorRegistry()
    with Ledger(tmp_path, "c1") as mine, Ledger(tmp_path, "c1") as backfill:
        Metrics(reg, "c1").resume(mine)
        assert value(reg, "carbond_jobs_total", outcome="accounted") == 0
        backfill.record_many([Entry(job_id="7", state=L.ACCOUNTED, energy_j=10.0, co2e_g=1.0, partition="p",
                                    account="a", pue=1.4)])
        backfill.record_many([Entry(job_id="8", state=L.PENDING_WRITE, energy_j=5.0, co2e_g=2.0, partition="p",
                                    account="a", token="carbond:co2e_g=2")])
        backfill.mark_unwritable("8", "sacctmgr refused: sacctmgr -i modify job where jobid=8 ...")
        time.sleep(1.1)  # the scrape snapshot is cached for a second
        assert value(reg, "carbond_jobs_total", outcome="accounted") == 2
        assert value(reg, "carbond_emissions_grams_total", cluster="c1", partition="p", account="a") == 3.0
        # a free-text reason from an older ledger still lands on a fixed label
        assert value(reg, "carbond_writes_skipped_total", reason="refused") == 1
        assert mine.pue_of("7") == 1.4 and mine.pue_of("8") is None


def test_health_gauges_and_latency():
    reg = CollectorRegistry()
    m = Metrics(reg, "c1")
    assert math.isnan(value(reg, "carbond_grid_intensity_grams_per_kwh"))
    assert value(reg, "carbond_last_success_timestamp_seconds", target="intensity") == 0
    m.set_backlog(4, 12.5)
    m.set_dead_letters(2)
    m.set_intensity(182.0)
    m.success("victoriametrics", when=1700000000.0)
    m.written(end_time=1000.0, now=1003.5)
    m.write_skipped("foreign-payload")
    assert value(reg, "carbond_backlog_jobs") == 4 and value(reg, "carbond_backlog_oldest_seconds") == 12.5
    m.set_backlog(0, 99.0)
    assert value(reg, "carbond_backlog_oldest_seconds") == 0
    assert value(reg, "carbond_dead_letters") == 2 and value(reg, "carbond_grid_intensity_grams_per_kwh") == 182
    assert value(reg, "carbond_last_success_timestamp_seconds", target="victoriametrics") == 1700000000.0
    assert value(reg, "carbond_last_success_timestamp_seconds", target="slurmdbd") == 1003.5
    assert value(reg, "carbond_processing_latency_seconds_bucket", le="5.0") == 1
    assert value(reg, "carbond_processing_latency_seconds_bucket", le="2.0") == 0
    assert value(reg, "carbond_writes_skipped_total", reason="foreign-payload") == 1
    with pytest.raises(ValueError, match="unknown target"):
        m.success("mysql")


def test_registries_are_independent():
    a, b = CollectorRegistry(), CollectorRegistry()
    Metrics(a, "c1").add("p", "a", "u", 1.0, 1.0)
    Metrics(b, "c1")  # no "Duplicated timeseries" error: nothing global
    assert value(b, "carbond_energy_joules_total", cluster="c1", partition="p", account="a") == 0


def test_exposition_is_clean_under_promtool(filled_ledger):
    reg = CollectorRegistry()
    m = Metrics(reg, "c1", per_user=True)
    m.resume(filled_ledger)
    m.written(end_time=1.0, now=3.0)
    promtool_check(generate_latest(reg))


@pytest.mark.parametrize("listen, expected", [("127.0.0.1:9847", ("127.0.0.1", 9847)), ("[::1]:80", ("::1", 80)),
                                              (":9847", ("0.0.0.0", 9847))])
def test_parse_listen(listen, expected):
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("bad", ["9847", "host:", "host:port", "h:70000"])
def test_parse_listen_rejects(bad):
    with pytest.raises(ConfigError, match="metrics.listen"):
        parse_listen(bad)


def test_serve_real_http_and_promtool(filled_ledger):
    reg = CollectorRegistry()
    Metrics(reg, "c1").resume(filled_ledger)
    server = serve("127.0.0.1:0", reg)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback test server
            body = resp.read()
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    finally:
        server.shutdown()
        server.server_close()
    text = body.decode()
    assert 'carbond_energy_joules_total{account="a",cluster="c1",partition="cpu"} 1500.0' in text
    assert 'carbond_jobs_total{outcome="accounted"} 3.0' in text
    promtool_check(body)


def test_gpu_and_unattributed_energy_equal_the_ledger_whoever_wrote_it(tmp_path):
    """Issue 8's totals follow h1's rule: read from the ledger at scrape time, so the daemon's own
    add_gpu/add_unattributed (and idle.resume_metrics at start) never count twice, and another
    writer (`carbond idle --write`, a backfill) shows without a restart."""
    from carbond.config import from_mapping
    from carbond.footprint import JobFootprint, NodeEnergy
    from carbond.idle import resume_metrics
    from carbond.jobs import Job
    from carbond.ledger_columns import after_record, connect, record_unattributed

    cfg = from_mapping({"cluster": "c1", "state_dir": str(tmp_path)})
    reg = CollectorRegistry()
    m = Metrics(reg, "c1")
    job = Job("1", 0.0, 3600.0, ("g1",), (8.0,), gpus=1, partition="gpu", account="a", user="u")
    fp = JobFootprint("1", "ok", energy_kwh=0.325, co2e_g=32.5, pue=1.0, method="measured", coverage=1.0,
                      nodes=(NodeEnergy("g1", 0.325, 0.125),), gpu_energy_kwh=0.25)
    with Ledger(tmp_path, "c1") as led:
        m.resume(led)
        entries = [Entry.from_footprint(job, fp)]
        new = led.record_many(entries)
        m.recorded(entries, new)
        after_record(tmp_path, cfg, [(job, fp)], new, m)
        after_record(tmp_path, cfg, [(job, fp)], [False], m)  # a repeat: not new, nothing added
        db = connect(tmp_path)
        record_unattributed(db, "c1", [("g1", 0, "gpu", "", 1000.0), ("n1", 0, "cpu", "", 500.0)])
        m.add_unattributed("gpu", 1000.0)  # what close_and_record does after recording
        resume_metrics(db, "c1", m)  # and a daemon start
        m.totals.invalidate()
        gpu = value(reg, "carbond_gpu_energy_joules_total", cluster="c1", partition="gpu", account="a")
        assert gpu == pytest.approx(0.25 * 3.6e6)
        assert value(reg, "carbond_unattributed_energy_joules_total", cluster="c1", partition="gpu") == 1000.0
        assert value(reg, "carbond_unattributed_energy_joules_total", cluster="c1", partition="cpu") == 500.0
        # another writer closes a range again (a re-run replaces its rows): the metric follows the ledger
        record_unattributed(db, "c1", [("n1", 0, "cpu", "", 700.0)])
        db.close()
        m.totals.invalidate()
        assert value(reg, "carbond_unattributed_energy_joules_total", cluster="c1", partition="cpu") == 700.0
        restarted = CollectorRegistry()
        Metrics(restarted, "c1").resume(led)
        assert value(restarted, "carbond_gpu_energy_joules_total", cluster="c1", partition="gpu", account="a") == gpu


def test_gpu_and_unattributed_count_in_memory_without_a_ledger():
    reg = CollectorRegistry()
    m = Metrics(reg, "c1")
    m.add_gpu("gpu", "a", "u", 5.0)
    m.add_gpu("gpu", "a", "v", 7.0)
    m.add_unattributed("cpu", 3.0)
    assert value(reg, "carbond_gpu_energy_joules_total", cluster="c1", partition="gpu", account="a") == 12.0
    assert value(reg, "carbond_unattributed_energy_joules_total", cluster="c1", partition="cpu") == 3.0


def _pending(i: int, account: str = "a", user: str = "u", partition: str = "p") -> Entry:
    return Entry(job_id=str(i), state=L.PENDING_WRITE, energy_j=3.6e6, co2e_g=10.0, partition=partition,
                 account=account, user=user, token="carbond:co2e_g=10")


def test_every_total_is_monotonic_across_requeues_and_restarts(tmp_path):
    # issue 16: carbond_writes_skipped_total{reason="gave-up"} went 5 -> 0 once re-queued jobs were
    # written, and carbond_jobs_total{outcome="dead"} went down when a dead letter was accounted
    with Ledger(tmp_path, "c1") as led:
        reg = CollectorRegistry()
        Metrics(reg, "c1").resume(led)
        led.record_many([_pending(i) for i in range(5)] + [Entry("9", L.DEAD, reason="x")])
        for i in range(5):
            led.mark_unwritable(str(i), "gave-up")
        assert value(reg, "carbond_writes_skipped_total", reason="gave-up") == 5 and value(reg, "carbond_jobs_total", outcome="dead") == 1
        for i in range(5):  # their dead letters are re-queued and written
            assert led.republish(str(i))
            led.mark_written(str(i))
        led.record_many([_pending(9)])  # the dead job accounted after all
        time.sleep(1.1)
        assert value(reg, "carbond_writes_skipped_total", reason="gave-up") == 5
        assert value(reg, "carbond_writes_unwritable", reason="gave-up") == 0
        assert value(reg, "carbond_jobs_total", outcome="dead") == 1
        assert value(reg, "carbond_jobs_total", outcome="accounted") == 6
        assert value(reg, "carbond_ledger_jobs", state="dead") == 0 and value(reg, "carbond_ledger_jobs", state="written") == 5
        led.mark_unwritable("9", "refused")
    restarted = CollectorRegistry()
    with Ledger(tmp_path, "c1") as led:
        Metrics(restarted, "c1").resume(led)
        assert value(restarted, "carbond_writes_skipped_total", reason="gave-up") == 5
        assert value(restarted, "carbond_writes_skipped_total", reason="refused") == 1
        assert value(restarted, "carbond_jobs_total", outcome="dead") == 1
        assert value(restarted, "carbond_ledger_jobs", state="unwritable") == 1


def test_a_ledger_from_before_the_event_counts_starts_them_from_its_rows(tmp_path):
    with Ledger(tmp_path, "c1") as led:
        led.record_many([_pending(1), Entry("2", L.DEAD, reason="x")])
        led.mark_unwritable("1", "refused")
    import sqlite3

    with sqlite3.connect(tmp_path / "ledger.sqlite") as db:  # what an earlier release left
        for t in ("jobs_events_insert", "jobs_events_delete", "jobs_events_update"):
            db.execute(f"DROP TRIGGER {t}")
        db.execute("DELETE FROM counts WHERE name LIKE 'event:%' OR name = 'state'")
    reg = CollectorRegistry()
    with Ledger(tmp_path, "c1") as led:
        Metrics(reg, "c1").resume(led)
        assert value(reg, "carbond_writes_skipped_total", reason="refused") == 1
        assert value(reg, "carbond_jobs_total", outcome="dead") == 1
        assert value(reg, "carbond_ledger_jobs", state="unwritable") == 1


def test_a_counter_never_goes_down_even_when_an_operator_deletes_rows(tmp_path):
    with Ledger(tmp_path, "c1") as led:
        reg = CollectorRegistry()
        Metrics(reg, "c1").resume(led)
        led.record_many([_pending(1), _pending(2)])
        assert value(reg, "carbond_emissions_grams_total", cluster="c1", partition="p", account="a") == 20.0
        led._db.execute("DELETE FROM jobs WHERE job_id='2'")
        time.sleep(1.1)
        assert value(reg, "carbond_emissions_grams_total", cluster="c1", partition="p", account="a") == 20.0


def test_label_values_are_capped_with_an_other_bucket_and_the_first_seen_kept(tmp_path):
    # issue 16: where associations are not enforced, every account string a user submits became a series
    clock = iter(range(1000, 10_000))
    with Ledger(tmp_path, "c1", clock=lambda: float(next(clock))) as led:
        reg = CollectorRegistry()
        Metrics(reg, "c1", per_user=True, max_label_values=3).resume(led)
        led.record_many([_pending(i, account=f"acct{i:03d}", user=f"u{i % 2}") for i in range(2)])
        assert value(reg, "carbond_emissions_grams_total", cluster="c1", partition="p", account="acct000",
                     user="u0") == 10.0
        led.record_many([_pending(i, account=f"zz{i:03d}" if i % 2 else f"acct{i:03d}") for i in range(2, 200)])
        time.sleep(1.1)
        text = generate_latest(reg).decode()
        accounts = {line.split('account="')[1].split('"')[0] for line in text.splitlines()
                    if line.startswith("carbond_emissions_grams_total")}
        assert accounts == {"acct000", "acct001", "acct002", "_other"}
        total = sum(s.value for m in reg.collect() if m.name == "carbond_emissions_grams" for s in m.samples
                    if s.name.endswith("_total"))
        assert math.isclose(total, 200 * 10.0)  # nothing lost, only summed
        promtool_check(generate_latest(reg))
    restarted = CollectorRegistry()
    with Ledger(tmp_path, "c1") as led:
        Metrics(restarted, "c1", per_user=True, max_label_values=3).resume(led)
        assert value(restarted, "carbond_emissions_grams_total", cluster="c1", partition="p", account="acct002",
                     user="u") == 10.0  # the same values keep their series after a restart
        assert value(restarted, "carbond_emissions_grams_total", cluster="c1", partition="p", account="_other",
                     user="u") == 197 * 10.0


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_OPS = st.lists(st.tuples(st.sampled_from(["pending", "dead", "unwritable", "republish", "written", "accounted",
                                           "zero", "delete"]),
                          st.integers(0, 5), st.sampled_from(["gave-up", "refused", "too-long", "free text"])),
                max_size=40)


@settings(max_examples=60, deadline=None)
@given(_OPS)
def test_no_total_ever_decreases_whatever_happens_to_the_ledger(tmp_path_factory, ops):
    d = tmp_path_factory.mktemp("mono")
    seen: dict[tuple, float] = {}

    def scrape(reg):
        for m in reg.collect():
            for s in m.samples:
                if s.name.endswith("_total"):
                    key = (s.name, tuple(sorted(s.labels.items())))
                    assert s.value >= seen.get(key, 0.0), (key, s.value, seen.get(key))
                    seen[key] = s.value

    with Ledger(d, "c1") as led:
        reg = CollectorRegistry()
        m = Metrics(reg, "c1")
        m.resume(led)
        for op, i, reason in ops:
            job = str(i)
            if op == "pending":
                led.record_many([_pending(i)])
            elif op == "dead":
                led.record_many([Entry(job, L.DEAD, reason="x")])
            elif op == "unwritable":
                led.mark_unwritable(job, reason)
            elif op == "republish":
                led.republish(job)
            elif op == "written":
                led.mark_written(job)
            elif op == "accounted":
                led.record_many([Entry(job, L.ACCOUNTED, 1.0, 1.0, "p", "a", "u")])
            elif op == "zero":
                led.record_many([Entry(job, L.ZERO_LENGTH)])
            else:
                led._db.execute("DELETE FROM jobs WHERE job_id=?", (job,))  # an operator's sqlite3
            m.totals.invalidate()
            scrape(reg)
            states = dict(led._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
            assert {s: int(value(reg, "carbond_ledger_jobs", state=s)) for s in L.STATES} == {
                s: states.get(s, 0) for s in L.STATES}  # the gauges are the ledger now
    restarted = CollectorRegistry()
    with Ledger(d, "c1") as led:
        Metrics(restarted, "c1").resume(led)
        for (name, labels), v in seen.items():
            if name in ("carbond_jobs_total", "carbond_writes_skipped_total"):
                assert value(restarted, name, **dict(labels)) >= v  # events survive a restart


def test_the_openmetrics_exposition_has_no_family_twice(tmp_path):
    # a gauge named like a counter's family (carbond_jobs vs carbond_jobs_total) breaks an OpenMetrics scrape
    from prometheus_client.openmetrics.exposition import generate_latest as om_latest
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    with Ledger(tmp_path, "c1") as led:
        reg = CollectorRegistry()
        Metrics(reg, "c1").resume(led)
        led.record_many([_pending(1), Entry("2", L.DEAD, reason="x")])
        families = [f.name for f in text_string_to_metric_families(om_latest(reg).decode())]
    assert len(families) == len(set(families)) and {"carbond_jobs", "carbond_ledger_jobs"} <= set(families)


def test_dropped_samples_counter_follows_the_clients_count_and_never_decreases():
    reg = CollectorRegistry()
    m = Metrics(reg, "c1")
    m.samples_dropped("node", 3)
    m.samples_dropped("node", 3)  # nothing new
    m.samples_dropped("gpu", 2)
    m.samples_dropped("node", 1)  # a new client (restart of a command) counts from 0: never a decrease
    assert value(reg, "carbond_power_samples_dropped_total", meter="node") == 3
    assert value(reg, "carbond_power_samples_dropped_total", meter="gpu") == 2
