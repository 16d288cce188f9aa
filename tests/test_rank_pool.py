"""``rank`` says when the pool is too small for any check of its ranking to mean much: with n
candidates in a random order, a perfect agreement with fine-tuning (Kendall tau = 1) happens with
probability 1 / n!, so below 5 candidates (1/120 = 0.0083) even a perfect score proves little."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from cli_helpers import run
from transferkit.data import few_shot, load_dataset
from transferkit.models import create_model, save_model
from transferkit.selection.rank import MIN_POOL, RankResult, pool_note, rank


def _exact_p(n: int, max_inversions: int) -> float:
    """P(a random order of n has at most ``max_inversions`` discordant pairs), by enumeration."""
    hits = 0
    perms = list(itertools.permutations(range(n)))
    for p in perms:
        inversions = sum(p[i] > p[j] for i in range(n) for j in range(i + 1, n))
        hits += inversions <= max_inversions
    return hits / len(perms)


def test_note_numbers_are_exact():
    assert MIN_POOL == 5
    assert pool_note(2) == (
        "pool of 2 candidates: too few to validate the ranking; even a perfect agreement with fine-tuned "
        "accuracies would happen by chance 1 time in 2 (p = 0.5, Kendall tau = 1, one-sided); rank at "
        "least 5 candidates (p = 0.0083 for a perfect ranking) before trusting a correlation of the "
        "scores with fine-tuned accuracies"
    )
    three = pool_note(3)
    assert "pool of 3 candidates" in three and "1 time in 6 (p = 0.17," in three
    assert "at most one swapped pair 1 time in 2 (p = 0.5)" in three
    four = pool_note(4)
    assert "1 time in 24 (p = 0.042," in four and "at most one swapped pair 1 time in 6 (p = 0.17)" in four
    # the numbers are the exact null probabilities
    for n in (2, 3, 4, 5):
        assert _exact_p(n, 0) == pytest.approx(1 / math.factorial(n))
    for n in (3, 4, 5):
        assert _exact_p(n, 1) == pytest.approx(1 / math.factorial(n - 1))
    assert _exact_p(5, 1) < 0.05 < _exact_p(4, 1)  # why 5: one swap still significant only from 5 on
    assert "nothing is ranked" in pool_note(1)
    assert pool_note(5) is None and pool_note(12) is None


def _rows(n: int) -> list[dict]:
    return [{"name": f"c{i}", "logme": float(i), "seconds_features": 0.1, "seconds_scores": 0.1}
            for i in range(n)]


@pytest.mark.parametrize("n", [2, 3])
def test_small_pool_result_carries_the_note_into_json(tmp_path, n):
    result = RankResult(rows=_rows(n), scores=["logme"])
    assert result.note == pool_note(n) and f"1 time in {math.factorial(n)}" in result.note
    assert result.to_dict()["note"] == result.note
    loaded = json.loads(result.write(tmp_path / "r.json").read_text())
    assert loaded["note"] == result.note


@pytest.mark.parametrize("n", [5, 6])
def test_pool_of_five_or_more_has_no_note(tmp_path, n):
    result = RankResult(rows=_rows(n), scores=["logme"])
    assert result.note is None
    assert json.loads(result.write(tmp_path / "r.json").read_text())["note"] is None


def _mlp(seed: int):
    torch.manual_seed(seed)
    return create_model("mlp", in_features=64, hidden=(8,), num_classes=10)


@pytest.fixture(scope="module")
def small_digits():
    return few_shot(load_dataset("digits").train, 3, 0)


def test_rank_of_three_models_says_so(small_digits):
    result = rank({f"m{i}": _mlp(i) for i in range(3)}, small_digits, scores=["logme"])
    assert result.note is not None and result.note.startswith("pool of 3 candidates")
    assert "(p = 0.17," in result.note


def test_cli_prints_the_note_after_the_table_only_for_small_pools(tmp_path):
    folders = [str(save_model(_mlp(i), tmp_path / f"m{i}")) for i in range(5)]
    base = ["rank", "--data", "digits", "--shots", "3", "--scores", "logme"]
    two = run(*base, "--candidates", folders[0], "--candidates", folders[1], "--out", tmp_path / "two.json")
    assert two.exit_code == 0, two.output
    lines = two.stdout.splitlines()
    assert lines[0].startswith("scored on ")  # the data the scores saw, then the table
    lines = lines[1:]
    assert lines[0].split()[:2] == ["rank", "name"]
    assert [line.split()[0] for line in lines[1:3]] == ["1", "2"]
    assert lines[3] == f"note: {pool_note(2)}"  # the line right after the table
    assert json.loads((tmp_path / "two.json").read_text())["note"] == pool_note(2)
    five = run(*base, *itertools.chain.from_iterable(("--candidates", f) for f in folders))
    assert five.exit_code == 0, five.output
    assert "note:" not in five.output and "pool of" not in five.output
