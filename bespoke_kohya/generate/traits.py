"""Traits: the run's own captions as a small vocabulary a collector can read, and each token's draw from it.

Every training caption is split into phrases; each phrase that describes a trait (the
categories of `dataset captions`: background, hair, eyes, skin, accessories, expression)
gets a short categorical value: a colour name and, for hair and backgrounds, one style word
("black long", "purple", "split"), an accessory's item ("cap"), an expression's word. The
artist's own phrase is kept for the prompt. A token draws its type (lad, lady, …) first,
then one value per trait with the value's frequency among the training images of that type
as its rarity, and one of the artist's phrases for that value, so prompts read like the
training captions and a lady is never given a lad's skin-tone phrase.

`--traits FILE` (TOML, :class:`TraitRules`) changes the weights, forbids values and forbids
combinations. A token's traits are its DNA: two tokens never share one.
"""

from __future__ import annotations

import difflib
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..captions import TRIGGER, phrase_category
from ..dataset import split_phrases
from ..errors import UserError
from ..metrics import background_colour_names, colour_names_in

TYPE = "type"  # the word after the trigger ("portrait of bespoke punk lad"): drawn first, every other trait depends on it
NONE = "none"  # a trait the image's caption does not mention (no accessory)
FACIAL = "facial hair"  # a hair phrase about a beard or stubble: its own trait, so a lad's hair and beard are both drawn
CATEGORY_TRAITS = ("background", "hair", FACIAL, "eyes", "skin", "accessories", "expression")
TRAITS = (TYPE, *CATEGORY_TRAITS)
# The order trait phrases take in a prompt: the artist's captions name hair first and the background last.
PROMPT_ORDER = ("hair", FACIAL, "accessories", "expression", "eyes", "skin", "background")
FACIAL_WORDS = ("beard", "stubble", "mustache", "mustach", "moustache", "goatee", "sideburns")
# Backgrounds of more than one colour, by the word that says how ("two tone" is read as "tone").
PATTERNS = {"split": "split", "gradient": "gradient", "radial": "radial", "pinstripe": "pinstripe", "pinstriped": "pinstripe", "striped": "striped",
            "stripes": "striped", "checkered": "checkered", "checker": "checkered", "brick": "brick", "multicolored": "multicolour",
            "multicoloured": "multicolour", "tone": "two tone", "ekg": "pattern", "pattern": "pattern", "patterned": "pattern", "nature": "scene"}
HAIR_COLOURS = {"blonde": "blonde", "blond": "blonde", "platinum": "blonde", "ginger": "red", "auburn": "red", "brunette": "brown"}
HAIR_STYLES = ("bald", "mohawk", "afro", "dreadlocks", "dreads", "braids", "braided", "ponytail", "pony", "pigtails", "bun", "updo", "bob", "bangs",
               "curly", "wavy", "straight", "spiky", "messy", "slicked", "parted", "shaved", "buzzed", "buzz", "long", "short")
SKIN_TONES = ("pale", "light", "medium", "tan", "olive", "dark", "deep")
EXPRESSIONS = ("smile", "grin", "smirk", "frown", "neutral", "serious", "surprised", "sad", "angry")
ITEMS = ("sunglasses", "glasses", "goggles", "cap", "hat", "beanie", "beret", "crown", "tiara", "headband", "bandana", "hood", "helmet",
         "earrings", "earring", "necklace", "chain", "bow", "veil", "cape", "lanyard", "mask", "pipe", "cigarette", "headphones")
MAX_DRAWS = 200  # attempts at a token's traits before the vocabulary is called too small for the collection


def _words(phrase: str) -> list[str]:
    return [w.strip("()") for w in phrase.lower().replace("-", " ").split()]


def _colour(phrase: str) -> str | None:
    """The first colour a phrase names (a hair word like "blonde" first), by its name in the colour table."""
    for w in _words(phrase):
        if w in HAIR_COLOURS:
            return HAIR_COLOURS[w]
    names = colour_names_in(phrase)
    return sorted(names[0])[0] if names else None


def _first(words: list[str], vocabulary: tuple[str, ...]) -> str | None:
    return next((v for v in vocabulary if v in words), None)


def trait_value(category: str, phrase: str) -> str:
    """The short value a collector reads for one phrase of ``category`` (the artist's phrase is kept for the prompt)."""
    words = _words(phrase)
    if category == "background":
        named = background_colour_names(phrase)
        if named:
            return sorted(named)[0]
        pattern = next((PATTERNS[w] for w in words if w in PATTERNS), None)
        if pattern is None and "to" in words and len(colour_names_in(phrase)) > 1:
            pattern = "gradient"  # "aqua teal blue to seafoam light green background"
        return pattern or ("solid" if "solid" in words else "other")
    if category == FACIAL:
        return _first(words, FACIAL_WORDS).replace("mustach", "mustache").replace("mustachee", "mustache") if _first(words, FACIAL_WORDS) else "other"
    if category == "hair":
        style = _first(words, HAIR_STYLES)
        if style == "bald":
            return "bald"
        parts = [p for p in (_colour(phrase), {"dreads": "dreadlocks", "pony": "ponytail", "buzzed": "buzz"}.get(style or "", style)) if p]
        return " ".join(parts) or "other"
    if category == "skin":
        return _first(words, SKIN_TONES) or _colour(phrase) or "other"
    if category == "accessories":
        item = _first(words, ITEMS)
        return "earrings" if item == "earring" else item or "other"
    if category == "expression":
        return _first(words, EXPRESSIONS) or "other"
    return _colour(phrase) or "other"  # eyes


