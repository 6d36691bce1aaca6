"""Issue 16, items 3 and 5 for VictoriaMetrics and the intensity providers: answers bounded in
size and total time, numbers validated at the boundary, no token sent on to another host.

Each test serves the bad answer from a real server on loopback (a raw socket server that can
trickle or flood, or the JSON stand-in of fixtures_http) and checks the outcome the daemon
relies on: an outage (VictoriaError / IntensityUnavailable, retried, never a poison record)
or a dropped and counted sample; never a wrong number, never a crash of another type.
"""

from __future__ import annotations

import json
import math
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from carbond.config import IntensityConfig, VictoriaConfig, from_mapping
from carbond.daemon import error_kind
from carbond.errors import IntensityUnavailable, VictoriaError
from carbond.intensity import IntensitySource, Reading
from carbond.intensity.electricitymaps import ElectricityMaps
from carbond.intensity.promql import PrometheusIntensity
from carbond.intensity.uk import UKCarbonIntensity
from carbond.times import iso
from carbond.victoria import VictoriaClient, power_bound

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
SLOT = 1_700_001_000 // 1800 * 1800
TOKEN = "em-s3cr3t-token"


# -- a raw loopback HTTP server: answers written byte by byte as a test wants ---------------------
class RawHTTP:
    """Reads each request (headers and Content-Length body), then lets `answer(conn)` write."""

    def __init__(self, answer: Callable[[socket.socket], None]) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = next((int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")), 0)
                while len(body) < length:
                    body += conn.recv(65536)
                self.requests.append(head)
                self.answer(conn)
            except OSError:
                pass  # the client gave up (its deadline shut the socket down): that is the point

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


@pytest.fixture
def raw() -> Iterator[Callable[[Callable[[socket.socket], None]], RawHTTP]]:
    servers: list[RawHTTP] = []

    def start(answer: Callable[[socket.socket], None]) -> RawHTTP:
        servers.append(RawHTTP(answer))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def trickle(head: bytes, body: bytes = b"", every: float = 0.1, most: int = 300) -> Callable[[socket.socket], None]:
    """Send `head` at once, then `body` one byte every `every` seconds (at most `most` bytes: bounded)."""

    def answer(conn: socket.socket) -> None:
        conn.sendall(head)
        for b in body[:most]:
            conn.sendall(bytes([b]))
            time.sleep(every)

    return answer


def whole(status: str, body: bytes, ctype: str = "application/json", extra: str = "") -> Callable[[socket.socket], None]:
    def answer(conn: socket.socket) -> None:
        conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n{extra}"
                     "Connection: close\r\n\r\n".encode() + body)

    return answer


def export_line(metric: object, values: list, timestamps: list | None = None) -> bytes:
    ts = timestamps if timestamps is not None else [(T0 + 30 * i) * 1000 for i in range(len(values))]
    return json.dumps({"metric": metric, "values": values, "timestamps": ts}).encode() + b"\n"


def vm_client(url: str, **kw) -> VictoriaClient:
    return VictoriaClient(VictoriaConfig(url=url, query="p", **kw))


# -- VictoriaMetrics: total deadline -------------------------------------------------------------
@pytest.mark.parametrize("where", ["body", "headers"])
def test_vm_answer_trickled_past_the_deadline_is_an_outage_on_time(raw, where):
    """A byte every 0.1 s kept a per-read timeout of 1.5 s happy for ever (here: 30 s, bounded)."""
    line = export_line({"alias": "n1"}, [100, 200])
    if where == "body":
        server = raw(trickle(f"HTTP/1.1 200 OK\r\nContent-Length: {len(line) * 100}\r\n\r\n".encode(), line * 100))
    else:
        server = raw(trickle(b"HTTP/1.1 200 OK\r\n", b"X-Slow: " + b"a" * 1000))
    t0 = time.monotonic()
    with pytest.raises(VictoriaError, match=r"no complete answer within 1.5 s \(victoriametrics.timeout\)") as err:
        vm_client(server.url, timeout=1.5).fetch_power(["n1"], T0, T0 + 60)
    assert time.monotonic() - t0 < 3.5
    assert error_kind(err.value) == "victoriametrics"


def test_vm_deadline_leaves_a_fast_answer_alone_and_reuses_its_connection(raw):
    line = export_line({"alias": "n1"}, [100, 200])
    server = raw(whole("200 OK", line))
    c = vm_client(server.url, timeout=1.0)
    for _ in range(3):
        got = c.fetch_power(["n1"], T0, T0 + 60)
        assert got["n1"][1].tolist() == [100.0, 200.0]
    time.sleep(1.3)  # past every deadline: nothing fires late on a finished request
    assert c.fetch_power(["n1"], T0, T0 + 60)["n1"][1].tolist() == [100.0, 200.0]


# -- VictoriaMetrics: size limits ------------------------------------------------------------------
def test_vm_line_over_its_limit_is_refused_while_it_streams(raw):
    big = b'{"metric":{"alias":"n1"},"values":[' + b"1," * 5000 + b"1]"  # no newline, no end
    server = raw(whole("200 OK", big))
    with pytest.raises(VictoriaError, match=r"longer than 4096 bytes \(victoriametrics.max_line_bytes\)"):
        vm_client(server.url, max_line_bytes=4096).fetch_power(["n1"], T0, T0 + 60)


def test_vm_answer_over_its_limit_is_refused(raw):
    server = raw(whole("200 OK", export_line({"alias": "n1"}, [1] * 50) * 100))
    with pytest.raises(VictoriaError, match=r"larger than 10000 bytes \(victoriametrics.max_response_bytes"):
        vm_client(server.url, max_response_bytes=10_000).fetch_power(["n1"], T0, T0 + 60)


def test_vm_json_answer_over_its_limit_is_refused(raw):
    body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"alias": f"n{i}"}, "value": [T0, str(T0)]} for i in range(2000)]}}).encode()
    server = raw(whole("200 OK", body))
    with pytest.raises(VictoriaError, match="larger than 4096 bytes"):
        vm_client(server.url, max_line_bytes=4096).latest_sample(["n1"], T0)


