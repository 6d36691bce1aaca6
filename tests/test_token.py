"""The carbond token: format, find, merge into a shared field, and when not to rewrite."""

import base64
import gzip
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carbond import token
from carbond.errors import JobInputError

VALUES = {"co2e_g": 12345.6, "energy_kwh": 61.7283, "gkwh": 182.4, "cov": 0.85}
TOKEN = "carbond:co2e_g=12346,energy_kwh=61.7,gkwh=182,cov=0.85"


def test_format_known_answer():
    assert token.format_token(VALUES) == TOKEN


def test_format_fits_sacct_admincomment_60_column():
    assert len(TOKEN) <= 60 and TOKEN.startswith("carbond:co2e_g=12346,")


@pytest.mark.parametrize(
    "x, text",
    [(0, "0"), (1.0, "1"), (12.34, "12.3"), (0.045612, "0.0456"), (123456.7, "123457"), (99.95, "100"),
     (0.0000012345, "1.23e-6"), (0.00025, "2.5e-4"), (1e-15, "1e-15")],
)
def test_compact(x, text):
    assert token.compact(x) == text


def test_format_from_a_footprint_object_and_none_is_left_out():
    class Fp:
        co2e_g, energy_kwh, intensity_g_per_kwh, method, coverage, pue = 1.5, 0.01, None, "estimated", 0.0, 1.0

    assert token.format_token(Fp()) == "carbond:co2e_g=1.5,energy_kwh=0.01,cov=0,pue=1"
    assert token.method_of(token.parse(token.format_token(Fp()))) == "estimated"


def test_tiny_numbers_round_trip_through_parse():
    t = token.format_token({"co2e_g": 1.23e-6, "energy_kwh": 6.2e-9})
    assert t == "carbond:co2e_g=1.23e-6,energy_kwh=6.2e-9"
    assert token.parse(t) == {"co2e_g": 1.23e-6, "energy_kwh": 6.2e-9}


@pytest.mark.parametrize("bad", [{"method": "Measured"}, {"method": "a b"}, {"method": 'x"'}, {"Key": 1},
                                 {"co2e_g": math.nan}, {"method": "a|b"}, {}])
def test_format_refuses_what_would_break_the_field(bad):
    with pytest.raises(JobInputError):
        token.format_token(bad)


@pytest.mark.parametrize(
    "field, found",
    [
        (TOKEN, True),
        ("user text " + TOKEN, True),
        ("user text;" + TOKEN + " more", True),
        ("xcarbond:co2e_g=1", False),          # not at a word boundary
        ("carbond:co2e_g=1,", False),          # dangling comma: not a whole token
        ("carbond:", False),
        ("", False),
    ],
)
def test_parse_finds_a_token_only_at_a_boundary(field, found):
    assert (token.parse(field) is not None) is found


def test_parse_values():
    assert token.parse("x " + TOKEN) == {"co2e_g": 12346.0, "energy_kwh": 61.7, "gkwh": 182.0, "cov": 0.85}


def test_merge_into_empty_appends_and_replaces():
    assert token.merge("", TOKEN) == TOKEN
    assert token.merge(None, TOKEN) == TOKEN
    assert token.merge("my run", TOKEN) == "my run " + TOKEN
    assert token.merge("my run\n", TOKEN) == "my run\n" + TOKEN
    old = "a carbond:co2e_g=1,energy_kwh=2 b"
    assert token.merge(old, "carbond:co2e_g=3") == "a carbond:co2e_g=3 b"


def test_merge_replaces_only_the_last_token():
    field = "carbond:co2e_g=1 note carbond:co2e_g=2"
    assert token.merge(field, "carbond:co2e_g=9") == "carbond:co2e_g=1 note carbond:co2e_g=9"


def test_merge_refuses_a_non_token():
    with pytest.raises(JobInputError):
        token.merge("x", "co2e_g=1")


def jobstats_payload() -> str:
    blob = gzip.compress(json.dumps({"nodes": {"n1": {"cpus": 4}}}).encode())
    return "JS1:" + base64.b64encode(blob).decode()