@dataclass
class Vocabulary:
    """Per type: each trait's values with their counts and the artist's phrases for each (from the training captions)."""

    types: Counter[str] = field(default_factory=Counter)
    counts: dict[str, dict[str, Counter[str]]] = field(default_factory=dict)  # type -> trait -> value -> images
    phrases: dict[str, dict[str, dict[str, list[str]]]] = field(default_factory=dict)  # type -> trait -> value -> phrases

    def values(self, trait: str) -> set[str]:
        """Every value ``trait`` takes in any type."""
        if trait == TYPE:
            return set(self.types)
        return {v for by_trait in self.counts.values() for v in by_trait.get(trait, {})}

    def table(self) -> dict[str, dict[str, int]]:
        """trait -> value -> images, over every type (what `generate` prints and the page shows)."""
        out: dict[str, Counter[str]] = {TYPE: Counter(self.types)}
        for by_trait in self.counts.values():
            for trait, counter in by_trait.items():
                out.setdefault(trait, Counter()).update(counter)
        return {t: dict(c.most_common()) for t, c in out.items()}


def caption_type(caption: str, trigger: str = TRIGGER) -> tuple[str, list[str]]:
    """(type, the caption's other phrases): the word after the trigger's last phrase ("portrait of bespoke punk lad" -> "lad")."""
    trigger_phrases = [p.lower() for p in split_phrases(trigger)]
    last = trigger_phrases[-1] if trigger_phrases else ""
    kind, rest = "punk", []
    for phrase in split_phrases(caption):
        low = phrase.lower()
        if low in trigger_phrases:
            continue
        if last and low.startswith(last):
            kind = low[len(last):].strip() or kind
            continue
        rest.append(phrase)
    return kind, rest


def vocabulary(captions: list[str], trigger: str = TRIGGER) -> Vocabulary:
    """The trait vocabulary of the training captions (each caption counts once per value)."""
    vocab = Vocabulary()
    for caption in captions:
        kind, phrases = caption_type(caption, trigger)
        vocab.types[kind] += 1
        counts = vocab.counts.setdefault(kind, {t: Counter() for t in CATEGORY_TRAITS})
        texts = vocab.phrases.setdefault(kind, {t: {} for t in CATEGORY_TRAITS})
        seen: dict[str, str] = {}
        for phrase in phrases:
            category = phrase_category(phrase)
            if category == "hair" and _first(_words(phrase), FACIAL_WORDS):
                category = FACIAL
            if category and category not in seen and len(_words(phrase)) > 1:  # "hair" alone says nothing
                seen[category] = trait_value(category, phrase)
                texts[category].setdefault(seen[category], []).append(phrase)
        for category in CATEGORY_TRAITS:
            value = seen.get(category, NONE)
            counts[category][value] += 1
    return vocab


# ------------------------------------------------------------------ --traits FILE


