"""`generate`: a collection of new punks from one epoch of a run, each the best of several candidates, with its metadata.

In order: the epoch (the report's recommendation unless ``--epoch``), the trait vocabulary of
the run's own captions, every token's traits (unique, deterministic, `--traits` rules), a
critic trained on the training images against pilot draws of the engine's sampler, then per
token K candidates drawn with seeds of its own, post-processed to 24×24 exactly as `sample`
does, judged (select.py) and the most realistic of those passing kept; tokens whose candidates are all rejected get
K more, up to ``rounds`` times.

Token n depends only on the seed, n, the run, the epoch and the settings: its traits come from
its own random stream and the earlier tokens' DNAs, its candidates' seeds from (seed, n, k), and
the critic from fixed pilot draws, so `--count 8` is the first 8 tokens of `--count 100`.

The folder (layout.py) is written token by token, each token's files atomically and its
metadata last, so Ctrl-C or a full disk leaves every finished token whole; `--resume`
continues after the last one. collection.json and index.html are written when all are done.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import UserError
from ..metrics import Reference, even_sample
from ..runfolder import file_sha256
from ..runfolder.data import art_of, training_images
from ..runfolder.lock import GENERATE, run_lock
from ..runfolder.records import RunHandle
from ..settings import MAX_SEED
from . import layout
from .draw import Drawer, candidate_seed, choose_epoch
from .page import render_page
from .select import REASONS, Judge, Verdict, best, best_try
from .traits import TokenTraits, TraitRules, Vocabulary, attributes, draw_traits, plan_traits, read_rules, token_traits, vocabulary

FORMAT = 1
REDRAWS = 3  # draws of traits a token gets: when none of a draw's candidates may be kept, the model may not draw those traits in style
PILOT = 48  # pilot draws the critic learns "what the model draws" from (a fixed set: the collection depends on it)
MAX_COUNT = 10_000
MAX_CANDIDATES = 16
MAX_REFERENCE = 500  # style ranges from an evenly spaced 500 of a larger training set (leave-one-out costs n²)
UPSCALE = 20  # 24 × 20 = 480 px: marketplaces show small images blurred


@dataclass(frozen=True)
class GenerateOptions:
    """`bespoke-kohya generate` as typed values."""

    run: Path
    out: Path
    count: int
    epoch: int | None = None
    seed: int = 0
    candidates: int = 4
    rounds: int = 3
    traits: Path | None = None
    name: str = "New Bespoke Punks"
    description: str = "New punks drawn in the style of the Bespoke Punks."
    base_uri: str | None = None
    resume: bool = False
    device: str | None = None
    num_gpus: int = 1  # processes drawing candidates at once (one per GPU; accelerate)
    control: Path | None = None  # 24×24 images a sampler that draws from a picture follows (a ControlNet run)
    progress: bool = True


@dataclass
class Token:
    """One finished token: what it was drawn with and the candidate kept."""

    n: int
    traits: TokenTraits
    prompt: str
    seed: int
    art: np.ndarray
    verdict: Verdict
    drawn: int  # candidates drawn for it
    dna: tuple[tuple[str, str], ...]  # the traits it was drawn with (before its image renamed a background); no other token has them


@dataclass
class Result:
    """What `generate` made (for the CLI's summary)."""

    out: Path
    tokens: int
    candidates: int
    rejections: dict[str, int]
    seconds: float
    page: Path | None = None
    resumed_from: int = 0
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ inputs


def _check_options(o: GenerateOptions) -> None:
    if not 1 <= o.count <= MAX_COUNT:
        raise UserError(f"--count {o.count}: give a whole number from 1 to {MAX_COUNT}")
    if not 1 <= o.candidates <= MAX_CANDIDATES:
        raise UserError(f"--candidates {o.candidates}: give a whole number from 1 to {MAX_CANDIDATES} (candidates drawn per token per round)")
    if not 1 <= o.num_gpus <= 64:
        raise UserError(f"--num-gpus {o.num_gpus}: give a whole number from 1 to 64")
    if not 1 <= o.rounds <= 10:
        raise UserError(f"--rounds {o.rounds}: give a whole number from 1 to 10")
    if not 0 <= o.seed <= MAX_SEED:
        raise UserError(f"--seed {o.seed}: give a whole number from 0 to {MAX_SEED}")
    if o.base_uri is not None and (not o.base_uri.strip() or any(c.isspace() for c in o.base_uri)):
        raise UserError(f"--base-uri {o.base_uri!r}: give a URI without spaces, e.g. ipfs://<CID> or https://example.com/punks")


def training_set(run: RunHandle) -> tuple[list[str], np.ndarray, list[str]]:
    """(names, 24×24 arts, captions) of the run's prepared training images (data/), the originals of everything here."""
    paths = training_images(run.dir, run.record.resolved)
    if not paths:
        raise UserError(f"{run.training_folder}: the run's prepared training images are missing; restore data/ from a copy of the run")
    captions = []
    for path in paths:
        caption = path.with_suffix(run.record.preset_model(run.dir).dataset.caption_extension)
        try:
            captions.append(caption.read_text(encoding="utf-8").strip() if caption.is_file() else "")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{caption}: cannot read this caption as UTF-8 text ({exc}); restore data/ from a copy of the run") from None
    return [p.stem for p in paths], np.stack([art_of(p) for p in paths]), captions


def run_vocabulary(run_dir: Path) -> Vocabulary:
    """The trait vocabulary of a run's training captions (what `generate --list-traits` prints)."""
    run = RunHandle.open(Path(run_dir))
    _, _, captions = training_set(run)
    return vocabulary([c for c in captions if c], run.record.preset_model(run.dir).sample.trigger)


# ------------------------------------------------------------------ the collection


def settings_record(o: GenerateOptions, run: RunHandle, epoch: int, checkpoint_sha: str, rules: TraitRules) -> dict[str, Any]:
    """Everything a token depends on (a --resume with other settings is refused); the run's resolved preset holds how it samples."""
    return {"format": FORMAT, "run": run.record.id, "run_created": run.record.created, "epoch": epoch, "checkpoint_sha256": checkpoint_sha,
            "seed": o.seed, "candidates": o.candidates, "rounds": o.rounds, "pilot": PILOT, "traits": rules.model_dump(mode="json"),
            "preset": run.record.resolved, "name": o.name, "description": o.description, "base_uri": o.base_uri,
            **({"control": str(o.control)} if o.control is not None else {})}


def pilot_pairs(vocab: Vocabulary, rules: TraitRules, o: GenerateOptions, full_prompt: Callable[[str], str]) -> list[tuple[str, int]]:
    """The pilot draws' (prompt, seed): traits drawn as tokens' are (rules included), from a stream of their own (n = 0)."""
    rng = np.random.default_rng([o.seed, 0])
    pairs = []
    for i in range(PILOT):
        traits = None
        while traits is None:
            traits = draw_traits(vocab, rules, rng)
        pairs.append((full_prompt(traits.body()), candidate_seed(o.seed, 0, i)))
    return pairs


def _critic(out: Path, drawer: Drawer, vocab: Vocabulary, rules: TraitRules, o: GenerateOptions, real: np.ndarray, full_prompt: Callable[[str], str],
            progress: Callable[[str], None]) -> tuple[Any, np.ndarray]:
    """The critic and the pilot draws it learned from; made once per collection and kept in its folder for --resume."""
    from ..distinguish import train_critic

    pilot_path = out / layout.PILOT
    if os.path.lexists(pilot_path):  # a link or FIFO in its place is refused by read_pilot, not replaced
        pilot = layout.read_pilot(pilot_path)
    else:
        progress(f"pilot: {PILOT} draws of the model, for the critic to learn what it draws")
        pilot = np.stack(drawer.draw(pilot_pairs(vocab, rules, o, full_prompt)))
        layout.write_pilot(pilot_path, pilot)
    return train_critic(real, pilot, seed=o.seed), pilot


def generate(o: GenerateOptions, console: Any = None) -> Result:
    """Make (or, with --resume, finish) the collection ``o.out`` from run ``o.run``."""
    from ..console import console as default_console

    console = console or default_console
    started = time.perf_counter()
    _check_options(o)
    run = RunHandle.open(Path(o.run))
    epoch, checkpoint = choose_epoch(run, o.epoch)
    names, arts, captions = training_set(run)
    preset = run.record.preset_model(run.dir)
    vocab = vocabulary([c for c in captions if c], preset.sample.trigger)
    rules = read_rules(o.traits, vocab) if o.traits else TraitRules()
    drawer = Drawer(run, checkpoint, o.device, o.control)
    out = layout.open_folder(Path(o.out), o.resume)
    with run_lock(out, GENERATE):
        settings = settings_record(o, run, epoch, file_sha256(checkpoint), rules)
        layout.check_settings(out, settings, o.resume)
        done = layout.finished_tokens(out, o.count)
        taken = layout.finished_dna(out, done)
        say = (lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True)) if o.progress else (lambda line: None)
        if o.num_gpus > 1:
            from .parallel import draw_in_parallel

            plan = plan_traits(vocab, rules, o.seed, taken, done + 1, o.count)  # a token given new traits later draws its own
            first = [(preset.sample.full_prompt(plan[n].body()), candidate_seed(o.seed, n, k)) for n in plan for k in range(o.candidates)]
            wanted = ([] if (out / layout.PILOT).is_file() else pilot_pairs(vocab, rules, o, preset.sample.full_prompt)) + first
            say(f"drawing {len(wanted)} candidates with {o.num_gpus} processes")
            drawer.ready = draw_in_parallel(run.dir, epoch, o.device, wanted, out, o.num_gpus, o.control)
        pick = np.array(even_sample(len(names), MAX_REFERENCE), dtype=int)
        critic, pilot = _critic(out, drawer, vocab, rules, o, arts[pick], preset.sample.full_prompt, say)
        judge = Judge.make(names, arts, Reference.from_images([names[i] for i in pick], arts[pick]), critic, pilot)
        for n in range(1, done + 1):  # the finished tokens stand against the rest exactly as when they were made
            judge.accept(n, layout.read_token_art(out, n))
        rejections = layout.rejection_counts(out, done)
        _draw_tokens(out, vocab, rules, preset.sample.full_prompt, taken, done, drawer, judge, o, rejections, run, epoch, settings)
        result = Result(out, o.count, drawer.drawn, rejections, time.perf_counter() - started, resumed_from=done)
        doc = layout.write_collection(out, settings, o.count, vocab.table(), rejections)
        result.page = layout.write_page(out, render_page(out, doc, names, arts))
    return result


