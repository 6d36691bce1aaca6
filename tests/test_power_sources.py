"""Every example in etc/power-sources/ against the real VictoriaMetrics: its series shape is
loaded (from the file's own `# series:` line), then a job is accounted from it through
`carbond footprint`, and the energy must be the analytic integral of that node's power only."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from carbond.cli import main
from carbond.config import from_mapping

EXAMPLES = sorted((Path(__file__).parent.parent / "etc" / "power-sources").glob("*.yaml"))
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
_SERIES = re.compile(r"^# series: ([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\}$", re.M)


def series_shape(path: Path) -> tuple[str, dict[str, str]]:
    """The example series the file documents, for node `n1`."""
    m = _SERIES.search(path.read_text())
    assert m, f"{path.name} has no '# series:' line"
    return m.group(1), dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))


def for_node(labels: dict[str, str], node: str) -> dict[str, str]:
    """The same labels for another node: `n1` in any label value becomes `node`."""
    return {k: re.sub(r"\bn1\b", node, v) for k, v in labels.items()}


def test_there_are_examples_for_the_common_exporters():
    names = {p.stem for p in EXAMPLES}
    assert {"idrac-snmp", "ipmi-exporter", "redfish-exporter"} <= names


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_each_example_is_a_valid_config_section(example):
    doc = yaml.safe_load(example.read_text())
    cfg = from_mapping(doc, str(example))
    metric, labels = series_shape(example)
    assert cfg.victoriametrics.query.startswith(metric)
    assert cfg.victoriametrics.node_label in labels


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_a_job_is_accounted_from_each_exporter_shape(example, vm, tmp_path, capsys):
    doc = yaml.safe_load(example.read_text())
    vmc = doc["victoriametrics"]
    scale = float(vmc.get("scale", 1.0))
    metric, labels = series_shape(example)
    node = vm.node("ps")
    # Decoys: a node whose name starts like ours (node + "0"), and the same node's series under
    # another metric name; neither may reach the job.
    decoy = node + "0"
    t = np.arange(T0 - 600, T0 + 4200, 30.0)
    watts = 200 + 0.02 * (t - T0)  # a ramp, so a wrong window or a mixed-in series shows
    lines = [
        _line(metric, for_node(labels, node), t, watts / scale),
        _line(metric, for_node(labels, decoy), t, np.full(t.size, 5000.0) / scale),
        _line(metric + "_other", for_node(labels, node), t, np.full(t.size, 7000.0) / scale),
    ]
    vm.import_lines(lines)
    vm.flush()

    config = dict(doc)
    config["victoriametrics"] = {**vmc, "url": vm.url}
    config.update(state_dir=str(tmp_path / "state"), intensity={"provider": "constant", "value": 150},
                  nodes=[{"match": f"{node},{decoy}", "cpus": 4}])
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    sacct = tmp_path / "sacct.txt"
    start, end = T0 + 300, T0 + 3300
    sacct.write_text(f"JobIDRaw|Start|End|NodeList|AllocTRES\n1|{start}|{end}|{node}|cpu=4\n")

    code = main(["--config", str(tmp_path / "c.yaml"), "footprint", "--jobs", str(sacct), "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    fp = json.loads(out.out)
    joules = (200 + 0.02 * (start - T0) + 200 + 0.02 * (end - T0)) / 2 * (end - start)
    assert fp["status"] == "ok" and fp["method"] == "measured"
    assert fp["energy_kwh"] == pytest.approx(joules / 3.6e6, rel=1e-9)
    assert fp["co2e_g"] == pytest.approx(joules / 3.6e6 * 150, rel=1e-9)


def _line(metric: str, labels: dict[str, str], t: np.ndarray, values: np.ndarray) -> str:
    return json.dumps({"metric": {"__name__": metric, **labels}, "values": [float(v) for v in values],
                       "timestamps": [int(x * 1000) for x in t]})