MEASURE = textwrap.dedent("""
    import resource, sys
    from carbond.config import VictoriaConfig
    from carbond.errors import VictoriaError
    from carbond.victoria import VictoriaClient
    c = VictoriaClient(VictoriaConfig(url=sys.argv[1], query="p", timeout=25))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        c.fetch_power(["n1"], 1700000000, 1700000060)
        print("no error")
    except VictoriaError as exc:
        print("VictoriaError", str(exc)[:100])
    print(before // 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
""")


@pytest.mark.parametrize("shape", ["nested", "truncated"])
def test_vm_16_mb_malformed_line_costs_bounded_memory(raw, shape):
    """A 16 MB line of [0],[0],... went to the plain-JSON fallback: +390 MB peak RSS (issue: 548 MB)."""
    n = 16_000_000 // 4
    if shape == "nested":
        line = b'{"metric":{"alias":"n1"},"values":[' + b"[0]," * (n - 1) + b'[0]],"timestamps":[1700000000000]}\n'
    else:
        line = b'{"metric":{"alias":"n1"},"values":[' + b"123," * n + b'"timestamps":[1700000000000'
    server = raw(whole("200 OK", line))
    out = subprocess.run([sys.executable, "-c", MEASURE, server.url], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    verdict, rss = out.stdout.splitlines()
    before, after = map(int, rss.split())
    assert verdict.startswith("VictoriaError cannot parse a VictoriaMetrics export line of 16"), verdict
    assert after - before < 100, f"peak RSS {before} MB -> {after} MB"


# -- VictoriaMetrics: values and junk --------------------------------------------------------------
def test_power_outside_its_bounds_is_dropped_and_counted(raw):
    """-300 W gave energy_kwh=-0.3; inf and 1e9 W were used as they came."""
    values = [500, -300, "Infinity", 1e9, 200, "NaN", 100_000, 100_001]
    server = raw(whole("200 OK", export_line({"alias": "n1"}, values)))
    c = vm_client(server.url)
    t, w = c.fetch_power(["n1"], T0, T0 + 600)["n1"]
    assert w.tolist() == [500.0, 200.0, 100_000.0]
    assert t.tolist() == [T0, T0 + 120, T0 + 180]
    assert c.dropped_samples == 5


def test_power_bound_follows_the_node_class(raw):
    cfg = from_mapping({"victoriametrics": {"url": "http://x", "max_watts": 50_000},
                        "nodes": [{"match": "cpu[1-2]", "max_watts": 450}, {"match": "big1"}]})
    bound = power_bound(cfg)
    assert (bound("cpu1"), bound("big1"), bound("other")) == (4500, 50_000, 50_000)
    body = export_line({"alias": "cpu1"}, [4500, 4501, 300]) + export_line({"alias": "big1"}, [4501, 50_001])
    server = raw(whole("200 OK", body))
    c = VictoriaClient(VictoriaConfig(url=server.url, query="p"), max_watts=bound)
    got = c.fetch_power(["cpu1", "big1"], T0, T0 + 600)
    assert got["cpu1"][1].tolist() == [4500.0, 300.0] and got["big1"][1].tolist() == [4501.0]
    assert c.dropped_samples == 2


def test_scale_applies_before_the_bound(raw):
    server = raw(whole("200 OK", export_line({"alias": "n1"}, [400_000, 200_000_000])))  # milliwatts
    c = vm_client(server.url, scale=0.001)
    assert c.fetch_power(["n1"], T0, T0 + 600)["n1"][1].tolist() == [400.0]
    assert c.dropped_samples == 1


@pytest.mark.parametrize("line", [
    export_line({"alias": 7}, [1]),  # a label that is not a string
    export_line({"alias": ["n1"]}, [1]),
    export_line(["alias", "n1"], [1]),
    export_line({"alias": "n1"}, [1], [1e400]),  # a timestamp of 1e400 (inf in Python's json)
    export_line({"alias": "n1"}, [1], [10**30]),
    export_line({"alias": "n1"}, [1], ["1700000000000"]),
    export_line({"alias": "n1"}, [[1]]),
    b'{"metric":{"alias":"n1"},"values":[1],"timestamps":[1700000000000]' + b"[" * 100_000 + b"\n",
    b'{"metric":' + b"[" * 100_000 + b'"values":[1],"timestamps":[1700000000000]}\n',
    b"\xff\xfe garbage\n",
])
def test_junk_export_line_is_an_outage_never_a_type_error(raw, line):
    server = raw(whole("200 OK", line))
    with pytest.raises(VictoriaError) as err:
        vm_client(server.url).fetch_power(["n1"], T0, T0 + 600)
    assert error_kind(err.value) == "victoriametrics"


@pytest.mark.parametrize("result", [
    [{"metric": {"alias": 1}, "value": [T0, "1"]}],
    [{"metric": {"alias": "n1"}, "value": [T0, ["x"]]}],
    [{"metric": {"alias": "n1"}, "value": "x"}],
    ["junk"],
    {"not": "a list"},
])
def test_junk_query_answer_is_an_outage(raw, result):
    body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()
    server = raw(whole("200 OK", body))
    c = vm_client(server.url)
    with pytest.raises(VictoriaError):
        c.latest_sample(["n1"], T0)
    with pytest.raises(VictoriaError):
        c.query_range("x", T0, T0 + 60, 60)


def test_deeply_nested_json_answer_is_an_outage(raw):
    server = raw(whole("200 OK", b"[" * 200_000))
    with pytest.raises(VictoriaError, match="invalid JSON"):
        vm_client(server.url).latest_sample(["n1"], T0)


# -- intensity: values -----------------------------------------------------------------------------
def uk_answer(value: str, frm: str | None = None) -> bytes:
    frm = frm or json.dumps(iso(SLOT)[:16] + "Z")
    return ('{"data":[{"from":' + frm + ',"to":"x","intensity":{"forecast":' + value + ',"actual":null}}]}').encode()


BAD_VALUES = ["-250", "1e400", "-1e400", '"250"', "[250]", "1" + "0" * 400, "true", "2000.5", '{"v":1}']


@pytest.mark.parametrize("value", BAD_VALUES)
def test_uk_bad_value_is_an_outage_of_the_provider(raw, value):
    """An intensity of -250 gave co2e_g=-75 and gkwh=-250 in the token."""
    server = raw(whole("200 OK", uk_answer(value)))
    src = IntensitySource(UKCarbonIntensity(requests.Session(), server.url, timeout=5), None, clock=lambda: SLOT + 10 * 86400)
    with pytest.raises(IntensityUnavailable) as err:
        src.lookup(SLOT, SLOT + 1800)
    assert error_kind(err.value) == "intensity"


def test_uk_good_value_passes_and_a_later_bad_batch_serves_the_cache_stale(raw):
    answers = [uk_answer("250"), uk_answer("-250")]
    server = raw(lambda conn: whole("200 OK", answers.pop(0))(conn))
    now = [SLOT + 3600.0]  # young: the value is provisional and re-fetched after refresh_seconds
    src = IntensitySource(UKCarbonIntensity(requests.Session(), server.url, timeout=5), None, clock=lambda: now[0],
                          refresh_seconds=60)
    assert src.lookup(SLOT, SLOT + 1800).values.tolist() == [250.0]
    now[0] += 120
    table = src.lookup(SLOT, SLOT + 1800)
    assert table.values.tolist() == [250.0] and table.stale.tolist() == [True]
    assert len(server.requests) == 2


@pytest.mark.parametrize("frm", ["1e400", '"1e400"', "null", "[1]", '"2023-11-14T22:15Z"', '"' + "9" * 400 + '"'])
def test_uk_bad_timestamp_is_an_outage(raw, frm):
    server = raw(whole("200 OK", uk_answer("250", frm)))
    with pytest.raises(IntensityUnavailable):
        IntensitySource(UKCarbonIntensity(requests.Session(), server.url, timeout=5), None).lookup(SLOT, SLOT + 1800)


@pytest.mark.parametrize("value", BAD_VALUES)
def test_electricitymaps_bad_value_is_an_outage(raw, value):
    body = ('{"zone":"DE","history":[{"datetime":"' + iso(SLOT) + '","carbonIntensity":' + value + "}]}").encode()
    server = raw(whole("200 OK", body))
    p = ElectricityMaps(requests.Session(), "DE", TOKEN, server.url, timeout=5, clock=lambda: SLOT + 3600)
    with pytest.raises(IntensityUnavailable):
        IntensitySource(p, None).lookup(SLOT, SLOT + 1800)


@pytest.mark.parametrize("values", [[[SLOT + 1800, "-250"]], [[SLOT + 1800, "+Inf"]], [[SLOT + 1800, "2500"]]])
def test_prometheus_bad_value_is_an_outage(raw, values):
    body = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {"zone": "gb"}, "values": values}]}}).encode()
    server = raw(whole("200 OK", body))
    p = PrometheusIntensity(vm_client(server.url), "grid")
    src = IntensitySource(p, None)
    if values[0][1] == "+Inf":  # not finite: no reading (a hole, so the job waits), never a value
        assert math.isnan(src.lookup(SLOT, SLOT + 1800).values[0])
        return
    with pytest.raises(IntensityUnavailable):
        src.lookup(SLOT, SLOT + 1800)


