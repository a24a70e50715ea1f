import pytest

from autotune.global_batch import split_global_batch


def test_without_target_uses_the_frontier():
    s = split_global_batch(None, 7)
    assert (s.per_device, s.accumulation, s.exact) == (7, 1, True)


@pytest.mark.parametrize("target", range(1, 70))
@pytest.mark.parametrize("frontier", [1, 3, 4, 7, 16])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_split_against_brute_force(target, frontier, world):
    s = split_global_batch(target, frontier, world)
    assert 1 <= s.per_device <= frontier
    exact = [(b, g) for b in range(1, frontier + 1) for g in range(1, target + 1) if b * g * world == target]
    if exact:
        assert s.exact and s.effective == target and s.note is None
        assert s.per_device == max(b for b, _ in exact)
    else:
        assert not s.exact and str(target) in s.note
        closest = min(abs(b * g * world - target) for b in range(1, frontier + 1) for g in range(1, 2 * target + 2))
        assert abs(s.effective - target) == closest


def test_moe_llava_case():
    """The field's case: batch 8 x accumulation 2 OOMs on 8 GPUs, frontier 4 -> 4 x 4 keeps 128."""
    s = split_global_batch(128, 4, 8)
    assert (s.per_device, s.accumulation, s.effective) == (4, 4, 128)
