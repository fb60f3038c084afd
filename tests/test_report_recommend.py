"""The recommendation (report/recommend.py): evidence weighed into one epoch and one sentence, or "no epoch is good".

Hand-made evidence with known answers; the report tests run the same code on real images.
"""

from __future__ import annotations

import pytest

from bespoke_kohya.report import best_epoch
from bespoke_kohya.report.recommend import (FAILING_STYLE, MIN_CONFIDENT, TOLD_APART, WEIGHT_DISTINGUISH, WEIGHTS, Evidence, parts, recommend, score)


def good(**changes: object) -> Evidence:
    """An epoch that is fine on every count (typical style, hard to tell apart, no copies)."""
    base = {"quality": 0.7, "typicality": 0.7, "diversity": 1.0, "copy_share": 0.0, "accuracy": 0.7, "per_class": 50, "heldout_loss": 0.45}
    return Evidence(**{**base, **changes})  # type: ignore[arg-type]


def test_picks_the_epoch_the_evidence_favours_and_says_why_in_one_sentence() -> None:
    evidence = {1: good(heldout_loss=0.47, accuracy=0.80), 2: good(heldout_loss=0.44, accuracy=0.66), 3: good(heldout_loss=0.412, accuracy=0.61), 4: good(heldout_loss=0.43, accuracy=0.64)}
    rec = recommend(evidence)
    assert rec.epoch == 3 and rec.problems == {}
    sentence = rec.reasons[0]
    assert sentence.startswith("Epoch 3: lowest held-out loss (0.412) and hardest to tell from the real punks (accuracy 0.61")
    assert "; no near-copies (score " in sentence and ", next epoch 4 with " in sentence
    assert sentence.count(".") == sentence.count("0.") + 1  # one sentence: the only full stop ends it


def test_the_weights_are_the_documented_ones_and_missing_evidence_reweights_the_rest() -> None:
    table = parts({1: good(heldout_loss=None, accuracy=None), 2: good(heldout_loss=None, accuracy=None)})
    assert {k: v["weight"] for k, v in table[1].items()} == {"style": WEIGHTS["style"], "distinguish": 0.0, "near_copies": WEIGHTS["near_copies"], "heldout_loss": 0.0}
    # style part 0.7 (×2) and no copies 1.0 (×2): the mean of what is there, not diluted by what is missing
    assert score(table[1]) == pytest.approx((0.7 * 2 + 1.0 * 2) / 4, abs=1e-4)
    one_loss = parts({1: good(heldout_loss=0.4), 2: good(heldout_loss=None)})
    assert one_loss[1]["heldout_loss"]["part"] is None  # one epoch's loss compares with nothing


def test_held_out_loss_part_is_relative_to_the_lowest_epoch() -> None:
    table = parts({1: good(heldout_loss=0.40), 2: good(heldout_loss=0.42), 3: good(heldout_loss=0.50)})
    assert [table[e]["heldout_loss"]["part"] for e in (1, 2, 3)] == [1.0, pytest.approx(0.5), 0.0]


def test_an_uncertain_accuracy_weighs_less_and_never_rules_an_epoch_out() -> None:
    few = MIN_CONFIDENT // 2
    table = parts({1: good(accuracy=0.99, per_class=few)})
    assert table[1]["distinguish"]["weight"] == pytest.approx(WEIGHT_DISTINGUISH * few / MIN_CONFIDENT)
    rec = recommend({1: good(accuracy=0.99, per_class=few)})
    assert rec.epoch == 1
    assert any("uncertain" in r for r in rec.reasons)


def test_no_epoch_is_good_when_every_epoch_is_told_apart_from_the_real_punks() -> None:
    rec = recommend({1: good(accuracy=0.99), 2: good(accuracy=TOLD_APART, heldout_loss=0.40), 3: good(accuracy=0.97)})
    assert rec.epoch is None
    assert rec.reasons[0].startswith("No epoch is good: every epoch is told apart from the real punks (two-sample accuracy 0.95–0.99")
    assert rec.least_bad == 2 and "the least bad is epoch 2" in rec.reasons[1]
    assert best_epoch({"recommendation": {"epoch": rec.epoch, "least_bad": rec.least_bad}}) == 2


def test_no_epoch_is_good_when_styles_fail_or_copies_dominate_and_the_sentence_says_which() -> None:
    failing = FAILING_STYLE / 2
    rec = recommend({1: good(typicality=failing, quality=failing), 2: good(copy_share=0.8), 3: good(typicality=failing, quality=failing)})
    assert rec.epoch is None
    assert rec.reasons[0] == ("No epoch is good: epoch 2 is mostly near-copies of training images; "
                              "epochs 1, 3 are far from the training style (every style metric outside the training range: mean typicality 0.10, 1 = typical).")
    assert set(rec.problems) == {1, 2, 3}


def test_a_bad_epoch_is_never_picked_whatever_its_score() -> None:
    # Epoch 2 copies half its outputs but is otherwise the best; epoch 1 is plainer and clean.
    rec = recommend({1: good(quality=0.5, typicality=0.5, accuracy=0.8), 2: good(copy_share=0.5, heldout_loss=0.3, accuracy=0.5)})
    assert rec.epoch == 1
    assert rec.reasons[0].startswith("Epoch 1: the only good epoch, with ")
    assert "epoch 2 is not recommended: 50% of its outputs are near-copies of training images" in rec.reasons


def test_ties_go_to_the_earlier_epoch_and_one_epoch_says_so() -> None:
    assert recommend({3: good(), 2: good()}).epoch == 2
    only = recommend({1: good()})
    assert only.epoch == 1 and only.reasons[0].startswith("Epoch 1 (the only sampled epoch): ")
    assert recommend({}).epoch is None
