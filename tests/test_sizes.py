import pytest

from autotune.errors import UsageError
from autotune.sizes import format_size, parse_size


@pytest.mark.parametrize("text,expected", [
    ("24GiB", 24 * 1024**3), ("24GB", 24 * 1000**3), ("512MiB", 512 * 1024**2), ("1.5G", int(1.5 * 1024**3)),
    ("1048576", 1048576), ("80 gb", 80 * 1000**3), ("2TiB", 2 * 1024**4),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "24XB", "-1GiB", "0", "1..2G", "abc"])
def test_parse_size_rejects(text):
    with pytest.raises(UsageError) as info:
        parse_size(text)
    assert "--gpu-memory" in str(info.value)


def test_format_size():
    assert format_size(512) == "512 B"
    assert format_size(3 * 1024**3) == "3.00 GiB"
    assert format_size(None) == "-"