class _Rules(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TraitRules(_Rules):
    """`--traits FILE`: how a collection's traits are drawn, beyond the training frequencies.

    ```toml
    [weights.background]       # relative weights replacing the training frequency of these values
    purple = 3.0
    [forbid]                   # values never drawn
    hair = ["bald"]
    [[exclude]]                # combinations never drawn together (every listed trait at once)
    type = "lady"
    accessories = "cap"
    ```
    """

    weights: dict[str, dict[str, float]] = Field(default_factory=dict, description="trait -> value -> relative weight (replaces its frequency).")
    forbid: dict[str, list[str]] = Field(default_factory=dict, description="trait -> values never drawn.")
    exclude: list[dict[str, str]] = Field(default_factory=list, description="Combinations of trait values never drawn together.")

    @field_validator("weights")
    @classmethod
    def _positive(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for trait, by_value in value.items():
            for v, w in by_value.items():
                if not (w >= 0 and w < float("inf")):
                    raise ValueError(f"{trait}.{v}: a weight must be a finite number ≥ 0, got {w}")
        return value


def _did_you_mean(word: str, choices: set[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def read_rules(path: Path, vocab: Vocabulary) -> TraitRules:
    """`--traits FILE` parsed and checked against the vocabulary: every trait and value it names exists."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--traits {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--traits {path}: cannot read it as UTF-8 text ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"--traits {path}: not valid TOML ({exc})") from None
    try:
        rules = TraitRules.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise UserError(f"--traits {path}: {where}: {err['msg'].removeprefix('Value error, ')}; see `bespoke-kohya generate --help`") from None
    named = [(t, v) for t, by in rules.weights.items() for v in by] + [(t, v) for t, vs in rules.forbid.items() for v in vs]
    named += [(t, v) for combo in rules.exclude for t, v in combo.items()]
    for trait, value in named:
        if trait not in TRAITS:
            raise UserError(f"--traits {path}: trait {trait!r} is unknown{_did_you_mean(trait, set(TRAITS))}; traits: {', '.join(TRAITS)}")
        known = vocab.values(trait)
        if value not in known:
            raise UserError(f"--traits {path}: {trait} = {value!r} is not a value of this run's captions{_did_you_mean(value, known)}; "
                            f"`bespoke-kohya generate --run RUN --list-traits` lists them")
    return rules


# ------------------------------------------------------------------ drawing a token


@dataclass(frozen=True)
class TokenTraits:
    """What one token was drawn with: its values (its attributes and DNA) and the artist's phrases (its prompt)."""

    values: dict[str, str]
    phrases: dict[str, str]

    @property
    def dna(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(self.values.items()))

    def body(self) -> str:
        """The prompt's body, in the training captions' order: "lady, long blonde hair, slight smile, …, purple background"."""
        return ", ".join([self.values[TYPE], *(self.phrases[t] for t in PROMPT_ORDER if t in self.phrases)])


def _weights(values: list[str], counts: Counter[str], trait: str, rules: TraitRules) -> np.ndarray:
    own = rules.weights.get(trait, {})
    w = np.array([own.get(v, counts[v]) for v in values], np.float64)
    w[[v in rules.forbid.get(trait, []) for v in values]] = 0.0
    return w


def _excluded(values: dict[str, str], rules: TraitRules) -> bool:
    return any(all(values.get(t) == v for t, v in combo.items()) for combo in rules.exclude)


def draw_traits(vocab: Vocabulary, rules: TraitRules, rng: np.random.Generator) -> TokenTraits | None:
    """One draw of a token's traits, or None when this draw hit a forbidden combination (the caller draws again)."""
    kinds = sorted(vocab.types)
    w = _weights(kinds, vocab.types, TYPE, rules)
    if w.sum() <= 0:
        raise UserError("--traits forbids every type; allow at least one")
    kind = kinds[int(rng.choice(len(kinds), p=w / w.sum()))]
    values, phrases = {TYPE: kind}, {}
    for trait in CATEGORY_TRAITS:
        counts = vocab.counts[kind][trait]
        options = sorted(counts)
        w = _weights(options, counts, trait, rules)
        if w.sum() <= 0:
            return None
        values[trait] = options[int(rng.choice(len(options), p=w / w.sum()))]
        if _excluded(values, rules):
            return None
        if values[trait] != NONE:
            texts = vocab.phrases[kind][trait][values[trait]]
            phrases[trait] = texts[int(rng.integers(len(texts)))]
    return TokenTraits(values, phrases)


def token_traits(vocab: Vocabulary, rules: TraitRules, seed: int, n: int, taken: set[tuple[tuple[str, str], ...]],
                 redraw: int = 0) -> tuple[TokenTraits, int]:
    """Token ``n``'s traits: the first draw of its own random stream that is allowed and whose DNA no earlier token has.

    Depends only on the seed, ``n`` and the earlier tokens' DNAs (``taken``), so a shorter collection is the start of a longer one.
    ``redraw`` > 0: a stream of its own for a token whose earlier traits the model could not draw in style.
    Returns (traits, the attempt that gave them).
    """
    for attempt in range(MAX_DRAWS):
        drawn = draw_traits(vocab, rules, np.random.default_rng([seed, n, attempt, redraw]))
        if drawn is not None and drawn.dna not in taken:
            return drawn, attempt
    raise UserError(f"token {n}: {MAX_DRAWS} draws of traits all repeat an earlier token's or hit --traits' exclusions; "
                    f"the captions' vocabulary has too few combinations for this collection: make it smaller (--count) or allow more values")


def plan_traits(vocab: Vocabulary, rules: TraitRules, seed: int, taken: set[tuple[tuple[str, str], ...]], first: int, last: int) -> dict[int, TokenTraits]:
    """Tokens first..last's traits, each DNA once, given the DNAs of the tokens before ``first`` (``taken``).

    It is a plan: a token whose traits the model cannot draw in style gets new ones (`token_traits` with a
    ``redraw``), and the tokens after it are then planned again from the DNAs actually kept.
    """
    taken = set(taken)
    out = {}
    for n in range(first, last + 1):
        traits, _ = token_traits(vocab, rules, seed, n, taken)
        taken.add(traits.dna)
        out[n] = traits
    return out


def collection_traits(vocab: Vocabulary, rules: TraitRules, seed: int, count: int) -> list[TokenTraits]:
    """Tokens 1..count's traits when every token keeps its first draw (a shorter collection is the start of a longer one)."""
    plan = plan_traits(vocab, rules, seed, set(), 1, count)
    return [plan[n] for n in range(1, count + 1)]


def attributes(traits: TokenTraits) -> list[dict[str, Any]]:
    """ERC-721 / OpenSea attributes, one per trait the token has (an absent accessory is not an attribute)."""
    return [{"trait_type": t.capitalize(), "value": v} for t, v in traits.values.items() if v != NONE]
