import pytest

from attnbench.errors import UsageError
from attnbench.sizes import format_size, parse_size, parse_sizes


@pytest.mark.parametrize("text, value", [("512", 512), ("1k", 1024), ("4K", 4096), ("1m", 1 << 20),
                                         (" 8192 ", 8192)])
def test_parse_size(text, value):
    assert parse_size(text) == value


def test_range_doubles():
    assert parse_sizes("1k..256k") == tuple(1024 * 2**i for i in range(9))


def test_list_and_mix_sorted_unique():
    assert parse_sizes("8192,1k,3k") == (1024, 3072, 8192)
    assert parse_sizes("4k,1k..4k") == (1024, 2048, 4096)


def test_range_that_does_not_land_on_its_end():
    assert parse_sizes("3..20") == (3, 6, 12)


@pytest.mark.parametrize("bad", ["1k..", "..4k", "abc", "0", "-1", "4k..1k", "", " ", "1.5k",
                                 "1k,,x", "2kk"])
def test_bad_sizes_are_usage_errors(bad):
    with pytest.raises(UsageError):
        parse_sizes(bad)


@pytest.mark.parametrize("n, text", [(1024, "1k"), (131072, "128k"), (1000, "1000"),
                                     (1 << 20, "1m")])
def test_format_size(n, text):
    assert format_size(n) == text
