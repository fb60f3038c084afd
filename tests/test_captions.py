"""Caption lint and normalisation, on the artist's 184 real captions (by path; skipped without them)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bespoke_kohya import captions as cap
from bespoke_kohya.dataset import dedupe_phrases
from bespoke_kohya.engines.pixel24.api import build_vocab, encode_caption
from bespoke_kohya.settings import SampleSettings
from bespoke_kohya.runfolder.records import read_run

LABELS = json.loads((Path(__file__).parent / "data" / "caption_labels.json").read_text(encoding="utf-8"))
# Every glued word in the real set that --fix splits, and how; "pinkpurple" is the exception:
# the artist wrote it 3 times, so it is protected as their own word.
SPLITS = {k: v for k, v in LABELS["glued"].items() if k != "pinkpurple"}
# Exception: a correct word that is split. "blockchain" is newer than wordsegment's 2006 corpus;
# the user word list protects it (test_word_list_protects_a_word).
WRONGLY_SPLIT = {"blockchain": "block chain"}
# Words of the fixed captions that are neither in wordsegment's dictionary nor frequent in the set:
# the artist's misspellings and names, reported by the lint and deliberately not guessed at.
NOT_WORDS = set(
    "beae bloish blueclong cappwearing chind coinbase comulbia cpatterns cshirt deepl ebrown efaf emdium exschange fidora "
    "fullbbright fuul goetee greyswearing howevr lglight marroon mustach mutlicolored nhaircut pallips patterened purplblue "
    "purpleyes rbown reasperry reddblondish reddpink shrkeli sivlery slilk soimetime sutubble sweepo thinener translcuent "
    "unbuttoneded undeath undenarth undnearth uneath yeeswearing yellowsih colared bandada bralet".split()
)
WORD = re.compile(r"[A-Za-z]+")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bespoke_kohya", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def linted(punks_dir: Path) -> cap.CaptionReport:
    return cap.lint_folder(punks_dir)


@pytest.fixture
def punks_copy(punks_dir: Path, tmp_path: Path) -> Path:
    """A writable copy of the whole real set."""
    out = tmp_path / "punks copy"
    shutil.copytree(punks_dir, out)
    return out


def _tokens(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


# ------------------------------------------------------------------ the real captions


def test_glued_words_are_found_and_split_correctly(linted: cap.CaptionReport):
    found = {p.text.lower(): p.detail for p in linted.problems if p.kind == "glued" and WORD.fullmatch(p.text)}
    assert set(found) == set(SPLITS) | set(WRONGLY_SPLIT)
    for glued, words in SPLITS.items():
        assert f"--fix writes {words!r}" in found[glued]
    yuri = linted.fixed["lady_096_yuri"]
    assert "grey background" in yuri and "greybackground" not in yuri
    assert linted.captions["lady_096_yuri"] != yuri  # the report keeps the original text too


def test_no_correct_word_is_split(linted: cap.CaptionReport):
    counts = cap.word_counts(linted.captions.values())
    vanished: dict[str, str] = {}
    for name, fixed in linted.fixed.items():
        before, after = _tokens(linted.captions[name]), _tokens(fixed)
        for word in set(before) - set(after) - cap.CONNECTORS:  # "jacket on," loses its dangling "on"
            vanished[word] = " ".join(cap.split_glued(word, cap.protected_words(counts), frozenset(counts)) or [])
    # Only the glued words disappear (into their parts); every other word of every caption survives whole.
    assert vanished == SPLITS | WRONGLY_SPLIT
    frequent = cap.protected_words(counts)
    odd = {w for fixed in linted.fixed.values() for w in _tokens(fixed) if w not in cap.dictionary() and w not in frequent}
    assert odd == NOT_WORDS


def test_names_and_frequent_words_survive(linted: cap.CaptionReport, punks_dir: Path):
    counts = cap.word_counts(linted.captions.values())
    protected = cap.protected_words(counts)
    text = "portrait of bespoke punk lad, wearing San Francisco Giant baseball cap, Coinbase blue background, opaque pinkpurple style party glasses"
    assert cap.normalise_caption(text, protected, known=counts) == text
    assert "pinkpurple" in protected  # written 3 times: the artist's own word
    assert "Coinbase" in linted.fixed["lad_014_sugar"]


def test_the_issues_examples_are_split(linted: cap.CaptionReport):
    """"kideyes", "brownbackground" and "(forward)wearing" are not in this copy of the set; check them against it."""
    counts = cap.word_counts(linted.captions.values())
    protected = cap.protected_words(counts)
    out = cap.normalise_caption("lady, brownbackground, wearing cap (forward)wearing stubble, kideyes", protected, known=counts)
    assert out == "lady, brown background, wearing cap (forward) wearing stubble, kideyes"
    # "kid" is no word of the set and short words are how segmenters explain typos away ("pallips" -> "pal lips"):
    # it needs the user's word list.
    assert cap.normalise_caption("kideyes", protected | {"kid"}, known=counts) == "kid eyes"


def test_lint_reports_every_kind_on_the_real_set(linted: cap.CaptionReport):
    counts = linted.counts()
    assert counts["missing"] == 2 and {p.file for p in linted.problems if p.kind == "missing"} == {"lad_057_Hughx.png", "lady_063_PVR.png"}
    assert counts["repeated"] == 9  # the number `dataset check` reports
    assert any(p.kind == "dangling" and p.text == "wearing" and p.file == "lady_077_pink_grapefruit.txt" for p in linted.problems)
    rare = {p.text: p.detail for p in linted.problems if p.kind in ("rare", "unknown")}
    assert "1× in the set" in rare["sutubble"] and "did you mean 'stubble'" in rare["sutubble"]
    assert linted.traits["background"]["solid background"] == 41
    assert linted.traits["expression"] == {"slight smile": 97, "neutral expression": 78}
    assert linted.images_with("background") == 181  # lad_020 names its background inside a clothing phrase


def test_pixel24_knows_more_prompt_words_with_normalised_captions(linted: cap.CaptionReport):
    raw = [dedupe_phrases(c) for c in linted.captions.values() if c]
    fixed = list(linted.fixed.values())
    prompts = sorted({p for c in fixed for p in c.split(", ")})

    def unknown(captions: list[str]) -> set[str]:
        index = {w: i for i, w in enumerate(build_vocab(captions, 2))}
        return {w for p in prompts for w in encode_caption(index, p)[1]}

    assert unknown(fixed) < unknown(raw)
    assert unknown(raw) - unknown(fixed) == {"brownish", "duo", "pattern"}


# ------------------------------------------------------------------ rules on small inputs


def test_each_problem_kind_on_written_captions():
    result = cap.lint_captions({
        "a": "pixel art, lad, lady, red background, blue background, wearing",
        "b": "pixel art, hair, , slight smile, slight smile",
        "c": None,
    })
    kinds = {(p.file, p.kind) for p in result.problems}
    assert {("a.txt", "contradiction"), ("a.txt", "dangling"), ("b.txt", "empty"), ("b.txt", "repeated"), ("c.png", "missing")} <= kinds
    assert [p.text for p in result.problems if p.kind == "contradiction"] == ["lad / lady", "blue background / red background"]
    assert result.fixed["b"] == "pixel art, hair, slight smile"


def test_trigger_is_kept_first():
    assert cap.normalise_caption("lad, blue eyes, 24x24, portrait of bespoke punk lad, pixel art") == "pixel art, 24x24, portrait of bespoke punk lad, lad, blue eyes"


def test_prompt_suite_uses_normalised_words():
    s = SampleSettings(prompts=["lady, greybackground, blue eyes"])
    assert s.full_prompts() == [f"{s.trigger} lady, grey background, blue eyes, {s.suffix}"]
    default = SampleSettings()
    assert default.full_prompts() == [f"{default.trigger} {b}, {default.suffix}" for b in default.prompts]


# ------------------------------------------------------------------ the command


def test_json_matches_the_text_output(punks_dir: Path):
    text = cli("dataset", "captions", str(punks_dir))
    data = json.loads(cli("dataset", "captions", str(punks_dir), "--json").stdout)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[: len(data["problems"])] == [p["line"] for p in data["problems"]]
    assert lines[len(data["problems"])] == data["summary"]
    for cat, n in data["images_with_trait"].items():
        assert re.search(rf"│ {cat}\s+│ {n}\s+│ {len(data['traits'][cat])}\s+│", text.stdout)


def test_fix_writes_a_copy_and_a_diff_and_never_touches_the_originals(punks_copy: Path, tmp_path: Path):
    yuri = punks_copy / "lady_096_yuri.txt"
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in punks_copy.iterdir()}
    out = tmp_path / "fixed"
    r = cli("dataset", "captions", str(punks_copy), "--fix", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in punks_copy.iterdir()} == before
    assert "greybackground" in yuri.read_text()
    assert "grey background" in (out / "lady_096_yuri.txt").read_text()
    for png in punks_copy.glob("*.png"):
        assert (out / png.name).read_bytes() == png.read_bytes()
    assert not (out / "lad_057_Hughx.txt").exists()  # a missing caption is reported, not invented
    diff = (out / "captions.diff").read_text()
    assert "-purple anime cosplay style hair" not in diff and "+grey background" in diff and "-greybackground" in diff
    assert diff.count("+++ b/") == len(cap.lint_folder(punks_copy).changed) == 45
    again = cap.lint_folder(out)
    assert again.counts()["glued"] == 0 and again.counts()["repeated"] == 0 and again.changed == []  # the fix is complete and stable


def test_fix_refuses_bad_targets(punks_copy: Path, tmp_path: Path):
    for args, needle in [
        (["--fix"], "--fix and --out go together"),
        (["--fix", "--out", str(punks_copy / "inside")], "must be outside the dataset folder"),
        (["--words", str(tmp_path / "nope.txt")], "word list not found"),
    ]:
        r = cli("dataset", "captions", str(punks_copy), *args)
        assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert not (punks_copy / "inside").exists()
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("keep")
    assert cli("dataset", "captions", str(punks_copy), "--fix", "--out", str(taken)).returncode == 2
    assert [p.name for p in taken.iterdir()] == ["x"]


def test_word_list_protects_a_word(punks_dir: Path, tmp_path: Path):
    words = tmp_path / "words.txt"
    words.write_text("# modern words\nblockchain\n")
    data = json.loads(cli("dataset", "captions", str(punks_dir), "--json", "--words", str(words)).stdout)
    assert "blockchain" not in {p["text"] for p in data["problems"] if p["kind"] == "glued"}
    assert "blockchain" not in {p["text"] for p in data["problems"] if p["kind"] in ("rare", "unknown")}


# ------------------------------------------------------------------ render and train


def test_render_warns_with_the_count_and_the_command(punks_dir: Path, tmp_path: Path):
    r = cli("render", "--preset", "pixel24", "--dataset", str(punks_dir), "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    stderr = " ".join(r.stderr.split())  # rich wraps long warnings
    assert f"warning: {cap.lint_folder(punks_dir).summary_line()}; run" in stderr
    assert f"run `bespoke-kohya dataset captions {punks_dir}` to see them" in stderr
    assert "--set dataset.captions=normalised" in stderr
    data = next((tmp_path / "run" / "data").iterdir())
    assert "greybackground" in (data / "lady_096_yuri.txt").read_text()  # raw is the default


def test_train_on_normalised_captions_records_it(punks_dir: Path, tmp_path: Path):
    run = tmp_path / "run"
    r = cli("train", "--preset", "pixel24", "--dataset", str(punks_dir), "--run-dir", str(run), "--dry-run", "--set", "dataset.captions=normalised")
    assert r.returncode == 0, r.stderr
    record = read_run(run)  # through the run contract: the caption record is a typed part of run.json
    assert record.resolved["dataset"]["captions"] == "normalised"
    linted = cap.lint_folder(punks_dir)
    assert record.dataset.captions is not None
    assert record.dataset.captions.mode == "normalised" and record.dataset.captions.changed == len(linted.changed)
    assert record.dataset.captions.problems == linted.counts()
    data = next((run / "data").iterdir())
    assert (data / "lady_096_yuri.txt").read_text() == linted.fixed["lady_096_yuri"] + "\n"
    assert "captions normalised for training" in r.stderr


def test_captions_setting_is_validated(punks_dir: Path, tmp_path: Path):
    r = cli("render", "--preset", "pixel24", "--dataset", str(punks_dir), "--out", str(tmp_path / "run"), "--set", "dataset.captions=fixed")
    assert r.returncode == 2 and "dataset.captions" in r.stderr and "raw" in r.stderr
    assert not (tmp_path / "run").exists()


def test_pixel24_prompts_reach_the_model_as_words():
    import numpy as np

    from bespoke_kohya.engines.pixel24 import api as pixel24
    from bespoke_kohya.engines.pixel24.settings import Pixel24Settings

    vocab = pixel24.build_vocab(["lady, grey background, pinkpurple glasses", "lad, grey background"], 1)
    settings = Pixel24Settings(block_out_channels=[16, 32], colour_dim=8, feature_dim=16)
    model = pixel24.build_model(pixel24.model_config(settings, vocab, np.array([[0, 0, 0], [255, 255, 255]], np.uint8)))
    ids, unknown = pixel24.encode_prompt(model, "lady, greybackground, pinkpurple glasses")
    index = model.vocab_index
    assert unknown == []
    # A word the model learnt is never split, even when it looks glued.
    assert ids == [[index["lady"]], [index["grey"], index["background"]], [index["pinkpurple"], index["glasses"]]]
