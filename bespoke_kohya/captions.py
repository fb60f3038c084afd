"""Caption lint and normalisation: what the artist wrote, checked and (on request) fixed.

``lint`` lists typed problems per caption file (glued words, unknown or rare words,
repeated phrases, empty or dangling phrases, missing captions, contradictions) and the
trait vocabulary of the set; ``normalise_caption`` returns the fixed text. Pure
functions: nothing here prints or writes, except ``write_fixed`` (the ``--fix`` copy).

Word segmentation is ``wordsegment`` (Grant Jenks; Norvig's unigram/bigram model over
the Google web trillion-word corpus), chosen by ``benchmarks/captions.py`` on the 184
real captions (757 distinct words; 34 labelled glued words, 649 correct ones). Raw, with
no protection: wordsegment split 34/34 glued words right and 7 correct words (``ashy``,
``bitcoin``, ``updo`` ...); wordninja 33/34 and 16 (``sand`` -> "s and", ``hoodie``,
``ombre``, ``seafoam`` ...); symspellpy 33/34 and 21 (``colored`` -> "colo red",
``mustache`` -> "must ache" ...). With the rules below wordsegment keeps 32/34 (not
``pinkpurple``, written 3 times so protected, nor ``kideyes``, as "kid" is no set word)
and splits one correct word, ``blockchain`` (newer than its 2006 corpus: put it in the
user word list). Names split: none (each library alone: 2 or 3).

A word is split only when all of these hold, so correct words and names survive:
it is not in wordsegment's dictionary, not frequent in the set (``FREQUENT``), not in
the user's word list, not capitalised (the artist capitalises names: "Coinbase",
"San Francisco Giant"); every part has two or more letters and is a set word, a user
word, or a common dictionary word of four or more letters; and the word is not a near-miss spelling of a set word
("colared" is a typo of "collared", not "cola red"). Typos are reported, never guessed.
"""

from __future__ import annotations

import difflib
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any, Iterable, Literal

from .dataset import DatasetReport, check_dataset, split_phrases
from .errors import UserError

FREQUENT = 3  # a word the artist used this often is their vocabulary: never split, never "rare"
RARE = 2  # pixel24's default vocab_min_count: words seen fewer times are dropped by it
PART_MIN_COUNT = 1_000_000  # a part of a split that is not a set word must be this common on the web
MIN_FREE_PART = 4  # ... and this long
TYPO_CUTOFF = 0.85  # difflib ratio above which a word is taken as a misspelling of a set word
TRIGGER = "pixel art, 24x24, portrait of bespoke punk"  # the captions' prefix; kept first by normalise
_WORD = re.compile(r"[A-Za-z]+")
CONNECTORS = frozenset({"wearing", "with", "and", "a", "an", "the", "of", "to", "in", "on", "or", "is"})
_BARE = frozenset({"hair", "eyes", "skin", "clothing"})  # a trait named without saying anything about it
_GLUED_PUNCT = [(re.compile(r"\)(?=[A-Za-z0-9])"), ") "), (re.compile(r"(?<=[A-Za-z0-9])\("), " (")]
# Trait categories, by the first keyword in a phrase ("brown hair ... brown eyes" is hair).
_CATEGORY_WORDS = {
    "background": "background",
    "eyes": "eyes", "eye": "eyes",
    "skin": "skin", "skinned": "skin",
    "smile": "expression", "expression": "expression", "frown": "expression", "grin": "expression",
    **{w: "hair" for w in ("hair", "bald", "mohawk", "dreads", "dreadlocks", "bun", "ponytail", "wig", "haircut", "updo", "afro", "braids", "bangs", "stubble", "beard", "mustache")},
    **{w: "accessories" for w in ("wearing", "glasses", "sunglasses", "goggle", "goggles", "cap", "hat", "crown", "earring", "earrings", "necklace", "chain", "beanie", "beret", "tiara", "bow", "headband", "bandana", "lanyard", "veil", "cape")},
}
CATEGORIES = ("background", "hair", "eyes", "skin", "accessories", "expression")

