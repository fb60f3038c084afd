"""Which word-segmentation library splits the artist's glued words, and what normalising buys pixel24.

    .venv/bin/python benchmarks/captions.py [--dataset DIR]      # ~10 s

Part 1 runs wordsegment, wordninja and symspellpy (those installed; the others are
skipped with a note: `pip install wordninja symspellpy`) on every distinct word of the
real captions, raw, with no protection, and counts:
  - glued: labelled glued words (below) split exactly right;
  - correct words split: words of the set that are not labelled glued or misspelt
    but come back in pieces ("sand" -> "s and");
  - names split: the artist's names and the issue's "San Francisco Giant".
Then the same for the project's rules around wordsegment (bespoke_kohya.captions).

Part 2 builds pixel24's vocabulary (build_vocab, vocab_min_count 2) from the raw and the
normalised captions and counts the prompt words each leaves unknown (encode_caption),
for the preset's prompt suite and for the set's own phrases typed back as prompts.
No model is trained: unknown words are decided by the vocabulary alone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_BESPOKE = REPO.parent / "shared" / "datasets" / "bespoke-punks-24"

# Ground truth, labelled by reading the 184 captions (shared with tests/test_captions.py).
LABELS = json.loads((REPO / "tests" / "data" / "caption_labels.json").read_text(encoding="utf-8"))
GLUED: dict[str, str] = LABELS["glued"] | LABELS["glued_from_the_issue_not_in_the_set"]
TYPOS = set(LABELS["misspelt"])  # no split is right for a misspelling: left out of both counts
AMBIGUOUS = set(LABELS["ambiguous"])  # a dictionary word and a gluing at once: not scored
NAMES: list[str] = LABELS["names"]


def segmenters() -> dict[str, Callable[[str], list[str]] | str]:
    """name -> word -> parts, or the reason it is unavailable."""
    out: dict[str, Callable[[str], list[str]] | str] = {}
    try:
        import wordsegment

        wordsegment.load()
        out["wordsegment"] = wordsegment.segment
    except ImportError:
        out["wordsegment"] = "not installed"
    try:
        import wordninja

        out["wordninja"] = lambda w: [p.lower() for p in wordninja.split(w)]
    except ImportError:
        out["wordninja"] = "not installed (pip install wordninja)"
    try:
        import importlib.resources

        from symspellpy import SymSpell

        sym = SymSpell(max_dictionary_edit_distance=0, prefix_length=7)
        sym.load_dictionary(str(importlib.resources.files("symspellpy") / "frequency_dictionary_en_82_765.txt"), 0, 1)
        out["symspellpy"] = lambda w: sym.word_segmentation(w.lower(), max_edit_distance=0).corrected_string.split()
    except ImportError:
        out["symspellpy"] = "not installed (pip install symspellpy)"
    return out


def score(split: Callable[[str], list[str]], words: list[str]) -> dict:
    correct = [w for w in words if w not in GLUED and w not in TYPOS and w not in AMBIGUOUS]
    t = time.perf_counter()
    glued_ok = [w for w in GLUED if " ".join(split(w)) == GLUED[w]]
    broken = [f"{w}->{' '.join(split(w))}" for w in correct if len(split(w)) > 1]
    names = [f"{n}->{' '.join(split(n))}" for n in NAMES if len(split(n)) > 1]
    ms = (time.perf_counter() - t) * 1000 / (len(GLUED) + 2 * len(correct) + len(NAMES))
    return {"glued": len(glued_ok), "glued_of": len(GLUED), "wrong": [w for w in GLUED if w not in glued_ok],
            "broken": broken, "of": len(correct), "names": names, "ms": ms}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=Path(os.environ.get("BESPOKE_DATASET", DEFAULT_BESPOKE)))
    args = parser.parse_args()
    if not args.dataset.is_dir():
        print(f"error: {args.dataset}: dataset folder not found; pass --dataset DIR (the real Bespoke Punks)")
        return 2
    from bespoke_kohya import captions as cap
    from bespoke_kohya.dataset import check_dataset, dedupe_phrases
    from bespoke_kohya.engines.pixel24.api import build_vocab, encode_caption
    from bespoke_kohya.presets import SampleSettings

    report = check_dataset(args.dataset)
    texts = {i.name: i.caption for i in report.images if i.caption}
    counts = cap.word_counts(texts.values())
    words = sorted(counts)
    protected, known = cap.protected_words(counts), frozenset(counts)
    print(f"{len(texts)} captions, {len(words)} distinct words; labelled: {len(GLUED)} glued, {len(TYPOS)} misspelt, {len(AMBIGUOUS)} ambiguous\n")

    rows = {name: (score(fn, words) if callable(fn) else fn) for name, fn in segmenters().items()}
    # The project's rules see words as written (a capital marks a name), so give them the set's spelling.
    cased = {w.lower(): w for t in texts.values() for w in re.findall(r"[A-Za-z]+", t)} | {n.lower(): n for n in NAMES}
    rows["wordsegment + project rules"] = score(lambda w: cap.split_glued(cased.get(w.lower(), w), protected, known) or [w.lower()], words)
    print(f"{'segmenter':30} {'glued split right':>18} {'correct words split':>20} {'names split':>12} {'ms/word':>8}")
    for name, r in rows.items():
        if isinstance(r, str):
            print(f"{name:30} skipped: {r}")
            continue
        print(f"{name:30} {r['glued']:>10}/{r['glued_of']:<7} {len(r['broken']):>12}/{r['of']:<7} {len(r['names']):>12} {r['ms']:>8.3f}")
    for name, r in rows.items():
        if not isinstance(r, str):
            print(f"\n{name}:\n  glued words not split right: {', '.join(r['wrong']) or 'none'}\n"
                  f"  correct words split: {', '.join(r['broken']) or 'none'}\n  names split: {', '.join(r['names']) or 'none'}")

    fixed = {n: cap.normalise_caption(t, protected, known=counts) for n, t in texts.items()}
    suites = {
        "preset prompt suite": SampleSettings().full_prompts(),
        "the set's phrases as prompts": sorted({p for t in fixed.values() for p in t.split(", ")}),
    }
    print("\npixel24 vocabulary (vocab_min_count 2): prompt words it does not know")
    print(f"{'prompts':32} {'raw captions':>14} {'normalised captions':>20}")
    for label, prompts in suites.items():
        line, unknowns = f"{label:32}", []
        # raw = what `prepare` writes with dataset.captions = "raw" (repeated phrases already dropped)
        for source in ([dedupe_phrases(t) for t in texts.values()], list(fixed.values())):
            vocab = build_vocab(source, 2)
            index = {w: i for i, w in enumerate(vocab)}
            unknowns.append({w for p in prompts for w in encode_caption(index, p)[1]})
            line += f" {len(unknowns[-1]):>8} ({len(vocab)} words)"
        print(line)
        if unknowns[0] != unknowns[1]:
            print(f"  known only with normalised captions: {', '.join(sorted(unknowns[0] - unknowns[1])) or 'none'}")
            print(f"  known only with raw captions: {', '.join(sorted(unknowns[1] - unknowns[0])) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
