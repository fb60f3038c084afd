"""The recommended epoch, from four kinds of evidence, each weighed as documented here and in the README.

Every trained epoch's evidence becomes parts between 0 and 1 (1 = good):

  style        the style metrics (metrics.py): typicality of colours, palette, background,
               outline and orphan pixels against the training set (and grid alignment of
               full-size renders), less up to 0.5 when seeds of one prompt look alike;
  distinguish  the classifier two-sample test: 1 at chance (0.5 accuracy), 0 at TOLD_APART;
  near_copies  1 with no near-copies, 0 when MAX_COPY_SHARE of the outputs are near-copies;
  heldout_loss 1 for the epoch with the lowest held-out loss, 0 at LOSS_MARGIN above it.

The score is their weighted mean (WEIGHTS). Evidence an epoch lacks (no held-out loss in an
older run, too few images for the two-sample test) is left out and the rest re-weighted;
an uncertain two-sample result (fewer than MIN_CONFIDENT images per class) weighs less.
The highest score wins, the earlier epoch on a tie (fewer steps, less risk of overfitting).

No epoch is recommended when none is good: an epoch is not good when a classifier always
tells its outputs from real punks (accuracy >= TOLD_APART on enough images; CryptoPunks
against Bespoke Punks read 0.99), when its style metrics all fail (mean typicality below
FAILING_STYLE; a blurred, noisy render reads about 0.1), or when at least MAX_COPY_SHARE
of its outputs are near-copies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


WEIGHT_STYLE = 2.0
WEIGHT_DISTINGUISH = 2.0
WEIGHT_NEAR_COPIES = 2.0
# Held-out loss weighs least: a diffusion model's loss on unseen images tracks overfitting, not how the pixels look.
WEIGHT_HELDOUT_LOSS = 1.0
DIVERSITY_PENALTY = 0.5  # style part lost by an epoch whose seeds are identical (noise is diverse too: diversity never adds)
MAX_COPY_SHARE = 0.5  # an epoch whose outputs are at least half near-copies is never recommended
WEIGHTS = {"style": WEIGHT_STYLE, "distinguish": WEIGHT_DISTINGUISH, "near_copies": WEIGHT_NEAR_COPIES, "heldout_loss": WEIGHT_HELDOUT_LOSS}

CHANCE = 0.5
TOLD_APART = 0.95  # between real vs real (0.54) and CryptoPunks vs Bespoke (0.99): the benchmarks' calibration
CALIBRATION_REAL, CALIBRATION_CRYPTO, CALIBRATION_REAL_COPIES = 0.54, 0.99, 0.07  # benchmarks/README.md, 184 punks
# Images per class below which a two-sample accuracy is uncertain: the CNN learns from too few. Measured on the real
# punks (blurred, noisy renders against held-apart real ones): 0.69 with 24 per class, 0.97 with 52.
MIN_CONFIDENT = 50
LOSS_MARGIN = 0.10  # an epoch whose held-out loss is 10% above the lowest gets 0 for it
FAILING_STYLE = 0.2  # mean style typicality below this: every style metric far outside the training range

PART_LABELS = {"style": "style", "distinguish": "distinguishability", "near_copies": "near-copies", "heldout_loss": "held-out loss"}


@dataclass
class Evidence:
    """What is known about one epoch (None: not measured)."""

    quality: float | None = None  # metrics.py: style typicality (and grid) combined, 0–1
    typicality: float | None = None  # metrics.py "style": mean typicality of the style metrics alone
    diversity: float | None = None  # metrics.py diversity_score, 0–1
    copy_share: float = 0.0  # share of outputs that are near-copies of a training image
    accuracy: float | None = None  # two-sample accuracy
    per_class: int = 0  # images per class behind the accuracy
    heldout_loss: float | None = None


@dataclass
class Recommendation:
    epoch: int | None
    reasons: list[str]  # the first is the one sentence the page leads with
    least_bad: int | None = None  # the highest score when no epoch is good (what `report --compare` falls back on)
    problems: dict[int, dict[str, str]] = field(default_factory=dict)  # why an epoch is not good, by kind (NOT_GOOD)


def _clip(x: float) -> float:
    return float(min(1.0, max(0.0, x)))


def style_part(ev: Evidence) -> float | None:
    if ev.quality is None:
        return None
    return _clip(ev.quality - DIVERSITY_PENALTY * (0.0 if ev.diversity is None else 1.0 - ev.diversity))


def distinguish_part(ev: Evidence) -> float | None:
    return None if ev.accuracy is None else _clip((TOLD_APART - ev.accuracy) / (TOLD_APART - CHANCE))


def copies_part(ev: Evidence) -> float:
    return _clip(1.0 - ev.copy_share / MAX_COPY_SHARE)


def loss_parts(evidence: Mapping[int, Evidence]) -> dict[int, float]:
    """Held-out loss parts, relative to the lowest: one epoch alone (or a loss of 0) says nothing, so none."""
    losses = {e: ev.heldout_loss for e, ev in evidence.items() if ev.heldout_loss is not None}
    best = min(losses.values(), default=0.0)
    if len(losses) < 2 or best <= 0:
        return {}
    return {e: _clip(1.0 - (loss - best) / (LOSS_MARGIN * best)) for e, loss in losses.items()}


def parts(evidence: Mapping[int, Evidence]) -> dict[int, dict[str, dict[str, float | None]]]:
    """{epoch: {part: {"part": 0–1 or None, "weight": w}}}: a missing part has weight 0."""
    losses = loss_parts(evidence)
    out = {}
    for e, ev in evidence.items():
        confidence = min(1.0, ev.per_class / MIN_CONFIDENT) if ev.accuracy is not None else 0.0
        values = {"style": style_part(ev), "distinguish": distinguish_part(ev), "near_copies": copies_part(ev), "heldout_loss": losses.get(e)}
        weights = {**WEIGHTS, "distinguish": WEIGHT_DISTINGUISH * confidence}
        out[e] = {k: {"part": v, "weight": weights[k] if v is not None else 0.0} for k, v in values.items()}
    return out


def score(epoch_parts: Mapping[str, Mapping[str, float | None]]) -> float | None:
    """The weighted mean of the parts an epoch has (4 significant digits, so ties are exact); None with none."""
    total = sum(float(p["weight"] or 0.0) for p in epoch_parts.values())
    if total <= 0:
        return None
    return float(f"{sum(float(p['part'] or 0.0) * float(p['weight'] or 0.0) for p in epoch_parts.values()) / total:.4g}")


# What makes an epoch "not good", as the sentence about all of them names it.
NOT_GOOD = {"copies": "mostly near-copies of training images", "told_apart": "told apart from the real punks", "style": "far from the training style"}


def problems(ev: Evidence) -> dict[str, str]:
    """Why an epoch is not good, by kind (NOT_GOOD); empty: it may be recommended."""
    out = {}
    if ev.copy_share >= MAX_COPY_SHARE:
        out["copies"] = f"{ev.copy_share:.0%} of its outputs are near-copies of training images"
    if ev.accuracy is not None and ev.accuracy >= TOLD_APART and ev.per_class >= MIN_CONFIDENT:
        out["told_apart"] = f"a classifier tells its outputs from the real punks (two-sample accuracy {ev.accuracy:.2f}; CryptoPunks read {CALIBRATION_CRYPTO:g})"
    if ev.typicality is not None and ev.typicality < FAILING_STYLE:
        out["style"] = f"its style metrics all fall far outside the training set's range (typicality {ev.typicality:.2f})"
    return out


def _and(phrases: list[str]) -> str:
    if len(phrases) < 2:
        return "".join(phrases) or "the highest score"
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _leads(value: float, others: list[float | None], lower: bool) -> bool:
    """Best of all (ties allowed) and strictly better than at least one other: a shared value explains nothing."""
    known = [o for o in others if o is not None]
    sign = 1.0 if lower else -1.0
    return bool(known) and all(sign * (value - o) <= 0 for o in known) and any(sign * (value - o) < 0 for o in known)


def _why(best: int, evidence: Mapping[int, Evidence], candidates: list[int]) -> str:
    """What the chosen epoch does best of all trained epochs, or its values when it leads in nothing."""
    ev, rivals = evidence[best], [evidence[e] for e in evidence if e != best]
    leads, values = [], []
    if ev.heldout_loss is not None:
        values.append(f"held-out loss {ev.heldout_loss:.4g}")
        if _leads(ev.heldout_loss, [r.heldout_loss for r in rivals], lower=True):
            leads.append(f"lowest held-out loss ({ev.heldout_loss:.4g})")
    if ev.accuracy is not None:
        values.append(f"two-sample accuracy {ev.accuracy:.2f}")
        if _leads(ev.accuracy, [r.accuracy for r in rivals], lower=True):
            leads.append(f"hardest to tell from the real punks (accuracy {ev.accuracy:.2f}, 0.5 = indistinguishable)")
    if (style := style_part(ev)) is not None:
        values.append(f"style {style:.2f}")
        if _leads(style, [style_part(r) for r in rivals], lower=False):
            leads.append(f"closest to the training style ({style:.2f})")
    if leads:
        return _and(leads)
    if not rivals:
        return _and(values)
    return ("the best balance of " if len(candidates) > 1 else "the only good epoch, with ") + _and(values)


def _runner_up(candidates: list[int], scores: Mapping[int, float | None]) -> str:
    """The next good epoch's score (candidates are ranked best first)."""
    return f", next epoch {candidates[1]} with {scores[candidates[1]]:.2f}" if len(candidates) > 1 else ""


