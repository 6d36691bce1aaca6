from pathlib import Path

import pytest

from carbond import config
from carbond.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_is_valid_and_documents_every_key():
    cfg = config.load(str(ROOT / "etc" / "carbond.yaml"))
    assert cfg.victoriametrics.query == config.DEFAULT_POWER_QUERY
    text = (ROOT / "etc" / "carbond.yaml").read_text()
    import dataclasses

    def keys(cls, prefix=""):
        for f in dataclasses.fields(cls):
            if f.name == "source":
                continue
            yield prefix + f.name
            inner = f.type if isinstance(f.type, type) else None
            for cand in (config.VictoriaConfig, config.IntensityConfig, config.SlurmConfig, config.MetricsConfig,
                         config.EmbodiedConfig, config.BasicAuth, config.NodeClass, config.GpuConfig,
                         config.TresWeights):
                if f.type in (cand.__name__, f"{cand.__name__} | None", f"tuple[{cand.__name__}, ...]") or inner is cand:
                    yield from keys(cand, prefix + f.name + ".")

    for key in keys(config.Config):
        assert key.split(".")[-1] + ":" in text, f"etc/carbond.yaml does not document {key}"


def test_defaults():
    cfg = config.from_mapping({})
    assert cfg.pue == 1.0 and cfg.attribution == "cpus" and cfg.victoriametrics.node_label == "alias"
    assert cfg.slurm.comment_field == "admin_comment" and cfg.metrics.listen == "127.0.0.1:9847"


def test_every_problem_is_reported_at_once_naming_its_key(tmp_path):
    bad = {
        "pue": "high",
        "colour": "blue",
        "victoriametrics": {"url": "localhost:8428", "timeout": "soon", "bearer_token_file": str(tmp_path / "nope")},
        "intensity": {"provider": "electricitymaps"},
        "nodes": [{"match": "n[1-", "cpus": 0}, {"cpus": 4}],
        "slurm": {"comment_field": "notes"},
    }
    assert_problems(bad, [
        "pue: expected a number",
        "colour: unknown key",
        "victoriametrics.timeout: expected a number",
        "nodes[1].match: missing value",
    ])
    # A second pass (after the type errors are fixed) reports the semantic problems together.
    bad.update(pue=1.1, colour=None)
    del bad["colour"]
    bad["victoriametrics"]["timeout"] = 5
    bad["nodes"] = [{"match": "n[1-", "cpus": 0}]
    assert_problems(bad, [
        "victoriametrics.url: must start with http",
        "victoriametrics.bearer_token_file: cannot read",
        "intensity.zone: required by provider electricitymaps",
        "intensity.token_file: required",
        "nodes[0].match: unclosed",
        "nodes[0].cpus: must be positive",
        "slurm.comment_field: must be one of",
    ])


def assert_problems(mapping, needles):
    """from_mapping refuses `mapping`, naming every one of `needles` in a single error."""
    with pytest.raises(ConfigError) as exc:
        config.from_mapping(mapping, "x.yaml")
    for needle in needles:
        assert needle in str(exc.value), str(exc.value)


def test_unreadable_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the file"):
        config.load(str(tmp_path / "missing.yaml"))
    p = tmp_path / "bad.yaml"
    p.write_text("cluster: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(str(p))


def test_config_path_from_environment(tmp_path, monkeypatch):
    p = tmp_path / "c.yaml"
    p.write_text("cluster: envcl\n")
    monkeypatch.setenv("CARBOND_CONFIG", str(p))
    assert config.load().cluster == "envcl"


def test_node_class_first_match_wins():
    cfg = config.from_mapping({"nodes": [{"match": "n[1-2]", "cpus": 2}, {"match": "n[1-9]", "cpus": 9}]})
    assert cfg.node_class("n2").cpus == 2 and cfg.node_class("n5").cpus == 9 and cfg.node_class("x") is None
