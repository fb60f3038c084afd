"""Choosing a token's punk among its candidates: the rejections, in the order they are checked, then the best by the critic.

1. ``near-copy``: fewer than 10% of its pixels more than ΔE 3 from a training image (the real set
   has 7% such pairs among its own 184, a collection must have none). First, because a critic
   tends to like copies.
2. ``duplicate``: the same test against every earlier token of the collection.
3. ``background``: the prompt names one background colour and the most common colour of the
   outer ring of pixels does not answer to it (metrics.caption_adherence's test).
4. ``off-style``: a style metric beyond the training images' 95th percentile, where the real punks
   are rarely found, and beyond the worst tenth of the model's own pilot draws: too many colours in
   the outer ring (a patchy background), too many colours in all, too many orphan pixels (speckle).
   ``style``: the same beyond the training range and the model's median draw only (its worse half).
   The model's bounds matter for a tight training set (the CryptoPunks stand-in: ring colours at most
   4) and a model that cannot reach it yet: its worse draws are still left out, and a collection can
   be made; on the Bespoke Punks the training range is the bound.
5. ``critic``: the critic (the two-sample test's CNN trained on the training images against the
   engine's own pilot draws) scores the candidate below all but the worst CRITIC_QUANTILE of the
   pilot draws: it looks most like what the model draws and least like what the artist draws
   (discriminator rejection sampling, Azadi et al. 2019).

Of the candidates left, the one with the highest realism score is the token's (Kynkäänniemi et al.
2019, "Improved precision and recall metric for assessing generative models": the largest ratio, over
the training punks r, of r's distance to its REALISM_K-th nearest training punk to the candidate's
distance to r, with the near-copy rule's distance, the share of pixels more than ΔE 3 apart). It
prefers a candidate that falls inside the artist's set where the set is dense, and one the near-copy
rule already keeps from being a copy; not the critic's favourite (see ``best``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..distinguish import NEAR_COPY_DELTA_E, NEAR_COPY_SHARE, critic_scores
from ..metrics import Reference, _labs, background_colour_names, border_colour, colour_name, colour_names, difference_matrix, even_sample, style_values
from ..paths import ART

REASONS = ("near-copy", "duplicate", "background", "off-style", "style", "critic")
CRITIC_QUANTILE = 0.2  # candidates the critic scores below this share of the pilot draws are left out
# Style metrics whose values beyond the real set's 95th percentile are flaws a person sees at once.
UPPER_LIMITS = ("ring_colours", "distinct_colours", "orphan_pixels")
STYLE_QUANTILE = 0.5  # `style` (soft): beyond the training range and this share of the model's own pilot draws (its worse half)
OFF_STYLE_QUANTILE = 0.9  # `off-style` (hard): beyond the training range and this share of them (its worst tenth)


REALISM_K = 3  # a training punk's neighbourhood: its distance to its 3rd nearest training punk (Kynkäänniemi et al. use k = 3)
REALISM_REFERENCE = 1000  # training punks the realism score compares with (an even sample of a larger set): pairwise distances grow with its square

SOFT = ("background", "style", "critic")  # a token whose candidates all fail keeps its best try when only these objected


@dataclass
class Verdict:
    """One candidate judged: every rule it breaks (the first is its reason; none: kept), its critic and realism scores."""

    reasons: list[tuple[str, str]]  # (reason, detail), in REASONS order
    score: float
    realism: float  # how far inside the training punks' neighbourhoods it falls (> 1: inside one); the kept candidate has the highest
    nearest: str  # the most similar training punk
    nearest_distance: float  # share of pixels more than ΔE 3 from it
    border: str  # the name of its most common border colour (its background, as the image tells it)

    @property
    def reason(self) -> str | None:
        return self.reasons[0][0] if self.reasons else None

    @property
    def detail(self) -> str:
        return self.reasons[0][1] if self.reasons else ""

    @property
    def soft(self) -> bool:
        """Only the soft rules object (a wrong background colour, the critic)."""
        return bool(self.reasons) and all(r in SOFT for r, _ in self.reasons)


@dataclass
class Judge:
    """Everything a candidate is held against: the training set, its style ranges, the critic, the earlier tokens."""

    names: list[str]  # every training image (near-copies are checked against all of them)
    labs: np.ndarray
    critic: object
    critic_floor: float  # the pilot draws' CRITIC_QUANTILE critic score
    limits: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # metric -> (training 95th pct, pilot median, pilot 90th pct)
    reference: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # indices of the training punks the realism score uses
    radii: np.ndarray = field(default_factory=lambda: np.zeros(0))  # each one's distance to its REALISM_K-th nearest of them
    tokens: list[np.ndarray] = field(default_factory=list)  # accepted tokens' 24×24 art, in order
    token_ids: list[int] = field(default_factory=list)

    @classmethod
    def make(cls, names: list[str], arts: np.ndarray, ranges: Reference, critic: object, pilot: np.ndarray) -> "Judge":
        """``ranges``: the training set (or an even sample of a large one) whose 95th percentiles bound the style metrics."""
        floor = float(np.quantile(critic_scores(critic, pilot), CRITIC_QUANTILE)) if len(pilot) else -np.inf
        drawn = [style_values(art) for art in pilot]
        limits = {}
        for key in UPPER_LIMITS:
            if (span := ranges.range_of(key)) is not None:
                model = [float(np.quantile([v[key] for v in drawn], q)) if drawn else -np.inf for q in (STYLE_QUANTILE, OFF_STYLE_QUANTILE)]
                limits[key] = (float(span[1]), *model)
        labs = _labs(arts)
        reference, radii = neighbourhoods(labs)
        return cls(list(names), labs, critic, floor, limits, reference=reference, radii=radii)

    def accept(self, n: int, art: np.ndarray) -> None:
        self.tokens.append(art)
        self.token_ids.append(n)

    def judge(self, arts: list[np.ndarray], prompt: str) -> list[Verdict]:
        """A verdict for each candidate of one token (all judged, so the page can show why each was left out)."""
        stack = np.stack(arts)
        labs = _labs(stack)
        to_training = difference_matrix(labs, self.labs, threshold=NEAR_COPY_DELTA_E)
        to_tokens = difference_matrix(labs, _labs(np.stack(self.tokens)), threshold=NEAR_COPY_DELTA_E) if self.tokens else None
        scores = critic_scores(self.critic, stack)
        wanted = background_colour_names(prompt)
        realism = self._realism(to_training)
        out = []
        for i, art in enumerate(arts):
            j = int(to_training[i].argmin())
            nearest, distance = self.names[j], float(to_training[i, j])
            reasons = self._reasons(i, art, distance, nearest, to_tokens, wanted, scores[i])
            out.append(Verdict(reasons, float(scores[i]), float(realism[i]), nearest, distance, colour_name(border_colour(art))))
        return out

    def _realism(self, to_training: np.ndarray) -> np.ndarray:
        """Each candidate's realism score from its distances to every training punk."""
        return realism_scores(to_training[:, self.reference], self.radii)

    def _reasons(self, i: int, art: np.ndarray, distance: float, nearest: str, to_tokens: np.ndarray | None,
                 wanted: frozenset[str] | None, score: float) -> list[tuple[str, str]]:
        found = []
        if distance < NEAR_COPY_SHARE:
            found.append(("near-copy", f"{distance:.0%} of its pixels differ from {nearest} (a copy differs in under {NEAR_COPY_SHARE:.0%})"))
        if to_tokens is not None:
            k = int(to_tokens[i].argmin())
            if to_tokens[i, k] < NEAR_COPY_SHARE:
                found.append(("duplicate", f"{to_tokens[i, k]:.0%} of its pixels differ from token #{self.token_ids[k]}"))
        if wanted:
            seen = colour_names(border_colour(art))
            if not wanted & seen:
                found.append(("background", f"the prompt asks for a {'/'.join(sorted(wanted))} background, the border is {'/'.join(sorted(seen))}"))
        found += self._style(style_values(art))
        if score < self.critic_floor:
            found.append(("critic", f"the critic scores it {score:.2f}, below {CRITIC_QUANTILE:.0%} of the model's pilot draws ({self.critic_floor:.2f})"))
        return found


    def _style(self, values: dict[str, float]) -> list[tuple[str, str]]:
        """``off-style`` (the first metric beyond its hard bound), else ``style`` (the first beyond its soft one), else nothing."""
        for reason, which, model_words in (("off-style", 2, "the worst tenth of the model's draws"), ("style", 1, "the model's median draw")):
            for key, bounds in self.limits.items():
                real, model = bounds[0], bounds[which]
                if values[key] > max(real, model):
                    beyond = f" and {model_words} {model:.3g}" if model > real else ""
                    return [(reason, f"{key.replace('_', ' ')} {values[key]:.3g} above the training punks' 95th percentile {real:.3g}{beyond}")]
        return []