Kind = Literal["missing", "glued", "unknown", "rare", "repeated", "dangling", "empty", "contradiction"]
KINDS: tuple[Kind, ...] = ("missing", "glued", "unknown", "rare", "repeated", "dangling", "empty", "contradiction")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one caption file."""

    file: str
    kind: Kind
    text: str
    detail: str

    def line(self) -> str:
        return f"{self.file}: {self.kind}: {self.text!r}: {self.detail}"


# ------------------------------------------------------------------ segmentation


@cache
def dictionary() -> dict[str, float]:
    """wordsegment's unigram counts (333k English words), loaded once per process (~1 s)."""
    import wordsegment

    wordsegment.load()
    return wordsegment.UNIGRAMS


@cache
def _segment(word: str) -> list[str]:
    import wordsegment

    dictionary()
    return wordsegment.segment(word)


def _known_part(part: str, protected: frozenset[str], known: frozenset[str]) -> bool:
    # Short common "words" (pal, bra, com, un, lg) are how segmenters explain typos away:
    # a part shorter than MIN_FREE_PART must be a word the artist or the user uses.
    if len(part) < 2:
        return False  # "blueclong" is "blue long" mistyped, not "blue c long"
    if part in protected or part in known:
        return True
    return len(part) >= MIN_FREE_PART and dictionary().get(part, 0) >= PART_MIN_COUNT


def split_glued(word: str, protected: frozenset[str] = frozenset(), known: frozenset[str] = frozenset()) -> list[str] | None:
    """The parts of a glued word ("greybackground" -> ["grey", "background"]), or None to keep it whole.

    ``protected`` holds lower-case words never split (the set's frequent words, the user's list);
    ``known`` every word of the set. Both count as parts and as the reference for the typo check.
    """
    low = word.lower()
    if len(low) < 4 or word[0].isupper() or low in protected or low in dictionary():
        return None
    parts = _segment(low)
    if len(parts) < 2 or not all(_known_part(p, protected, known) for p in parts):
        return None
    near = near_miss(low, known | protected)
    if near and near not in parts:
        return None  # a misspelling of a word the artist uses, not two words
    return parts


def near_miss(word: str, candidates: Iterable[str]) -> str | None:
    """The real word (dictionary or given) that ``word`` looks like a misspelling of: same length ±2, similar letters."""
    pool = [c for c in candidates if c != word and abs(len(c) - len(word)) <= 2 and len(c) > 3 and c in dictionary()]
    near = difflib.get_close_matches(word, pool, n=1, cutoff=TYPO_CUTOFF)
    return near[0] if near else None


def _split_words(phrase: str, protected: frozenset[str], known: frozenset[str]) -> str:
    return _WORD.sub(lambda m: " ".join(split_glued(m.group(), protected, known) or [m.group()]), phrase)


# ------------------------------------------------------------------ normalisation


def _space_brackets(text: str) -> str:
    for pattern, spaced in _GLUED_PUNCT:
        text = pattern.sub(spaced, text)
    return text


def _clean_phrase(phrase: str, protected: frozenset[str], known: frozenset[str]) -> str:
    """Glued words split, whitespace collapsed, connector words with nothing after them dropped."""
    words = _split_words(_space_brackets(phrase), protected, known).split()
    while words and words[-1].lower() in CONNECTORS:
        words.pop()
    return " ".join(words)


def _trigger_first(phrases: list[str], trigger: str) -> list[str]:
    """Phrases that start like the trigger's phrases move to the front, in the trigger's order."""
    heads = [t.lower() for t in split_phrases(trigger)]
    rank = {i: next((k for k, h in enumerate(heads) if p.lower().startswith(h)), len(heads)) for i, p in enumerate(phrases)}
    return [phrases[i] for i in sorted(range(len(phrases)), key=lambda i: rank[i])]


