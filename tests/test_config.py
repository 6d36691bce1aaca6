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


# ---- issue 16: every bad value is a ConfigError naming its key ----------------------------

@pytest.mark.parametrize("mapping, key", [
    ({"intensity": {"region": "²"}}, "intensity.region"),
    ({"intensity": {"region": "١٢"}}, "intensity.region"),
    ({"nodes": [{"match": []}]}, "nodes[0].match"),
    ({"nodes": [{"match": float("nan")}]}, "nodes[0].match"),
    ({"victoriametrics": {"node_regex": "a{99999999999}"}}, "victoriametrics.node_regex"),
    ({"victoriametrics": {"node_regex": "(?P<node>a{99999999999})"}}, "victoriametrics.node_regex"),
    ({"victoriametrics": {"node_regex": "(?P<node>" + "a" * 2000 + ")"}}, "victoriametrics.node_regex"),
    ({"victoriametrics": {"bearer_token_file": "/tmp/a\0b"}}, "victoriametrics.bearer_token_file"),
    ({"victoriametrics": {"ca_file": "\0"}}, "victoriametrics.ca_file"),
    ({"victoriametrics": {"ca_file": "\ud800"}}, "victoriametrics.ca_file"),
    ({"victoriametrics": {"basic_auth": {"username": "u", "password_file": "\ud800"}}},
     "victoriametrics.basic_auth.password_file"),
    ({"intensity": {"provider": "csv", "path": "x\0"}}, "intensity.path"),
    ({"state_dir": "/var/lib/\0"}, "state_dir"),
    ({"pue": float("nan")}, "pue"),
    ({"pue": float("inf")}, "pue"),
    ({"max_gap": float("inf")}, "max_gap"),
    ({"settle_seconds": -1}, "settle_seconds"),
    ({"intensity": {"provider": "constant", "value": float("nan")}}, "intensity.value"),
    ({"intensity": {"refresh_seconds": -5}}, "intensity.refresh_seconds"),
    ({"intensity": {"url": "file:///etc/passwd"}}, "intensity.url"),
    ({"embodied": {"g_per_node_hour": float("nan")}}, "embodied.g_per_node_hour"),
    ({"nodes": [{"match": "n1", "idle_watts": -300}]}, "nodes[0].idle_watts"),
    ({"nodes": [{"match": "n1", "max_watts": -1}]}, "nodes[0].max_watts"),
    ({"nodes": [{"match": "n1", "gpus": -1}]}, "nodes[0].gpus"),
    ({"nodes": [{"match": "n1", "cpus": 10**30}]}, "nodes[0].cpus"),
    ({"nodes": [{"match": "n1", "weights": {"cpu": float("inf")}}]}, "nodes[0].weights.cpu"),
    ({"victoriametrics": {"max_nodes_per_request": 0}}, "victoriametrics.max_nodes_per_request"),
    ({"victoriametrics": {"scale": 10**400}}, "victoriametrics.scale"),
    ({"victoriametrics": {"url": "http://vm:99999/"}}, "victoriametrics.url"),
    ({"victoriametrics": {"url": "http://[::1"}}, "victoriametrics.url"),
    ({"victoriametrics": {"url": "https://u:p@vm:x/"}}, "victoriametrics.url"),
    ({"intensity": {"url": "https://"}}, "intensity.url"),
    ({"metrics": {"listen": "127.0.0.1:70000"}}, "metrics.listen"),
    ({"metrics": {"listen": "127.0.0.1:²"}}, "metrics.listen"),
    ({"metrics": {"listen": "127.0.0.1:٨٠"}}, "metrics.listen"),
    ({"metrics": {"listen": "junk junk:80"}}, "metrics.listen"),
    ({"metrics": {"listen": "::1:80"}}, "metrics.listen"),
    ({"metrics": {"listen": "[127.0.0.1]:80"}}, "metrics.listen"),
])
def test_a_bad_value_is_a_config_error_naming_its_key(mapping, key):
    with pytest.raises(ConfigError) as exc:
        config.from_mapping(mapping, "x.yaml")
    assert any(p.startswith(key + ":") or p.startswith(key + " ") for p in exc.value.problems), exc.value.problems


@pytest.mark.parametrize("listen", ["127.0.0.1:9847", "[::1]:0", ":9847", "localhost:80", "metrics.example.org:65535"])
def test_listen_that_passes_the_check_is_what_run_binds(listen):
    from carbond.metrics import parse_listen

    cfg = config.from_mapping({"metrics": {"listen": listen}})
    assert parse_listen(cfg.metrics.listen) == config.parse_listen(listen)