def _span(values: list[float]) -> str:
    low, high = f"{min(values):.2f}", f"{max(values):.2f}"
    return low if low == high else f"{low}–{high}"


def _none_good(bad: Mapping[int, Mapping[str, str]], evidence: Mapping[int, Evidence]) -> str:
    """One sentence saying plainly that no epoch is good, grouped by reason."""
    phrases = []
    for kind, what in NOT_GOOD.items():
        epochs = [e for e in sorted(bad) if kind in bad[e]]
        if not epochs:
            continue
        who = "every epoch" if len(epochs) == len(evidence) else ("epoch " if len(epochs) == 1 else "epochs ") + ", ".join(map(str, epochs))
        detail = ""
        if kind == "told_apart":
            accs = [float(evidence[e].accuracy or 0.0) for e in epochs]
            detail = f" (two-sample accuracy {_span(accs)}; CryptoPunks against Bespoke Punks read {CALIBRATION_CRYPTO:g})"
        elif kind == "style":
            detail = f" (every style metric outside the training range: mean typicality {_span([float(evidence[e].typicality or 0.0) for e in epochs])}, 1 = typical)"
        phrases.append(f"{who} {'is' if len(epochs) == 1 or who == 'every epoch' else 'are'} {what}{detail}")
    return "No epoch is good: " + "; ".join(phrases) + "."


