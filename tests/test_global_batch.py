import pytest

from autotune.search.global_batch import split_advice, split_global_batch


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
        assert s.exact and s.effective == target
        assert s.per_device == max(b for b, _ in exact)
        whole = s.accumulation == 1  # a rank's share fits whole: nothing to advise
        assert (s.note is None) == (frontier < 2 or 2 * s.per_device >= frontier or whole), s.note
    else:
        assert not s.exact and str(target) in s.note
        closest = min(abs(b * g * world - target) for b in range(1, frontier + 1) for g in range(1, 2 * target + 2))
        assert abs(s.effective - target) == closest


def test_moe_llava_case():
    """The field's case: batch 8 x accumulation 2 OOMs on 8 GPUs, frontier 4 -> 4 x 4 keeps 128."""
    s = split_global_batch(128, 4, 8)
    assert (s.per_device, s.accumulation, s.effective) == (4, 4, 128)


def test_a_prime_global_batch_says_no_split_is_close_and_suggests_neighbours():
    """97 is prime: exactly only 1 x 97 although 14 fits; 96 = 12 x 8 and 98 = 14 x 7 split well."""
    s = split_global_batch(97, 14)
    assert (s.per_device, s.accumulation, s.exact) == (1, 97, True)
    assert "no split is close" in s.note and "96 (12 x 8 x 1) or 98 (14 x 7 x 1)" in s.note
    assert split_global_batch(96, 14).note is None  # 12 of 14: close enough
    s = split_global_batch(2 * 97, 14, world_size=2)
    assert "192 (12 x 8 x 2) or 196 (14 x 7 x 2)" in s.note


def test_a_global_batch_a_rank_takes_whole_gets_no_advice():
    """8 with 26 fitting is 8 x 1: no accumulation, nothing a split could improve (it used to
    suggest 20); 16 on 4 ranks with 13 fitting is 4 x 1 x 4 (it used to suggest 108)."""
    assert split_global_batch(8, 26).note is None and split_advice(8, 26) is None
    assert split_advice(16, 13, world_size=4) is None
    assert split_advice(97, 14) is not None


def test_probe_says_so_in_the_recipe_and_the_output(tmp_path, capsys):
    from autotune.cli import main
    from autotune.recipe.schema import load_recipe

    out = tmp_path / "r.yaml"
    assert main(["probe", "--model-config", "tiny-gpt2", "--device", "sim", "--gpu-memory", "8MiB", "--max-length", "32",
                 "--max-batch-size", "4", "--global-batch-size", "5", "--attn", "sdpa", "--gradient-checkpointing", "off",
                 "--no-eval", "--validate-steps", "3", "--quiet", "--out", str(out)]) == 0
    recipe = load_recipe(out)
    assert recipe.search.frontier["train"] == 4 and recipe.settings.per_device_train_batch_size == 1
    assert "no split is close" in recipe.search.global_batch_note and "4 (4 x 1 x 1) or 6 (3 x 2 x 1)" in recipe.search.global_batch_note
    assert "no split is close" in " ".join(capsys.readouterr().out.split())  # rich wraps long lines


def test_plan_says_so_in_its_output(capsys):
    """`plan --global-batch-size 8 --world-size 3` chose 3 x 1 per rank (9 in all) and its table
    did not say that 8 cannot be split; the probe's summary does."""
    from autotune.cli import main

    assert main(["plan", "--model-config", "tiny-llama", "--max-length", "32", "--gradient-checkpointing", "off",
                 "--gpu-memory", "80GB", "--global-batch-size", "8", "--world-size", "3", "--strategy", "zero3", "--quiet"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "note 74.51 GiB: global batch 8 cannot be split exactly (8 is not a multiple of the world size 3)" in out