def test_a_listen_address_that_cannot_be_bound_is_a_config_error():
    from prometheus_client import CollectorRegistry

    from carbond.metrics import serve

    server = serve("127.0.0.1:0", CollectorRegistry())
    try:
        with pytest.raises(ConfigError, match="metrics.listen: cannot listen"):
            serve(f"127.0.0.1:{server.server_port}", CollectorRegistry())
    finally:
        server.shutdown()
        server.server_close()


def test_an_alias_bomb_is_reported_without_printing_it_out():
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)) + "cluster: [*i, *i]\n"
    with pytest.raises(ConfigError) as exc:
        config.from_bytes(laughs.encode(), "x.yaml")
    assert len(str(exc.value)) < 2000 and "cluster: expected a string" in str(exc.value)


@pytest.mark.parametrize("raw, needle", [
    (b"cluster: caf\xe9\n", r"not UTF-8 text \(byte 12"),
    (b"cluster: \xff\xfe\n", "not UTF-8"),
    (b"cluster: 2024-13-45\n", "not valid YAML"),
    (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "not valid YAML"),
    (b"x" * ((1 << 20) + 1), "larger than"),
])
def test_a_file_that_is_not_utf8_yaml_is_a_config_error(tmp_path, raw, needle):
    p = tmp_path / "c.yaml"
    p.write_bytes(raw)
    with pytest.raises(ConfigError, match=needle):
        config.load(str(p))


def test_a_nul_in_the_config_path_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot read the file"):
        config.load("/etc/carbond/\0.yaml")


# ---- secrets: never printed, their files' modes checked -----------------------------------

@pytest.mark.parametrize("url, shown", [
    ("https://carbond:pa55word@vm.example:8428/x", "https://***@vm.example:8428/x"),
    ("https://s3cr3tt0ken@vm.example/", "https://***@vm.example/"),
    ("http://u:p@[::1]:99999/?q=a@b", "http://***@[::1]:99999/?q=a@b"),
    ("http://a@b@c/", "http://***@c/"),
    ("vm:tok@host", "***@host"),
    ("http://vm.example:8428/", "http://vm.example:8428/"),
])
def test_mask_url_hides_user_name_and_password(url, shown):
    assert config.mask_url(url) == shown


def test_dump_masks_a_token_given_as_the_urls_user_name():
    cfg = config.from_mapping({"victoriametrics": {"url": "https://s3cr3tt0ken@vm.example:8428"},
                               "intensity": {"url": "https://u:pw@mirror.example/api"}})
    out = config.dump(cfg)
    assert "s3cr3t" not in out and "pw@" not in out and "https://***@mirror.example/api" in out


def test_a_bad_url_is_reported_without_its_credentials():
    with pytest.raises(ConfigError) as exc:
        config.from_mapping({"victoriametrics": {"url": "htp://user:s3cr3t@vm"},
                             "intensity": {"url": ["https://user:s3cr3t@x"]}})
    assert "s3cr3t" not in str(exc.value) and "victoriametrics.url" in str(exc.value)


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_a_secret_file_others_may_write_is_refused(tmp_path, mode):
    secret = tmp_path / "token"
    secret.write_text("t\n")
    secret.chmod(mode)
    with pytest.raises(ConfigError, match=r"victoriametrics.bearer_token_file: .*token is writable by .*chmod go-w"):
        config.from_mapping({"victoriametrics": {"bearer_token_file": str(secret)}})


def test_a_world_readable_secret_is_warned_about(tmp_path, caplog):
    secret = tmp_path / "pw"
    secret.write_text("t\n")
    secret.chmod(0o644)
    config.from_mapping({"victoriametrics": {"basic_auth": {"username": "u", "password_file": str(secret)}}})
    assert "victoriametrics.basic_auth.password_file" in caplog.text and "readable by every user" in caplog.text
    caplog.clear()
    secret.chmod(0o640)
    config.from_mapping({"victoriametrics": {"basic_auth": {"username": "u", "password_file": str(secret)}}})
    assert caplog.text == ""


def test_an_intensity_answer_of_the_wrong_shape_is_reported_without_the_urls_credentials():
    from carbond.intensity import bad_shape

    err = bad_shape("https://carbond:s3cr3t@mirror.example/intensity/x", "no list under 'data'")
    assert "s3cr3t" not in str(err) and "https://***@mirror.example/intensity/x" in str(err)