def _draw_tokens(out: Path, vocab: Vocabulary, rules: TraitRules, full_prompt: Callable[[str], str], taken: set[tuple[tuple[str, str], ...]],
                 done: int, drawer: Drawer, judge: Judge, o: GenerateOptions, rejections: dict[str, int], run: RunHandle, epoch: int,
                 settings: dict[str, Any]) -> None:
    """Tokens done+1..count, in order, written as each is chosen; the first candidates of the next few tokens are drawn
    together, with the traits planned for them (drawn again for a token whose plan changed when an earlier one got new traits)."""
    from ..progress import counter

    batch = max(1, 16 // o.candidates)  # tokens whose first candidates share one draw call (pixel24 draws 16 at a time)
    drawn: dict[int, tuple[str, list[tuple[int, np.ndarray]]]] = {}  # token -> (its prompt, [(candidate k, art)])

    def status() -> str:
        left_out = ", ".join(f"{k} {v}" for k, v in sorted(rejections.items()))
        return f"{drawer.drawn} candidates drawn" + (f", left out: {left_out}" if left_out else "")

    with counter("tokens", o.count - done, o.progress, status=status) as tick:
        for n in range(done + 1, o.count + 1):
            ahead = plan_traits(vocab, rules, o.seed, taken, n, min(n + batch - 1, o.count))
            prompts = {m: full_prompt(traits.body()) for m, traits in ahead.items()}
            if drawn.get(n, ("",))[0] != prompts[n]:
                todo = [m for m in ahead if drawn.get(m, ("",))[0] != prompts[m]]
                arts = iter(drawer.draw([(prompts[m], candidate_seed(o.seed, m, k)) for m in todo for k in range(o.candidates)]))
                for m in todo:
                    drawn[m] = (prompts[m], [(k, next(arts)) for k in range(o.candidates)])
            token = _token(n, ahead[n], drawn.pop(n)[1], vocab, rules, full_prompt, taken, drawer, judge, o, rejections, out)
            taken.add(token.dna)
            judge.accept(n, token.art)
            layout.write_token(out, token, _metadata(token, o, run, epoch, settings))
            tick()


Judged = tuple[int, np.ndarray, Verdict, TokenTraits, str]  # candidate k, its art, its verdict, the traits and prompt it was drawn with


def _token(n: int, traits: TokenTraits, first: list[tuple[int, np.ndarray]], vocab: Vocabulary, rules: TraitRules, full_prompt: Callable[[str], str],
           taken: set[tuple[tuple[str, str], ...]], drawer: Drawer, judge: Judge, o: GenerateOptions, rejections: dict[str, int], out: Path) -> Token:
    """Token ``n``: its candidates judged round by round, and when none may be kept, the same with new traits (up to REDRAWS).

    The critic and the background colour are soft rules: when every candidate of a draw's rounds is left out and some
    only by those, the best of them is kept (a prompt the model draws poorly still gets its best try), and a
    background the image contradicts becomes the colour it shows in the token's attributes; a near-copy, a
    duplicate or an off-style image never is: the token then gets new traits (the model may not draw these in style).
    """
    judged: list[Judged] = []
    chosen = None
    for redraw in range(REDRAWS):
        if redraw:
            traits, _ = token_traits(vocab, rules, o.seed, n, taken | {t.dna for _, _, _, t, _ in judged}, redraw)
            first = []
        prompt = full_prompt(traits.body())
        offset = len(judged)
        judged += _rounds(n, prompt, traits, first, offset, drawer, judge, o)
        verdicts = [v for _, _, v, _, _ in judged[offset:]]
        chosen = best(verdicts)
        chosen = best_try(verdicts) if chosen is None else chosen
        if chosen is not None:
            chosen += offset
            break
    _record_candidates(out, n, judged, chosen, o, rejections)
    if chosen is None:
        why = ", ".join(f"{reason} {sum(v.reason == reason for _, _, v, _, _ in judged)}" for reason in REASONS
                        if any(v.reason == reason for _, _, v, _, _ in judged))
        raise UserError(f"token {n}: none of its {len(judged)} candidates passed, over {REDRAWS} draws of its traits ({why}); the finished tokens "
                        f"are kept. Try another epoch (--epoch), more candidates (--candidates, --rounds), or train longer; then run again with --resume")
    k, art, verdict, traits, prompt = judged[chosen]
    dna = traits.dna
    if "background" in {r for r, _ in verdict.reasons}:  # the traits are its attributes unless its image contradicts them
        traits = TokenTraits({**traits.values, "background": verdict.border}, traits.phrases)
    return Token(n, traits, prompt, candidate_seed(o.seed, n, k), art, verdict, len(judged), dna)


def _rounds(n: int, prompt: str, traits: TokenTraits, first: list[tuple[int, np.ndarray]], offset: int, drawer: Drawer, judge: Judge,
            o: GenerateOptions) -> list[Judged]:
    """Up to ``o.rounds`` rounds of K candidates of one prompt (``first``: the first round, drawn already), until one passes every rule."""
    judged: list[Judged] = []
    for round_ in range(o.rounds):
        if round_ or not first:
            ks = range(offset + round_ * o.candidates, offset + (round_ + 1) * o.candidates)
            first = list(zip(ks, drawer.draw([(prompt, candidate_seed(o.seed, n, k)) for k in ks])))
        verdicts = judge.judge([art for _, art in first], prompt)
        judged += [(k, art, v, traits, prompt) for (k, art), v in zip(first, verdicts)]
        if best(verdicts) is not None:
            break
    return judged


def _record_candidates(out: Path, n: int, judged: list[Judged], chosen: int | None, o: GenerateOptions, rejections: dict[str, int]) -> None:
    """candidates/<n>.json (and the left-out ones' images), and the rejections counted by reason."""
    records = []
    for i, (k, art, v, _traits, prompt) in enumerate(judged):
        kept = i == chosen
        records.append({"k": k, "seed": candidate_seed(o.seed, n, k), "prompt": prompt, "kept": kept, "reason": None if kept else v.reason,
                        "detail": v.detail, "broke": [r for r, _ in v.reasons], "critic": round(v.score, 4), "realism": round(v.realism, 4), "nearest": v.nearest,
                        "nearest_distance": round(v.nearest_distance, 4), "art": art})
        if not kept and v.reason:
            rejections[v.reason] = rejections.get(v.reason, 0) + 1
    layout.write_candidates(out, n, records)


def _metadata(token: Token, o: GenerateOptions, run: RunHandle, epoch: int, settings: dict[str, Any]) -> dict[str, Any]:
    """ERC-721 metadata with OpenSea's attributes, and what made the image (`generator`)."""
    image = layout.image_name(token.n, UPSCALE)
    return {
        "name": f"{o.name} #{token.n}",
        "description": o.description,
        "image": f"{o.base_uri.rstrip('/')}/{image}" if o.base_uri else f"{layout.IMAGES}/{image}",
        "attributes": attributes(token.traits),
        "generator": {"run": run.record.id, "epoch": epoch, "checkpoint_sha256": settings["checkpoint_sha256"], "prompt": token.prompt,
                      "seed": token.seed, "critic_score": round(token.verdict.score, 4), "realism_score": round(token.verdict.realism, 4),
                      "candidates_drawn": token.drawn,
                      "dna": [list(pair) for pair in token.dna],
                      "nearest_training_punk": token.verdict.nearest, "nearest_distance": round(token.verdict.nearest_distance, 4),
                      "image_24": f"{layout.IMAGES}/{layout.image_name(token.n)}"},
    }
