"""VictoriaClient against a real VictoriaMetrics (the `vm` fixture) and, for what single-node
VM ignores (tenant paths, credentials), against a tiny local server that records requests."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import numpy as np
import pytest
import requests
from fixtures_vm import free_port

from carbond.config import BasicAuth, VictoriaConfig
from carbond.errors import VictoriaError
from carbond.victoria import VictoriaClient, add_matcher, parse_export_line

T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
POWER = 'amperageProbeReading{amperageProbeLocationName="System Board Pwr Consumption"}'


def client(url: str, **kw) -> VictoriaClient:
    return VictoriaClient(VictoriaConfig(url=url, **kw))


# -- against the real VictoriaMetrics -----------------------------------------------------------
def test_round_trip_exact_values_and_millisecond_times(vm):
    node = vm.node("rt")
    t = [T0 + 0.001, T0 + 30.25, T0 + 60.999, T0 + 90]
    w = [312.5, 0.1, 120.0, 449.75]
    vm.import_series(node, t, w)
    vm.flush()
    got = client(vm.url).fetch_power([node], T0, T0 + 100)
    gt, gw = got[node]
    assert gt.dtype == np.float64 and gw.dtype == np.float64
    assert gt.tolist() == [T0 + 0.001, T0 + 30.25, T0 + 60.999, T0 + 90.0]
    assert gw.tolist() == w


def test_window_bounds_are_inclusive_and_exact_to_the_millisecond(vm):
    node = vm.node("win")
    vm.import_series(node, [T0, T0 + 10, T0 + 20, T0 + 30], [1, 2, 3, 4])
    vm.flush()
    c = client(vm.url)
    assert c.fetch_power([node], T0 + 10, T0 + 20)[node][1].tolist() == [2.0, 3.0]
    assert c.fetch_power([node], T0 + 10.001, T0 + 19.999) == {}
    assert c.fetch_power([node], T0 + 40, T0 + 50) == {}


def test_many_nodes_one_request(vm):
    nodes = [vm.node("many") for _ in range(60)]
    vm.import_lines(_lines(nodes, [T0, T0 + 30], lambda i: [100 + i, 200 + i]))
    vm.flush()
    c = client(vm.url)
    got = c.fetch_power(nodes, T0 - 1, T0 + 31)
    assert c.requests_made == 1
    assert sorted(got) == sorted(nodes)
    for i, n in enumerate(nodes):
        assert got[n][1].tolist() == [100 + i, 200 + i]


def test_chunks_return_every_sample_exactly_once(vm):
    """Samples every 5 s with some exactly on chunk edges (every 60 s), over 3 node groups."""
    nodes = [vm.node("chunk") for _ in range(5)]
    t = [T0 + k * 5 for k in range(121)]  # 600 s
    vm.import_lines(_lines(nodes, t, lambda i: [i * 1000 + k for k in range(121)]))
    vm.flush()
    c = client(vm.url, chunk_seconds=60, max_nodes_per_request=2)
    got = c.fetch_power(nodes, T0, T0 + 600)
    assert c.requests_made == 10 * 3  # 10 chunks (the last also holds T0+600, no request of its own) x 3 node groups
    for i, n in enumerate(nodes):
        gt, gw = got[n]
        assert gt.tolist() == [float(x) for x in t]
        assert gw.tolist() == [i * 1000 + k for k in range(121)]


def test_requests_grow_with_chunks_not_with_calls_per_job(vm):
    nodes = [vm.node("req") for _ in range(30)]
    vm.import_lines(_lines(nodes, [T0 + k * 60 for k in range(60)], lambda i: [float(i)] * 60))
    vm.flush()
    c = client(vm.url, chunk_seconds=1200, max_nodes_per_request=500)
    c.fetch_power(nodes, T0, T0 + 3600 - 1)  # 3 chunks; one call for every job of the batch
    assert c.requests_made == 3
    c.fetch_power(nodes[:1], T0, T0 + 3600 - 1)
    assert c.requests_made == 6  # another call costs chunks, never nodes x chunks


def test_node_names_with_regex_metacharacters(vm):
    tag = vm.node("re")
    odd = [f"{tag}.a", f"{tag}+b", f"{tag}(c)", f"{tag}[d]", f"{tag}|e", f"{tag}*", f"{tag}$^", f'{tag}"q', f"{tag}\\s"]
    decoys = [f"{tag}Xa", f"{tag}bb", f"{tag}c", f"{tag}e", f"{tag}"]
    allnodes = odd + decoys
    vm.import_lines(_lines(allnodes, [T0], lambda i: [float(i + 1)]))
    vm.flush()
    got = client(vm.url).fetch_power(odd, T0 - 1, T0 + 1)
    assert sorted(got) == sorted(odd)
    for i, n in enumerate(odd):
        assert got[n][1].tolist() == [float(i + 1)]


def test_selector_with_and_without_braces(vm):
    node = vm.node("sel")
    vm.import_series(node, [T0], [111])  # the default power series
    vm.import_series(node, [T0 + 1], [222], metric="node_power", labels={})
    vm.import_series(node, [T0 + 2], [333], metric="node_power", labels={"sensor": "psu"})
    vm.flush()

    def fetch(query: str, label: str = "alias") -> list[float]:
        got = client(vm.url, query=query, node_label=label).fetch_power([node], T0 - 1, T0 + 3)
        return got[node][1].tolist() if node in got else []

    assert fetch(POWER) == [111.0]
    assert fetch("amperageProbeReading") == [111.0]
    assert fetch("node_power") == [222.0, 333.0]
    assert fetch("node_power{}") == [222.0, 333.0]
    assert fetch('node_power{sensor="psu"}') == [333.0]
    assert fetch('{__name__="node_power",sensor="psu",}') == [333.0]
    assert fetch('node_power{sensor!="psu"}') == [222.0]


def test_custom_node_label(vm):
    node = vm.node("lab")
    vm.import_series(node, [T0], [42], metric="ipmi_power", labels={}, node_label="instance")
    vm.flush()
    got = client(vm.url, query="ipmi_power", node_label="instance").fetch_power([node], T0, T0)
    assert got[node][1].tolist() == [42.0]


def test_infinite_values_are_dropped(vm):
    """VM keeps +Inf/-Inf (NaN is refused at import); power that is not finite is unusable."""
    node = vm.node("inf")
    body = "".join(
        f'amperageProbeReading{{alias="{node}"}} {v} {(T0 + k) * 1000}\n'
        for k, v in enumerate(["100", "+Inf", "-Inf", "250.5", "1.5e-07"])
    )
    vm.server.session.post(f"{vm.url}/api/v1/import/prometheus", data=body).raise_for_status()
    vm.flush()
    got = client(vm.url, query="amperageProbeReading").fetch_power([node], T0, T0 + 10)
    assert got[node][0].tolist() == [T0, T0 + 3, T0 + 4]
    assert got[node][1].tolist() == [100.0, 250.5, 1.5e-7]


def test_negative_and_implausible_power_is_dropped_and_counted(vm):
    """-300 W gave energy_kwh=-0.3 in a token; 10^9 W was taken as it came."""
    node = vm.node("neg")
    body = "".join(f'amperageProbeReading{{alias="{node}"}} {v} {(T0 + k) * 1000}\n'
                   for k, v in enumerate(["100", "-300", "200", "1e9", "+Inf"]))
    vm.server.session.post(f"{vm.url}/api/v1/import/prometheus", data=body).raise_for_status()
    vm.flush()
    c = client(vm.url, query="amperageProbeReading")
    got = c.fetch_power([node], T0, T0 + 10)
    assert got[node][0].tolist() == [T0, T0 + 2] and got[node][1].tolist() == [100.0, 200.0]
    assert c.dropped_samples == 3


def test_nodes_without_samples_are_absent(vm):
    have, missing = vm.node("have"), vm.node("missing")
    vm.import_series(have, [T0], [1])
    vm.flush()
    assert list(client(vm.url).fetch_power([have, missing], T0, T0 + 1)) == [have]
    assert client(vm.url).fetch_power([], T0, T0 + 1) == {}


def test_vm_down_then_back(vm_running):
    vm = vm_running
    node = vm.node("down")
    vm.import_series(node, [T0, T0 + 30], [5, 6])
    vm.flush()
    c = client(vm.url)
    vm.stop()
    with pytest.raises(VictoriaError, match="127.0.0.1"):
        c.fetch_power([node], T0, T0 + 30)
    vm.start()
    assert c.fetch_power([node], T0, T0 + 30)[node][1].tolist() == [5.0, 6.0]


def test_query_range_matrix_and_split_by_point_limit(vm):
    name = vm.node("intensity").replace("-", "_")
    t = [T0 + k * 1800 for k in range(48)]
    vm.import_series("grid", t, [float(100 + k) for k in range(48)], metric=name, labels={"zone": "GB"})
    vm.flush()
    c = client(vm.url)
    [(labels, gt, gv)] = c.query_range(name, T0, T0 + 47 * 1800, 1800)
    assert labels["zone"] == "GB" and labels["__name__"] == name
    assert gt.tolist() == [float(x) for x in t]
    assert gv.tolist() == [float(100 + k) for k in range(48)]


def test_query_range_split_by_point_limit_is_seamless(vm):
    name = vm.node("dense").replace("-", "_")
    t = [T0 + k * 10 for k in range(4002)]
    vm.import_series("grid", t, [float(k) for k in range(4002)], metric=name, labels={})
    vm.flush()
    c = client(vm.url)
    [(_, gt, gv)] = c.query_range(name, T0, T0 + 40_000, 1)  # 40,001 points > VM's 30,000
    assert c.requests_made == 2
    assert gt.tolist() == [float(T0 + k) for k in range(40_001)]
    assert gv.tolist() == [float(k // 10) for k in range(40_001)]


def test_query_range_error_names_url(vm):
    with pytest.raises(VictoriaError, match=vm.url):
        client(vm.url).query_range("sum(", T0, T0 + 60, 30)


def test_latest_sample(vm):
    a, b, c_ = vm.node("lat"), vm.node("lat"), vm.node("lat")
    now = time.time()
    vm.import_series(a, [now - 120, now - 60.5, now - 3.25], [1, 2, 3])
    vm.import_series(b, [now - 300], [1])
    vm.flush()
    c = client(vm.url)
    got = c.latest_sample([a, b, c_], now - 100)
    assert list(got) == [a]
    assert got[a] == pytest.approx(now - 3.25, abs=0.002)
    assert c.latest_sample([a], now - 1) == {}


# -- parsing, without a server ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ("300,312.5,0.00000015,-4", [300, 312.5, 1.5e-7]),  # no power is ever negative: dropped
        ("1000000000000000000000,2", [1e21, 2]),
        ("9007199254740993,1", [9007199254740992.0, 1]),  # beyond 2**53: float rounding, like json
        ("1,NaN,+Inf,-Inf,5", [1, 5]),  # VM 1.79 spelling
        ('1,null,"Infinity","-Infinity",5', [1, 5]),  # newer VM spelling
        ("1e+21,2.5E-3,7", [1e21, 2.5e-3, 7]),
    ],
)
def test_parse_export_line_values(values, expected):
    n = values.count(",") + 1
    ts = ",".join(str(1690000000000 + k) for k in range(n))
    line = f'{{"metric":{{"__name__":"p","alias":"x"}},"values":[{values}],"timestamps":[{ts}]}}'.encode()
    metric, t, w = parse_export_line(line)
    assert metric == {"__name__": "p", "alias": "x"}
    assert w.tolist() == expected
    assert len(t) == len(w) and t.dtype == np.int64


def test_parse_export_line_short_timestamps_and_odd_layouts():
    _, t, w = parse_export_line(b'{"metric":{"alias":"x"},"values":[1,2],"timestamps":[1000,2000]}')
    assert t.tolist() == [1000, 2000] and w.tolist() == [1.0, 2.0]
    spaced = b'{"metric": {"alias": "x"}, "values": [1, 2.5], "timestamps": [1690000000000, 1690000000001]}'
    _, t, w = parse_export_line(spaced)
    assert t.tolist() == [1690000000000, 1690000000001] and w.tolist() == [1.0, 2.5]
    tricky = b'{"metric":{"alias":"],\\"timestamps\\":[","values":"x"},"values":[7],"timestamps":[1690000000000]}'
    metric, t, w = parse_export_line(tricky)
    assert metric["alias"] == '],"timestamps":[' and w.tolist() == [7.0]


def test_parse_export_line_rejects_mismatch_and_garbage():
    with pytest.raises(VictoriaError, match="2 timestamps but 1 values"):
        parse_export_line(b'{"metric":{"alias":"x"},"values":[1],"timestamps":[1690000000000,1690000000001]}')
    with pytest.raises(VictoriaError, match="cannot parse"):
        parse_export_line(b'{"metric":{"alias":"x"},"values":[1,zz],"timestamps":[1690000000000,1690000000001]}')


@pytest.mark.parametrize(
    ("selector", "merged"),
    [
        ("m", 'm{alias=~"a|b"}'),
        ("m{}", 'm{alias=~"a|b"}'),
        (' m{ } ', 'm{alias=~"a|b"}'),
        ('m{x="y"}', 'm{x="y",alias=~"a|b"}'),
        ('m{x="y",}', 'm{x="y",alias=~"a|b"}'),
        ('{__name__="m"}', '{__name__="m",alias=~"a|b"}'),
        ('m{x="}{"}', 'm{x="}{",alias=~"a|b"}'),
        ('m:rate5m{x=~"a\\"}"}', 'm:rate5m{x=~"a\\"}",alias=~"a|b"}'),
    ],
)
def test_add_matcher(selector, merged):
    assert add_matcher(selector, 'alias=~"a|b"') == merged


@pytest.mark.parametrize("bad", ["sum(m)", "m{x=\"y\"", "rate(m[5m])", "m{a='b'} or n{c='d'}"])
def test_add_matcher_rejects_non_selectors(bad):
    with pytest.raises(VictoriaError, match="series selector"):
        add_matcher(bad, 'alias=~"a"')


# -- what reaches the wire (single-node VM ignores tenants and credentials) ----------------------
class Recorder:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.body = b""


@pytest.fixture
def recorder() -> Iterator[tuple[str, Recorder]]:
    rec = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            form = parse_qs(self.rfile.read(length).decode())
            rec.requests.append({"path": self.path, "headers": dict(self.headers), "form": form})
            self.send_response(200)
            self.send_header("Content-Length", str(len(rec.body)))
            self.end_headers()
            self.wfile.write(rec.body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", rec
    finally:
        server.shutdown()
        server.server_close()


def test_tenant_path_and_bearer_token_reach_the_wire(recorder, tmp_path, monkeypatch):
    url, rec = recorder
    monkeypatch.delenv("CARBOND_VM_BEARER_TOKEN", raising=False)
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    rec.body = b'{"metric":{"alias":"n1"},"values":[5],"timestamps":[1700000000000]}\n'
    got = client(url, tenant="7:3", bearer_token_file=str(token)).fetch_power(["n1", "n2"], T0, T0 + 10)
    assert got["n1"][1].tolist() == [5.0]
    [req] = rec.requests
    assert req["path"] == "/select/7:3/prometheus/api/v1/export"
    assert req["headers"]["Authorization"] == "Bearer s3cret-token"
    assert req["form"]["match[]"] == [add_matcher(POWER, 'alias=~"n1|n2"')]
    assert req["form"]["start"] == ["1700000000.000"] and req["form"]["end"] == ["1700000010.000"]


def test_bearer_token_from_environment_overrides_file(recorder, tmp_path, monkeypatch):
    url, rec = recorder
    token = tmp_path / "token"
    token.write_text("from-file")
    monkeypatch.setenv("CARBOND_VM_BEARER_TOKEN", "from-env")
    client(url, bearer_token_file=str(token)).fetch_power(["n1"], T0, T0 + 1)
    assert rec.requests[0]["headers"]["Authorization"] == "Bearer from-env"


def test_basic_auth_reaches_the_wire(recorder, tmp_path):
    url, rec = recorder
    pw = tmp_path / "pw"
    pw.write_text("pa:ss\n")
    client(url, basic_auth=BasicAuth("carbond", str(pw))).fetch_power(["n1"], T0, T0 + 1)
    expected = "Basic " + base64.b64encode(b"carbond:pa:ss").decode()
    assert rec.requests[0]["headers"]["Authorization"] == expected


def test_http_error_names_url_not_secret(recorder, tmp_path):
    url, rec = recorder
    token = tmp_path / "token"
    token.write_text("s3cret-token")
    rec.body = b"not json"
    with pytest.raises(VictoriaError) as err:
        client(url, bearer_token_file=str(token)).query_range("up", T0, T0 + 60, 30)
    assert url in str(err.value) and "s3cret" not in str(err.value)


def test_unreachable_url_names_url_but_not_credentials(tmp_path, monkeypatch):
    monkeypatch.delenv("CARBOND_VM_BEARER_TOKEN", raising=False)
    token = tmp_path / "token"
    token.write_text("s3cret-token")
    pw = tmp_path / "pw"
    pw.write_text("hunter2")
    port = free_port()
    c = VictoriaClient(
        VictoriaConfig(url=f"http://admin:urlpass@127.0.0.1:{port}", bearer_token_file=str(token),
                       basic_auth=BasicAuth("u", str(pw)), timeout=2)
    )
    for call in (lambda: c.fetch_power(["n1"], T0, T0 + 1), lambda: c.latest_sample(["n1"], T0),
                 lambda: c.query_range("up", T0, T0 + 60, 30)):
        with pytest.raises(VictoriaError) as err:
            call()
        msg = str(err.value)
        assert f"http://127.0.0.1:{port}" in msg
        for secret in ("s3cret", "hunter2", "urlpass"):
            assert secret not in msg
    assert c.requests_made == 3


def test_unreadable_secret_file_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("CARBOND_VM_BEARER_TOKEN", raising=False)
    missing = tmp_path / "nope"
    with pytest.raises(VictoriaError, match=str(missing)):
        client("http://127.0.0.1:1", bearer_token_file=str(missing))


# -- helpers --------------------------------------------------------------------------------------
def _lines(nodes, t, values_for) -> list[str]:
    out = []
    for i, n in enumerate(nodes):
        labels = {"__name__": "amperageProbeReading", "amperageProbeLocationName": "System Board Pwr Consumption", "alias": n}
        out.append(json.dumps({"metric": labels, "values": list(values_for(i)), "timestamps": [round(x * 1000) for x in t]}))
    return out


# -- node names that need relabelling (node_regex) and units (scale) ---------------------------
@pytest.mark.parametrize(
    "regex, pattern",
    [
        ("^(?P<node>[^.:]+)", "(?:n1|n\\.2).*"),
        ("^(?P<node>[^.]+)-bmc([.:].*)?$", "(?:n1|n\\.2)-bmc([.:].*)?"),
        ("(?P<node>n[0-9]+)", ".*(?:n1|n\\.2).*"),
        ("^(?P<node>[a-z]+(-[0-9]+)?)\\.", "(?:n1|n\\.2)\\..*"),
    ],
)
def test_label_pattern_puts_the_candidates_in_place_of_the_node_group(regex, pattern):
    from carbond.victoria import label_pattern, node_regex_problem

    assert node_regex_problem(regex) is None
    assert label_pattern(regex, "n1|n\\.2") == pattern


@pytest.mark.parametrize(
    "regex, why",
    [("^([^.]+)", "group named node"), ("(?P<node>a(?=b))", "lookarounds"), ("(?P<node>", "not a valid"),
     ("(?P<x>a)\\1(?P<node>b)", "back-references")],
)
def test_unusable_node_regexes_are_refused_by_the_config(regex, why):
    from carbond.config import from_mapping
    from carbond.errors import ConfigError

    with pytest.raises(ConfigError, match=why):
        from_mapping({"victoriametrics": {"node_regex": regex}})


def test_node_regex_selects_only_the_jobs_nodes_and_maps_them(vm):
    """instance="<node>.cluster:9290" -> <node>; a node whose name extends ours is not returned."""
    a, b = vm.node("rx"), vm.node("rx")
    long = a + "0"  # `a` is a prefix of its name: selected by the prefix regex, then sorted out
    lines = [json.dumps({"metric": {"__name__": "ipmi_dcmi_power_consumption_watts", "instance": f"{n}.cluster:9290"},
                         "values": [w, w], "timestamps": [T0 * 1000, (T0 + 30) * 1000]})
             for n, w in ((a, 100), (b, 200), (long, 999))]
    vm.import_lines(lines)
    vm.flush()
    c = client(vm.url, query="ipmi_dcmi_power_consumption_watts", node_label="instance",
               node_regex="^(?P<node>[^.:]+)")
    assert 'instance=~"(?:' in c.selector([a])
    # The selector is selective in VictoriaMetrics itself: b's series is not even read.
    listed = requests.get(f"{vm.url}/api/v1/series", params={"match[]": c.selector([a]), "start": T0 - 60,
                                                            "end": T0 + 60}, timeout=10).json()["data"]
    assert sorted(x["instance"] for x in listed) == sorted([f"{a}.cluster:9290", f"{long}.cluster:9290"])
    got = c.fetch_power([a, b], T0, T0 + 30)
    assert sorted(got) == sorted([a, b])
    assert got[a][1].tolist() == [100.0, 100.0] and got[b][1].tolist() == [200.0, 200.0]
    assert c.fetch_power([a], T0, T0 + 30).keys() == {a}
    assert set(c.latest_sample([a, b], T0)) == {a, b}
    plain = client(vm.url, query="ipmi_dcmi_power_consumption_watts", node_label="instance")
    assert plain.fetch_power([a], T0, T0 + 30) == {}  # without the regex the names do not match


def test_scale_turns_the_series_unit_into_watts(vm):
    node = vm.node("mw")
    vm.import_series(node, [T0, T0 + 30], [250_000, 125_500])  # milliwatts
    vm.flush()
    got = client(vm.url, scale=0.001).fetch_power([node], T0, T0 + 30)
    assert got[node][1].tolist() == [250.0, 125.5]


def test_two_series_for_one_node_at_the_same_time_are_an_error_not_a_mix(vm):
    """Two PowerControl entries of one node: mixing their samples would charge a wrong number."""
    node = vm.node("dup")
    lines = [json.dumps({"metric": {"__name__": "redfish_watts", "instance": f"{node}-bmc", "power_control_id": pc},
                         "values": [w, w], "timestamps": [T0 * 1000, (T0 + 30) * 1000]})
             for pc, w in (("0", 300), ("1", 40))]
    vm.import_lines(lines)
    vm.flush()
    c = client(vm.url, query="redfish_watts", node_label="instance", node_regex="^(?P<node>.+)-bmc$")
    with pytest.raises(VictoriaError, match=f"2 series for node {node} at the same time.*power_control_id"):
        c.fetch_power([node], T0, T0 + 30)
    pinned = client(vm.url, query='redfish_watts{power_control_id="0"}', node_label="instance",
                    node_regex="^(?P<node>.+)-bmc$")
    assert pinned.fetch_power([node], T0, T0 + 30)[node][1].tolist() == [300.0, 300.0]


def test_a_series_relabelled_over_time_is_joined(vm):
    """The exporter's job label changed at T0+60: one node, two series one after the other."""
    node = vm.node("relabel")
    lines = [json.dumps({"metric": {"__name__": "amperageProbeReading", "alias": node, "job": job,
                                    "amperageProbeLocationName": "System Board Pwr Consumption"},
                         "values": [w, w], "timestamps": [t * 1000, (t + 30) * 1000]})
             for job, t, w in (("old", T0, 100), ("new", T0 + 60, 200))]
    vm.import_lines(lines)
    vm.flush()
    got = client(vm.url).fetch_power([node], T0, T0 + 90)[node]
    assert got[0].tolist() == [T0, T0 + 30, T0 + 60, T0 + 90] and got[1].tolist() == [100, 100, 200, 200]


