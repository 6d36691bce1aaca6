"""Local providers (csv, constant) and the provider registry."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from carbond.config import from_mapping
from carbond.errors import ConfigError
from carbond.intensity import REGISTRY, IntensitySource, make_provider
from carbond.intensity.constant import ConstantIntensity
from carbond.intensity.csvfile import CsvIntensity
from carbond.intensity.electricitymaps import ElectricityMaps
from carbond.intensity.uk import UKCarbonIntensity
from carbond.times import parse_time

DATA = Path(__file__).parent / "data" / "intensity"


def ts(text: str) -> int:
    return int(parse_time(text)[0])


def csv_provider(path: Path) -> CsvIntensity:
    return make_provider(from_mapping({"intensity": {"provider": "csv", "path": str(path)}}))  # type: ignore[return-value]


# -- csv ----------------------------------------------------------------------------------------
def test_csv_hourly_and_half_hourly_rows_in_utc_across_dst():
    p = csv_provider(DATA / "intensity.csv")
    t = IntensitySource(p, None).lookup(ts("2024-03-31T00:00Z"), ts("2024-03-31T03:30Z"))
    assert t.first_slot == ts("2024-03-31T00:00Z")
    assert t.values.tolist()[:6] == [180, 180, 175.5, 170, 160, 160]  # the +02:00 row is 02:00-03:00Z
    assert np.isnan(t.values[6]) and t.kinds[6] == "missing"
    assert list(t.kinds[:6]) == ["csv"] * 6


def test_csv_bypasses_the_cache(tmp_path):
    db = tmp_path / "intensity.sqlite"
    src = IntensitySource(csv_provider(DATA / "intensity.csv"), str(db))
    src.lookup(ts("2024-03-31T00:00Z"), ts("2024-03-31T01:00Z"))
    assert not db.exists()


def test_csv_errors_name_file_and_every_bad_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "from,to,intensity\n"
        "2024-01-01T00:00Z,2024-01-01T01:00Z,100\n"          # 2 fine
        "2024-01-01T01:00,2024-01-01T01:30Z,100\n"           # 3 no offset
        "2024-01-01T01:10Z,2024-01-01T01:30Z,100\n"          # 4 not on a half-hour
        "2024-01-01T02:00Z,2024-01-01T02:30Z,lots\n"         # 5 not a number
        "2024-01-01T02:30Z,2024-01-01T03:00Z,-4\n"           # 6 negative
        "2024-01-01T00:30Z,2024-01-01T01:00Z,100\n"          # 7 overlaps line 2
        "2024-01-01T04:00Z,2024-01-01T03:00Z,100\n"          # 8 to before from
        "2024-01-01T05:00Z,2024-01-01T05:30Z\n"              # 9 two fields
        "yesterday,2024-01-01T05:30Z,1\n"                    # 10 not ISO
    )
    with pytest.raises(ConfigError) as exc:
        csv_provider(bad)
    problems = exc.value.problems
    assert [int(re.search(r" line (\d+):", p).group(1)) for p in problems] == [3, 4, 5, 6, 7, 8, 9, 10]
    assert all(p.startswith(f"intensity.path: {bad} line ") for p in problems)
    text = str(exc.value)
    for needle in ("has no UTC offset", "not on a UTC half-hour", "'lots' is not a number", "must be a finite number >= 0",
                   "overlaps line 2", "is not after", "expected 3 fields", "'yesterday' is not ISO 8601"):
        assert needle in text


@pytest.mark.parametrize("content, needle", [
    ("", "line 1: empty file"),
    ("start,end,value\n2024-01-01T00:00Z,2024-01-01T00:30Z,1\n", "line 1: header must be from,to,intensity"),
])
def test_csv_header_problems(tmp_path, content, needle):
    f = tmp_path / "x.csv"
    f.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(f"{f} {needle}")):
        csv_provider(f)


def test_csv_is_read_again_when_it_changes(tmp_path):
    f = tmp_path / "x.csv"
    f.write_text("from,to,intensity\n2024-01-01T00:00Z,2024-01-01T00:30Z,100\n")
    p = csv_provider(f)
    assert [r.g_per_kwh for r in p.fetch(ts("2024-01-01T00:00Z"), ts("2024-01-01T00:30Z"))] == [100]
    f.write_text("from,to,intensity\n2024-01-01T00:00Z,2024-01-01T00:30Z,50\n")
    os.utime(f, ns=(1, 10**18))  # a distinct mtime even on coarse-grained filesystems
    assert [r.g_per_kwh for r in p.fetch(ts("2024-01-01T00:00Z"), ts("2024-01-01T00:30Z"))] == [50]


def test_csv_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="intensity.path: cannot read"):
        CsvIntensity(str(tmp_path / "absent.csv")).reload()


# -- constant -----------------------------------------------------------------------------------
def test_constant_every_slot():
    p = make_provider(from_mapping({"intensity": {"provider": "constant", "value": 212.5}}))
    assert isinstance(p, ConstantIntensity) and not p.cacheable
    t = IntensitySource(p, None).lookup(ts("2024-01-01T00:10Z"), ts("2024-01-01T01:00Z"))
    assert t.values.tolist() == [212.5, 212.5] and list(t.kinds) == ["constant", "constant"]


# -- registry -----------------------------------------------------------------------------------
def test_registry_names_match_the_config():
    from carbond.config import PROVIDERS

    assert tuple(REGISTRY) == PROVIDERS


def test_unknown_provider_lists_valid_names():
    cfg = from_mapping({"intensity": {"provider": "constant", "value": 1}})
    import dataclasses

    cfg = dataclasses.replace(cfg, intensity=dataclasses.replace(cfg.intensity, provider="watttime"))
    with pytest.raises(ConfigError) as exc:
        make_provider(cfg)
    assert "unknown provider 'watttime'" in str(exc.value)
    assert "uk-carbon-intensity, electricitymaps, prometheus, csv, constant" in str(exc.value)


def test_registry_builds_each_remote_provider(tmp_path):
    p = make_provider(from_mapping({"intensity": {"provider": "uk-carbon-intensity", "region": "13"}}))
    assert isinstance(p, UKCarbonIntensity) and p.cache_key == "uk-carbon-intensity:region=13"
    assert p.base_url == "https://api.carbonintensity.org.uk"
    p = make_provider(from_mapping({"intensity": {"provider": "uk-carbon-intensity", "url": "http://x:1/"}}))
    assert p.cache_key == "uk-carbon-intensity:national" and p.base_url == "http://x:1"
    tok = tmp_path / "tok"
    tok.write_text("abc\n")
    p = make_provider(from_mapping({"intensity": {"provider": "electricitymaps", "zone": "DE", "token_file": str(tok)}}))
    assert isinstance(p, ElectricityMaps) and p.token == "abc" and p.cacheable


def test_one_provider_registry_that_config_validates_against():
    from carbond.config import PROVIDERS
    from carbond.intensity import REGISTRY

    assert tuple(REGISTRY) == PROVIDERS