def normalise_caption(text: str, protected_words: Iterable[str] = (), trigger: str = TRIGGER, known: Iterable[str] = ()) -> str:
    """The caption with glued words split, empty/dangling phrases and repeats removed, the trigger first.

    ``protected_words`` (any case) are never split: pass the set's frequent words
    (``protected_words()``) plus the user's list; ``known`` (every word of the set) may
    appear as a part of a split. Case is kept so names survive.
    """
    return _normalise(text, frozenset(w.lower() for w in protected_words), frozenset(w.lower() for w in known), trigger)


def _normalise(text: str, protected: frozenset[str], known: frozenset[str], trigger: str = TRIGGER) -> str:
    seen: set[str] = set()
    phrases = []
    for raw in text.split(","):
        phrase = _clean_phrase(raw, protected, known)
        if phrase and phrase.lower() not in seen:
            seen.add(phrase.lower())
            phrases.append(phrase)
    return ", ".join(_trigger_first(phrases, trigger))


def word_counts(captions: Iterable[str | None]) -> Counter[str]:
    """How often each lower-case word occurs in the whole set."""
    return Counter(w.lower() for c in captions if c for w in _WORD.findall(c))


def protected_words(counts: Counter[str], user_words: Iterable[str] = ()) -> frozenset[str]:
    """Words never split: those the artist used at least ``FREQUENT`` times, plus the user's list."""
    return frozenset({w for w, n in counts.items() if n >= FREQUENT} | {w.lower() for w in user_words})