def test_prometheus_non_string_label_is_an_outage(raw):
    body = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {"zone": 7}, "values": [[SLOT + 1800, "250"]]}]}}).encode()
    server = raw(whole("200 OK", body))
    with pytest.raises(IntensityUnavailable):
        IntensitySource(PrometheusIntensity(vm_client(server.url), "grid"), None).lookup(SLOT, SLOT + 1800)


def test_bound_is_configurable(raw):
    server = raw(lambda conn: whole("200 OK", uk_answer("2500"))(conn))
    ic = IntensityConfig(url=server.url, timeout=5, max_g_per_kwh=3000)
    p = UKCarbonIntensity.from_config(ic, requests.Session())
    assert IntensitySource(p, None, max_value=3000).lookup(SLOT, SLOT + 1800).values.tolist() == [2500.0]
    with pytest.raises(IntensityUnavailable, match="intensity.max_g_per_kwh"):
        IntensitySource(p, None).lookup(SLOT, SLOT + 1800)  # the source's own bound (2000) holds too
    with pytest.raises(IntensityUnavailable, match=r"implausible intensity 2500.0 g/kWh .* \(allowed 0..2000"):
        UKCarbonIntensity(requests.Session(), server.url, timeout=5).fetch(SLOT, SLOT + 1800)