@pytest.mark.parametrize(
    "field, lowercases, reason",
    [
        ("", True, None),
        ("plain lowercase text", True, None),
        ("my run | with pipes", True, None),
        ("Has Upper", True, token.MANGLED),
        ("Has Upper", False, None),
        ("ünïcode ÄÖ stays", True, None),  # C tolower leaves non-ASCII bytes alone (seen on 22.05)
        ('say "hi"', False, token.MANGLED),
        ("it's", True, token.MANGLED),
        (jobstats_payload(), True, token.MANGLED),
        (jobstats_payload(), False, token.FOREIGN),
        ("js1:h4siaaaaaaaa", True, token.FOREIGN),
        ("{}", True, token.FOREIGN),
        ("[1,2]", True, token.FOREIGN),
        ("{not json", True, None),
        (TOKEN, True, None),
    ],
)
def test_skip_reason(field, lowercases, reason):
    assert token.skip_reason(field, lowercases) == reason
    assert token.survives_sacctmgr(field, lowercases) == (reason != token.MANGLED)


# --- properties ---------------------------------------------------------------------------

numbers = st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False)
value_dicts = st.fixed_dictionaries(
    {"co2e_g": numbers, "energy_kwh": numbers},
    optional={
        "intensity": numbers,
        "method": st.sampled_from(["measured", "mixed", "estimated"]),
        "coverage": st.floats(min_value=0, max_value=1),
        "pue": st.floats(min_value=1, max_value=3),
    },
)
# Other content: any text, including things that look almost like a token.
fragments = st.sampled_from(["carbond:", "carbond:x", "carbond:co2e_g=", ",", "=", ";", " ", "\n", "|", "JS1:", "{}"])
others = st.lists(st.one_of(st.text(max_size=12), fragments), max_size=6).map("".join)


def no_token(s: str) -> bool:
    return token.find(s) is None


@given(others.filter(no_token), value_dicts)
def test_merge_keeps_other_content_byte_for_byte(other, values):
    t = token.format_token(values)
    merged = token.merge(other, t)
    assert merged.startswith(other)
    assert merged[len(other):].lstrip(token.SEPARATOR) == t


@given(others, value_dicts)
def test_merge_is_idempotent(other, values):
    t = token.format_token(values)
    once = token.merge(other, t)
    assert token.merge(once, t) == once


@given(others, value_dicts, value_dicts)
def test_parse_of_merge_gives_the_values(other, old, new):
    t_old, t_new = token.format_token(old), token.format_token(new)
    merged = token.merge(token.merge(other, t_old), t_new)
    parsed = token.parse(merged)
    assert parsed == token.parse(t_new)
    for key, value in new.items():
        got = parsed[key]
        if isinstance(value, str):
            assert got == value
        else:  # about 3 significant digits; below 1e-12 shows as 0
            assert got == pytest.approx(value, rel=6e-3, abs=1e-12)


@given(others.filter(no_token), value_dicts, value_dicts)
def test_replacing_keeps_both_sides(other, old, new):
    prefix, suffix = other[: len(other) // 2], other[len(other) // 2:]
    t_old = token.format_token(old)
    field = prefix + " " + t_old + " " + suffix
    if token.find(field) is None or token.find(field).group(0) != t_old:
        return  # the suffix glued onto the token; not a well-formed placement
    out = token.merge(field, token.format_token(new))
    assert out == prefix + " " + token.format_token(new) + " " + suffix


@given(value_dicts)
def test_token_is_safe_for_sacct(values):
    t = token.format_token(values)
    assert t == t.lower() and not set(t) & set(" \t\n|\"'`")
    assert token.survives_sacctmgr(t)


def test_gpu_kwh_only_on_jobs_with_measured_gpus_and_pue_kept():
    from carbond.footprint import JobFootprint, NodeEnergy

    gpu = JobFootprint("1", "ok", energy_kwh=0.325, co2e_g=32.5, intensity_g_per_kwh=100.0, pue=1.2,
                       nodes=(NodeEnergy("g1", 0.325, 0.125),), gpu_energy_kwh=0.25)
    cpu = JobFootprint("2", "ok", energy_kwh=0.1, co2e_g=12.0, intensity_g_per_kwh=100.0, pue=1.2,
                       nodes=(NodeEnergy("n1", 0.1, 0.5),))
    values = token.parse(token.format_token(gpu))
    assert values["gpu_kwh"] == 0.25 and values["pue"] == 1.2
    assert token.format_token(cpu) == "carbond:co2e_g=12,energy_kwh=0.1,gkwh=100,pue=1.2"