# -- the connections (carbond.httpconn): kept alive, reopened when the server dropped them ------
class KeepAlive:
    """An HTTP/1.1 server that counts connections; `drop` closes each one after one answer
    without saying so (as a server's idle timeout does between two of our requests)."""

    def __init__(self, drop: bool = False, status: int = 200, body: bytes = b"") -> None:
        self.drop, self.status, self.body = drop, status, body
        self.connections = 0
        self.answers = 0
        box = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                box.connections += 1

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                box.answers += 1  # before answering: the client may count before this thread goes on
                self.close_connection = box.drop
                self.send_response(box.status)
                self.send_header("Content-Length", str(len(box.body)))
                self.end_headers()
                self.wfile.write(box.body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


EXPORT_LINE = b'{"metric":{"alias":"n1"},"values":[5,6],"timestamps":[1700000000000,1700000030000]}\n'


def test_one_connection_serves_request_after_request():
    srv = KeepAlive(body=EXPORT_LINE)
    try:
        c = client(srv.url)
        for _ in range(5):
            assert c.fetch_power(["n1"], T0, T0 + 30)["n1"][1].tolist() == [5.0, 6.0]
        assert (srv.answers, srv.connections) == (5, 1)
    finally:
        srv.close()


def test_a_connection_the_server_dropped_is_reopened_once():
    srv = KeepAlive(drop=True, body=EXPORT_LINE)
    try:
        c = client(srv.url)
        for _ in range(3):
            assert c.fetch_power(["n1"], T0, T0 + 30)["n1"][1].tolist() == [5.0, 6.0]
        assert srv.answers == 3 and srv.connections == 3
    finally:
        srv.close()


def test_a_server_error_is_named_with_its_body_and_without_secrets(tmp_path, monkeypatch):
    monkeypatch.delenv("CARBOND_VM_BEARER_TOKEN", raising=False)
    token = tmp_path / "token"
    token.write_text("s3cret-token")
    srv = KeepAlive(status=500, body=b"out of memory near s3cret-token")
    try:
        c = client(srv.url, bearer_token_file=str(token))
        with pytest.raises(VictoriaError) as err:
            c.fetch_power(["n1"], T0, T0 + 30)
        assert "HTTP 500" in str(err.value) and "out of memory" in str(err.value)
        assert "s3cret" not in str(err.value)
        srv.status, srv.body = 200, EXPORT_LINE
        assert c.fetch_power(["n1"], T0, T0 + 30)["n1"][1].tolist() == [5.0, 6.0]
    finally:
        srv.close()


def test_credentials_in_the_url_are_basic_auth_and_never_in_messages(recorder):
    url, rec = recorder
    rec.body = EXPORT_LINE
    c = client(url.replace("http://", "http://carbond:p%40ss@"))
    c.fetch_power(["n1"], T0, T0 + 30)
    assert rec.requests[0]["headers"]["Authorization"] == "Basic " + base64.b64encode(b"carbond:p@ss").decode()
    rec.body = b"not an export line"
    with pytest.raises(VictoriaError) as err:
        c.fetch_power(["n1"], T0, T0 + 30)
    assert "p@ss" not in str(err.value) and "p%40ss" not in str(err.value)


def test_footprint_path_imports_no_requests():
    """`requests` alone costs more start-up than a one-job footprint's whole budget."""
    import subprocess
    import sys

    code = "import carbond.engine, carbond.cli, carbond.intensity, sys; print('requests' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_every_answer_is_reported_as_it_arrives(vm):
    """The daemon's watchdog counts each answer as progress: a long backfill fetch is many of them."""
    node = vm.node("progress")
    vm.import_series(node, [T0, T0 + 30], [5, 6])
    vm.flush()
    c = client(vm.url, chunk_seconds=60)
    seen = []
    c.on_response = lambda: seen.append(c.requests_made)
    c.fetch_power([node], T0 - 600, T0 + 600)
    assert len(seen) == c.requests_made == 20


@pytest.fixture
def tls_server(tmp_path):
    """The KeepAlive server behind TLS, with a certificate of its own CA-less self-signed kind."""
    import ssl
    import subprocess

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    srv = KeepAlive(body=EXPORT_LINE)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.server.socket = ctx.wrap_socket(srv.server.socket, server_side=True)
    try:
        yield srv.url.replace("http://", "https://"), cert, srv
    finally:
        srv.close()


def test_https_with_the_sites_ca_file_and_refused_without_it(tls_server):
    url, cert, srv = tls_server
    assert client(url, ca_file=str(cert)).fetch_power(["n1"], T0, T0 + 30)["n1"][1].tolist() == [5.0, 6.0]
    with pytest.raises(VictoriaError, match="unreachable: SSLCertVerificationError"):
        client(url).fetch_power(["n1"], T0, T0 + 30)