def recommend(evidence: Mapping[int, Evidence]) -> Recommendation:
    """The recommended epoch among trained epochs, and the one sentence why (or why none is good)."""
    if not evidence:
        return Recommendation(None, ["no trained epoch has samples to compare yet"])
    table = parts(evidence)
    scores = {e: score(table[e]) for e in evidence}
    bad = {e: found for e in sorted(evidence) if (found := problems(evidence[e]))}
    ranked = sorted((e for e in evidence if scores[e] is not None), key=lambda e: (-scores[e], e))  # type: ignore[operator]
    least_bad = ranked[0] if ranked else None
    candidates = [e for e in ranked if e not in bad]
    if not candidates:
        reasons = [_none_good(bad, evidence)]
        if least_bad is not None:
            reasons.append(f"the least bad is epoch {least_bad} (score {scores[least_bad]:.2f}); train longer, change the settings or the data, and compare the images before using any")
        return Recommendation(None, reasons, least_bad, bad)
    best = candidates[0]
    ev = evidence[best]
    copies = "no near-copies" if ev.copy_share == 0 else f"near-copies in {ev.copy_share:.0%} of its outputs"
    only = " (the only sampled epoch)" if len(evidence) == 1 else ""
    sentence = f"Epoch {best}{only}: {_why(best, evidence, candidates)}; {copies} (score {scores[best]:.2f}{_runner_up(candidates, scores)})."
    reasons = [sentence]
    if ev.accuracy is not None and ev.per_class < MIN_CONFIDENT:
        reasons.append(f"its two-sample accuracy rests on {ev.per_class} images per class, so it is uncertain (it weighs less)")
    reasons += [f"epoch {e} is not recommended: {'; '.join(found.values())}" for e, found in bad.items()]
    if ev.typicality is not None and ev.typicality < 2 * FAILING_STYLE:
        reasons.append("even this epoch is far from the training style; compare the images before using it")
    return Recommendation(best, reasons, best, bad)
