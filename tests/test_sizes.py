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


@pytest.mark.parametrize("text,fix", [("80", "80GiB"), ("24", "24GiB"), ("1.5", "1.5GiB"), ("1048575", "1048575GiB")])
def test_a_bare_number_below_one_mib_is_a_forgotten_unit(text, fix):
    with pytest.raises(UsageError) as info:
        parse_size(text)
    message = str(info.value)
    assert message.startswith("--gpu-memory: ") and "means" in message and f"write {fix}" in message
    assert "\n" not in message


@pytest.mark.parametrize("argv", [
    ["probe", "--model-config", "tiny-llama", "--device", "sim", "--gpu-memory", "80", "--max-length", "16"],
    ["plan", "--model-config", "tiny-llama", "--gpu-memory", "80", "--max-length", "16"],
    ["plan", "--model-config", "tiny-llama", "--gpu-memory", "80GiB", "--workspaces", "64", "--max-length", "16"],
])
def test_the_commands_refuse_a_unitless_size_in_one_line(argv, tmp_path, capsys, monkeypatch):
    from autotune.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "GiB" in err[0] and "bytes" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_check_and_per_rank_sizes_share_the_rule():
    from autotune.cluster.launch import gpu_memory_sizes

    with pytest.raises(UsageError, match="write 80GiB"):
        gpu_memory_sizes("24GiB,80")