def read_word_list(path: Path) -> list[str]:
    """A user word list: one word per line, ``#`` starts a comment."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: word list not found; give a text file with one protected word per line") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: word list is not UTF-8 text; re-save it as UTF-8") from None
    return [w for line in text.splitlines() for w in line.split("#", 1)[0].split()]


def caption_diff(name: str, old: str, new: str) -> str:
    """A unified diff of one caption, one phrase per line (a caption is one long line)."""
    lines = difflib.unified_diff([p + "\n" for p in split_phrases(old)], [p + "\n" for p in split_phrases(new)], f"a/{name}", f"b/{name}", n=1)
    return "".join(lines)


# ------------------------------------------------------------------ lint


@dataclass
class CaptionReport:
    """Problems, trait vocabulary and fixed text for every caption of a dataset folder."""

    folder: Path
    caption_extension: str
    problems: list[Problem]
    traits: dict[str, Counter[str]]
    captions: dict[str, str | None]
    fixed: dict[str, str] = field(default_factory=dict)

    @property
    def changed(self) -> list[str]:
        return [n for n, c in self.captions.items() if c is not None and self.fixed[n] != c]

    def counts(self) -> dict[str, int]:
        found = Counter(p.kind for p in self.problems)
        return {k: found[k] for k in KINDS}

    def summary_line(self) -> str:
        files = len({p.file for p in self.problems})
        kinds = ", ".join(f"{k} {n}" for k, n in self.counts().items() if n)
        return f"{len(self.problems)} caption problem(s) in {files} of {len(self.captions)} file(s)" + (f" ({kinds})" if kinds else "")

    def images_with(self, category: str) -> int:
        """How many images carry at least one trait of ``category``."""
        return sum(any(phrase_category(p) == category for p in {q.lower() for q in split_phrases(c)} - _BARE) for c in self.fixed.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "captions": len(self.captions),
            "problems": [{"file": p.file, "kind": p.kind, "text": p.text, "detail": p.detail, "line": p.line()} for p in self.problems],
            "counts": self.counts(),
            "summary": self.summary_line(),
            "traits": {cat: dict(self.traits[cat].most_common()) for cat in CATEGORIES},
            "images_with_trait": {cat: self.images_with(cat) for cat in CATEGORIES},
            "changed": self.changed,
        }


def phrase_category(phrase: str) -> str | None:
    """The trait category a caption phrase describes (one of CATEGORIES), or None (e.g. clothing, the trigger)."""
    words = phrase.lower().split()
    if words[:1] == ["wearing"] and len(words) > 1:
        words = words[1:] + ["wearing"]  # "wearing brown cowboy hat": the hat says what it is
    return next((_CATEGORY_WORDS[w] for w in words if w in _CATEGORY_WORDS), None)


def trait_vocabulary(fixed: dict[str, str]) -> dict[str, Counter[str]]:
    """For each category, how many images carry each (normalised, lower-case) trait phrase."""
    traits: dict[str, Counter[str]] = {cat: Counter() for cat in CATEGORIES}
    for caption in fixed.values():
        for phrase in {p.lower() for p in split_phrases(caption)} - _BARE:
            cat = phrase_category(phrase)
            if cat:
                traits[cat][phrase] += 1
    return traits


def _contradictions(caption: str) -> list[tuple[str, str]]:
    phrases = [p.lower() for p in split_phrases(caption)]
    words = set(_WORD.findall(caption.lower()))
    found = []
    if {"lad", "lady"} <= words:
        found.append(("lad / lady", "says both lad and lady; keep the one that is true"))
    for cat in ("background", "expression"):
        distinct = sorted({p for p in phrases if phrase_category(p) == cat})
        if len(distinct) > 1:
            found.append((" / ".join(distinct), f"{len(distinct)} different {cat} phrases; keep one"))
    return found


def _word_problems(name: str, phrase: str, counts: Counter[str], protected: frozenset[str], known: frozenset[str]) -> list[Problem]:
    """Glued words (and brackets) and words too rare for pixel24's vocabulary."""
    out = [Problem(name, "glued", chunk, f"no space around a bracket; --fix writes {_space_brackets(chunk)!r}") for chunk in phrase.split() if _space_brackets(chunk) != chunk]
    for word in _WORD.findall(phrase):
        low = word.lower()
        parts = split_glued(word, protected, known)
        if parts:
            out.append(Problem(name, "glued", word, f"glued words; --fix writes {' '.join(parts)!r}"))
        elif counts[low] < RARE and low not in protected:
            english = low in dictionary()
            near = near_miss(low, protected)
            hint = f"; did you mean {near!r} ({counts[near]}×)?" if near else ""
            what = "a rare word" if english else "not an English word"
            out.append(Problem(name, "rare" if english else "unknown", word, f"{what}, {counts[low]}× in the set (pixel24 drops words seen fewer than {RARE} times){hint}"))
    return out


def _phrase_problem(name: str, raw: str) -> Problem | None:
    """An empty phrase, one that ends in a connector ("wearing"), or a bare trait name ("hair")."""
    phrase = raw.strip()
    words = phrase.lower().split()
    if not words:
        return Problem(name, "empty", raw, "an empty phrase between commas; --fix removes it")
    if words[-1] in CONNECTORS:
        return Problem(name, "dangling", phrase, f"ends with {words[-1]!r} and nothing after it; say what, or --fix drops the word")
    if phrase.lower() in _BARE:
        return Problem(name, "empty", phrase, f"names the {phrase.lower()} without describing it")
    return None


def _caption_problems(name: str, caption: str, fixed: str, counts: Counter[str], protected: frozenset[str], known: frozenset[str]) -> list[Problem]:
    out: list[Problem] = []
    for raw in caption.split(","):
        out += _word_problems(name, raw, counts, protected, known)
        out += [p for p in [_phrase_problem(name, raw)] if p]
    repeats = Counter(p.lower() for p in split_phrases(caption))
    out += [Problem(name, "repeated", phrase, f"the same phrase {n} times; --fix keeps one") for phrase, n in repeats.items() if n > 1]
    out += [Problem(name, "contradiction", text, detail) for text, detail in _contradictions(fixed)]
    return out