def test_providers_check_their_own_answers_for_callers_without_a_source(raw, tmp_path):
    """`carbond estimate` reads forecasts from the provider itself, past IntensitySource."""
    from carbond.intensity.csvfile import CsvIntensity

    server = raw(lambda conn: whole("200 OK", b'{"history":[{"datetime":"' + iso(SLOT).encode()
                                                + b'","carbonIntensity":-250}]}')(conn))
    with pytest.raises(IntensityUnavailable, match="electricitymaps: implausible intensity -250.0"):
        ElectricityMaps(requests.Session(), "DE", TOKEN, server.url, timeout=5, clock=lambda: SLOT + 3600).fetch(SLOT, SLOT + 1800)
    f = tmp_path / "i.csv"
    f.write_text(f"from,to,intensity\n{iso(SLOT)},{iso(SLOT + 1800)},2500\n")
    with pytest.raises(IntensityUnavailable, match="i.csv: implausible intensity 2500.0"):
        CsvIntensity.from_config(IntensityConfig(provider="csv", path=str(f))).fetch(SLOT, SLOT + 1800)


def test_constant_above_the_bound_is_a_config_error():
    from carbond.errors import ConfigError

    with pytest.raises(ConfigError, match=r"intensity.value: above intensity.max_g_per_kwh"):
        from_mapping({"intensity": {"provider": "constant", "value": 2500}})
    assert from_mapping({"intensity": {"provider": "constant", "value": 2500, "max_g_per_kwh": 3000}})
    with pytest.raises(ConfigError, match="max_g_per_kwh: must be a finite number"):
        from_mapping({"intensity": {"max_g_per_kwh": float("nan")}})