def neighbourhoods(labs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices of an even sample of at most REALISM_REFERENCE training punks, each one's distance to its REALISM_K-th
    nearest other in the sample); empty when there are too few punks for a neighbourhood."""
    if len(labs) <= REALISM_K:
        return np.zeros(0, int), np.zeros(0)
    reference = np.array(even_sample(len(labs), REALISM_REFERENCE), dtype=int)
    within = difference_matrix(labs[reference], labs[reference], threshold=NEAR_COPY_DELTA_E)
    return reference, np.sort(within, axis=1)[:, REALISM_K]  # column 0 is the punk itself


def realism_scores(distances: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """(M,) realism score of each query from its (M, N) distances to the reference punks whose ``radii`` (N,)
    :func:`neighbourhoods` gives; 0 when there are too few punks to have neighbourhoods."""
    if not len(radii):
        return np.zeros(len(distances))
    return (radii[None, :] / np.maximum(distances, 1 / (ART * ART))).max(axis=1)  # a distance under one pixel counts as one pixel


def best(verdicts: list[Verdict]) -> int | None:
    """Of the candidates no rule left out, the one with the highest realism score (the first of equals), or None when
    every one was left out.

    Measured on the 9,000-step pixel24 model, 200 tokens × 4 candidates, two-sample test against the real punks:
    generate with this rule 0.71 against 0.75 for the same tokens' first draws (benchmarks/generate.py); re-choosing
    saved candidates (benchmarks/generate_rescore.py, then with ΔE 5 distances), the first passing candidate 0.76,
    the highest realism score 0.69, the nearest a training punk 0.70, and the critic's favourite 0.86: the critic picks a corner
    of what the model draws, not the artist's spread, so as a rule it only leaves out the candidates it scores below
    most of the model's own draws."""
    passing = [i for i, v in enumerate(verdicts) if v.reason is None]
    return max(passing, key=lambda i: (verdicts[i].realism, -i)) if passing else None


def best_try(verdicts: list[Verdict]) -> int | None:
    """When every candidate was left out: the best of those only the soft rules objected to (the fewest rules broken,
    then a right background, then the realism score), or None when each breaks a hard rule (a copy, a duplicate, off-style)."""
    soft = [i for i, v in enumerate(verdicts) if v.soft]
    return max(soft, key=lambda i: (-len(verdicts[i].reasons), "background" not in {r for r, _ in verdicts[i].reasons}, verdicts[i].realism, -i)) if soft else None
