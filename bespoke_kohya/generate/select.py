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

Of the candidates left the first is the token's (not the critic's favourite: see ``best``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..distinguish import NEAR_COPY_DELTA_E, NEAR_COPY_SHARE, critic_scores
from ..metrics import Reference, _labs, background_colour_names, border_colour, colour_name, colour_names, difference_matrix, style_values

REASONS = ("near-copy", "duplicate", "background", "off-style", "style", "critic")
CRITIC_QUANTILE = 0.2  # candidates the critic scores below this share of the pilot draws are left out
# Style metrics whose values beyond the real set's 95th percentile are flaws a person sees at once.
UPPER_LIMITS = ("ring_colours", "distinct_colours", "orphan_pixels")
STYLE_QUANTILE = 0.5  # `style` (soft): beyond the training range and this share of the model's own pilot draws (its worse half)
OFF_STYLE_QUANTILE = 0.9  # `off-style` (hard): beyond the training range and this share of them (its worst tenth)


SOFT = ("background", "style", "critic")  # a token whose candidates all fail keeps its best try when only these objected


@dataclass
class Verdict:
    """One candidate judged: every rule it breaks (the first is its reason; none: kept), and its critic score."""

    reasons: list[tuple[str, str]]  # (reason, detail), in REASONS order
    score: float
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
        return cls(list(names), _labs(arts), critic, floor, limits)

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
        out = []
        for i, art in enumerate(arts):
            j = int(to_training[i].argmin())
            nearest, distance = self.names[j], float(to_training[i, j])
            reasons = self._reasons(i, art, distance, nearest, to_tokens, wanted, scores[i])
            out.append(Verdict(reasons, float(scores[i]), nearest, distance, colour_name(border_colour(art))))
        return out

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


def best(verdicts: list[Verdict]) -> int | None:
    """The first candidate no rule left out, or None when every one was.

    The first, not the critic's favourite: keeping the favourite made a collection of the 9,000-step pixel24 model much
    easier to tell from the real punks (two-sample 0.86, against 0.76 for the first passing candidate and 0.75 for the
    first draws: benchmarks/generate_rescore.py). The critic picks a corner of what the model draws, not the artist's
    spread; as a rule it leaves out only the candidates it scores below most of the model's own draws."""
    return next((i for i, v in enumerate(verdicts) if v.reason is None), None)


def best_try(verdicts: list[Verdict]) -> int | None:
    """When every candidate was left out: the best of those only the soft rules objected to (the critic's alone first,
    then the critic's score), or None when each breaks a hard rule (a copy, a duplicate, off-style)."""
    soft = [i for i, v in enumerate(verdicts) if v.soft]
    return max(soft, key=lambda i: (-len(verdicts[i].reasons), "background" not in {r for r, _ in verdicts[i].reasons}, verdicts[i].score, -i)) if soft else None
