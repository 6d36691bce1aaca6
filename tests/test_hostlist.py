
import pytest
from hypothesis import given
from hypothesis import strategies as st

from carbond.errors import HostlistError
from carbond.hostlist import MAX_HOSTS, compress, expand


@pytest.mark.parametrize(
    "expr, hosts",
    [
        ("n1", ["n1"]),
        ("cpu-p-[1-3,5],gpu-q-[07-08]", ["cpu-p-1", "cpu-p-2", "cpu-p-3", "cpu-p-5", "gpu-q-07", "gpu-q-08"]),
        ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
        ("n[8-11]", ["n8", "n9", "n10", "n11"]),
        ("n[098-101]", ["n098", "n099", "n100", "n101"]),
        ("a,b[1-2],c", ["a", "b1", "b2", "c"]),
        ("node.example-1", ["node.example-1"]),
    ],
)
def test_expands_like_slurm(expr, hosts):
    assert list(expand(expr)) == hosts


@pytest.mark.parametrize(
    "expr, fault",
    [
        ("", "empty"),
        ("n[1-3", "unclosed"),
        ("n1-3]", "unbalanced"),
        ("n[3-1]", "backwards"),
        ("n[a-b]", "invalid range"),
        ("n[[1]]", "nested"),
        ("a,,b", "empty host"),
        ("n$(id)", "invalid character"),
        ("n[1-99999999]", "too large"),
    ],
)
def test_invalid_hostlists_are_clear_errors(expr, fault):
    with pytest.raises(HostlistError, match=fault):
        expand(expr)


@given(st.lists(st.integers(0, 300), min_size=1, max_size=40, unique=True).map(sorted))
def test_compress_round_trips(numbers):
    hosts = [f"cpu-{n}" for n in numbers]
    assert list(expand(compress(hosts))) == hosts


@pytest.mark.parametrize("expr", ["a[1-1000]b[1-1000]c[1-1000]", "a[1-999999]b[1-999999]",
                                  "a[1-999999],b[1-999999]", "x" + "[1-10]" * 5000])
def test_huge_hostlists_are_counted_before_they_are_built(expr):
    """27 bytes naming 10^9 hosts used to be multiplied out first (1.5 GB, MemoryError after 17 s):
    now refused having built nothing (memory, not time: a loaded CI host must not fail it)."""
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(HostlistError, match="too large"):
            expand(expr)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak  # the 5,000-group expression parses in ~1.3 MB; old code: gigabytes


def test_hostlist_at_the_limit_still_expands():
    hosts = expand("a[1-1000]b[1-1000]")
    assert len(hosts) == MAX_HOSTS and hosts[0] == "a1b1" and hosts[-1] == "a1000b1000"


@pytest.mark.parametrize("expr", ["a\n[1-2]", "a\x00b", "n[1-\n2]", "n[\u0661-\u0662]", "n\u0663", "n[1-2]\x1c",
                                  "n[1-2\t]", "n[" + "9" * 5000 + "]", "ñ1"])
def test_control_characters_and_unicode_digits_are_refused(expr):
    with pytest.raises(HostlistError, match="invalid"):
        expand(expr)