# -- intensity: size and time ----------------------------------------------------------------------
def test_intensity_trickled_answer_is_cut_at_the_deadline(raw):
    body = uk_answer("250")
    server = raw(trickle(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode(), body))
    t0 = time.monotonic()
    with pytest.raises(IntensityUnavailable, match="no complete answer within 1.5 s"):
        UKCarbonIntensity(requests.Session(), server.url, timeout=1.5).fetch(SLOT, SLOT + 1800)
    assert time.monotonic() - t0 < 3.5


def test_intensity_trickled_headers_are_cut_at_the_deadline(raw):
    server = raw(trickle(b"HTTP/1.1 200 OK\r\n", b"X-Slow: " + b"a" * 1000))
    t0 = time.monotonic()
    with pytest.raises(IntensityUnavailable, match="within 1.5 s"):
        UKCarbonIntensity(requests.Session(), server.url, timeout=1.5).fetch(SLOT, SLOT + 1800)
    assert time.monotonic() - t0 < 3.5


def test_intensity_answer_over_its_limit_is_an_outage(raw):
    body = b'{"data":[' + b'{"from":"x"},' * 200_000 + b"{}]}"
    server = raw(whole("200 OK", body))
    with pytest.raises(IntensityUnavailable, match=r"larger than 1000000 bytes \(intensity.max_response_bytes\)"):
        UKCarbonIntensity(requests.Session(), server.url, timeout=5, max_bytes=1_000_000).fetch(SLOT, SLOT + 1800)