def lint_captions(captions: dict[str, str | None], caption_extension: str = ".txt", user_words: Iterable[str] = (), folder: Path = Path(".")) -> CaptionReport:
    """Lint ``{image name: caption or None}`` (names in set order) and compute the fixed text of each."""
    counts = word_counts(captions.values())
    protected, known = protected_words(counts, user_words), frozenset(counts)
    problems: list[Problem] = []
    fixed: dict[str, str] = {}
    for name, caption in captions.items():
        if caption is None:
            problems.append(Problem(f"{name}.png", "missing", f"{name}{caption_extension}", "no caption (no file, or one without a single word); training uses the preset's default_caption, so write one"))
            continue
        fixed[name] = _normalise(caption, protected, known)
        problems += _caption_problems(f"{name}{caption_extension}", caption, fixed[name], counts, protected, known)
    return CaptionReport(folder, caption_extension, problems, trait_vocabulary(fixed), dict(captions), fixed)


def lint(report: DatasetReport, user_words: Iterable[str] = ()) -> CaptionReport:
    """Lint the captions of a checked dataset folder."""
    return lint_captions({i.name: i.caption for i in report.images}, report.caption_extension, user_words, report.folder)


def lint_folder(folder: Path, caption_extension: str = ".txt", user_words: Iterable[str] = ()) -> CaptionReport:
    """Check ``folder`` (refusing bad files as ``dataset check`` does) and lint its captions."""
    return lint(check_dataset(folder, caption_extension), user_words)


# ------------------------------------------------------------------ fixed copy and training hook


def fixed_diff(result: CaptionReport) -> str:
    """Every change ``--fix`` makes, as one unified diff."""
    return "".join(caption_diff(f"{n}{result.caption_extension}", result.captions[n] or "", result.fixed[n]) for n in result.changed)


def write_fixed(report: DatasetReport, result: CaptionReport, out: Path) -> Path:
    """Write a normalised copy of the dataset into the new folder ``out`` (atomically); returns the diff's path.

    Images are copied byte for byte, captions rewritten, ``captions.diff`` lists each change.
    The originals are only read.
    """
    from .atomic import staged_folder

    src = report.folder.resolve()
    if out.resolve() == src or src in out.resolve().parents:
        raise UserError(f"--out {out}: must be outside the dataset folder {report.folder}; the originals are never modified")

    with staged_folder(out.resolve(), refusal="choose another --out or remove it") as tmp:
        for info in report.images:
            shutil.copy2(info.path, tmp / info.path.name)
            if info.caption is not None:
                (tmp / f"{info.name}{report.caption_extension}").write_text(result.fixed[info.name] + "\n", encoding="utf-8")
        (tmp / "captions.diff").write_text(fixed_diff(result), encoding="utf-8")
    return out / "captions.diff"


def for_training(report: DatasetReport, mode: str, folder_hint: str | None = None) -> tuple[DatasetReport, list[str], dict[str, Any]]:
    """The report training should use (captions normalised when ``mode`` is "normalised"), the warning, and what to record in run.json."""
    result = lint(report)
    where = folder_hint or str(report.folder)
    record: dict[str, Any] = {"mode": mode, "problems": result.counts()}
    if mode == "normalised":
        record["changed"] = len(result.changed)
        images = [replace(i, caption=result.fixed[i.name], repeated_phrases=[]) if i.caption is not None else i for i in report.images]
        note = f"captions normalised for training (dataset.captions = normalised): {len(result.changed)} of {len(result.fixed)} changed; `bespoke-kohya dataset captions {where} --fix --out DIR` writes the same copy with a diff"
        return replace(report, images=images), [note], record
    if not result.problems:
        return report, [], record
    note = f"{result.summary_line()}; run `bespoke-kohya dataset captions {where}` to see them, or train on fixed captions with --set dataset.captions=normalised"
    return report, [note], record
