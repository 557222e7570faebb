"""Which version an installation gets, and which If-None-Match headers name a file."""

from __future__ import annotations

from collections import Counter

from app.delivery.service import choose_version, etag_matches

SHA = "0123456789abcdef" * 4


def test_one_published_version_is_everyones():
    assert {
        choose_version({"3": 100}, model_id="m", installation_id=f"i{n}") for n in range(50)
    } == {3}
    assert choose_version({"3": 100}, model_id="m", installation_id=None) == 3


def test_without_an_installation_the_heaviest_then_the_newest():
    assert choose_version({"3": 80, "4": 20}, model_id="m", installation_id=None) == 3
    assert choose_version({"3": 20, "4": 80}, model_id="m", installation_id=None) == 4
    assert choose_version({"3": 50, "4": 50}, model_id="m", installation_id=None) == 4
    assert choose_version({"10": 50, "9": 50}, model_id="m", installation_id=None) == 10


def test_weights_set_the_shares_and_zero_weights_get_nothing():
    split = {"1": 90, "2": 10, "3": 0}
    counts = Counter(
        choose_version(split, model_id="m", installation_id=f"i{n}") for n in range(2000)
    )
    assert set(counts) == {1, 2}
    assert 1700 <= counts[1] <= 1900, counts
    assert choose_version({"1": 0}, model_id="m", installation_id="i") is None
    assert choose_version({}, model_id="m", installation_id=None) is None


def test_the_draw_is_stable_and_differs_between_models():
    split = {"1": 50, "2": 50}
    ids = [f"i{n}" for n in range(200)]
    first = [choose_version(split, model_id="a", installation_id=i) for i in ids]
    assert first == [choose_version(split, model_id="a", installation_id=i) for i in ids]
    # Keyed by the model too: one installation is not in the same arm of every experiment.
    assert first != [choose_version(split, model_id="b", installation_id=i) for i in ids]


def test_if_none_match_forms():
    for header in (SHA, f'"{SHA}"', f'W/"{SHA}"', f'"x", {SHA}', f"  {SHA.upper()} ", "*"):
        assert etag_matches(header, SHA), header
    for header in (None, "", '"x"', SHA[:-1], f'"{SHA}', f"{SHA}0"):
        assert not etag_matches(header, SHA), header