def test_intensity_limits_come_from_the_config():
    ic = IntensityConfig(provider="uk-carbon-intensity", max_response_bytes=1234, timeout=3)
    p = UKCarbonIntensity.from_config(ic, requests.Session())
    assert (p.max_bytes, p.timeout) == (1234, 3)


# -- Electricity Maps: the token stays on its host -------------------------------------------------
def test_electricitymaps_token_does_not_follow_a_redirect_to_another_host(raw):
    elsewhere = raw(whole("200 OK", b'{"history":[]}'))
    other_host = elsewhere.url.replace("127.0.0.1", "localhost")
    api = raw(whole("302 Found", b"", extra=f"Location: {other_host}/v3/carbon-intensity/history?zone=DE\r\n"))
    p = ElectricityMaps(requests.Session(), "DE", TOKEN, api.url, timeout=5, clock=lambda: SLOT + 3600)
    with pytest.raises(IntensityUnavailable, match="redirect to .* not followed") as err:
        p.fetch(SLOT, SLOT + 1800)
    assert TOKEN not in str(err.value)
    assert elsewhere.requests == []  # before: it got "auth-token: em-s3cr3t-token"


# -- intensity cache: a broken cache is bypassed ---------------------------------------------------
def test_corrupt_intensity_cache_is_bypassed_with_a_warning(raw, tmp_path, caplog):
    path = tmp_path / "intensity.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    server = raw(lambda conn: whole("200 OK", uk_answer("250"))(conn))
    src = IntensitySource(UKCarbonIntensity(requests.Session(), server.url, timeout=5), str(path))
    assert src.lookup(SLOT, SLOT + 1800).values.tolist() == [250.0]
    assert "intensity cached in memory only" in caplog.text


def test_intensity_cache_failing_at_run_time_is_bypassed(raw, tmp_path, caplog):
    path = tmp_path / "intensity.sqlite"
    server = raw(lambda conn: whole("200 OK", uk_answer("250"))(conn))
    src = IntensitySource(UKCarbonIntensity(requests.Session(), server.url, timeout=5), str(path),
                          clock=lambda: SLOT + 10 * 86400)
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE intensity")  # a reader's and a writer's sqlite error alike
    table = src.lookup(SLOT, SLOT + 1800)
    assert table.values.tolist() == [250.0]
    assert "cannot read the intensity cache" in caplog.text and "cannot write the intensity cache" in caplog.text


def test_implausible_cached_value_is_fetched_again(raw, tmp_path):
    path = tmp_path / "intensity.sqlite"
    server = raw(lambda conn: whole("200 OK", uk_answer("250"))(conn))
    p = UKCarbonIntensity(requests.Session(), server.url, timeout=5)
    IntensitySource(p, str(path)).close()
    with sqlite3.connect(path) as db:  # written by an older carbond that took any number
        db.execute("INSERT INTO intensity VALUES (?, ?, -250, 'actual', ?)", (p.cache_key, SLOT, SLOT + 10 * 86400))
    src = IntensitySource(p, str(path), clock=lambda: SLOT + 10 * 86400)
    assert src.lookup(SLOT, SLOT + 1800).values.tolist() == [250.0]
    assert len(server.requests) == 1


def test_readings_check_refuses_non_readings():
    from carbond.intensity import check_readings

    for bad in ([Reading(SLOT + 1, 1.0, "x")], [Reading(float(SLOT), 1.0, "x")], [(SLOT, 1.0)], "x",
                [Reading(900 * 10**9, -1.0, "x")], [Reading(-1800, 1e400, "x")]):
        with pytest.raises(IntensityUnavailable):
            check_readings("p", bad)
    check_readings("p", [Reading(SLOT, 0, "x"), Reading(SLOT, 2000.0, "x")])
