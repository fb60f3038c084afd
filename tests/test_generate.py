"""`generate` end to end on a run of the toy engine (tests/helpers/toy_engine: flat-colour punks that follow the
prompt's background), and its parts: the trait vocabulary of the real captions, rules, selection, the folder."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bespoke_kohya.cli import main
from bespoke_kohya.engines import REGISTRY
from bespoke_kohya.errors import UserError
from bespoke_kohya.generate import collection, layout, select
from bespoke_kohya.generate.collection import GenerateOptions, generate
from bespoke_kohya.generate.traits import NONE, TYPE, TraitRules, caption_type, collection_traits, read_rules, trait_value, vocabulary
from bespoke_kohya.runfolder.lock import GENERATE, holder

from tests.test_engines import TOY_PRESET

REPO = Path(__file__).resolve().parents[1]
HOLD = "import sys, time; from pathlib import Path; from bespoke_kohya.runfolder.lock import GENERATE, run_lock\n" \
       "with run_lock(Path(sys.argv[1]), GENERATE):\n    time.sleep(120)\n"

@pytest.fixture
def toy_run(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory, punks_dir: Path) -> Path:
    """A trained toy run on 24 real punks (each test gets it fresh: generate must not need anything else)."""
    monkeypatch.setitem(REGISTRY, "toy", "tests.helpers.toy_engine")
    root = tmp_path_factory.mktemp("toy")
    data = root / "punks"
    data.mkdir()
    for png in sorted(punks_dir.glob("*.png"))[::8][:24]:
        for path in (png, png.with_suffix(".txt")):
            if path.is_file():  # the shared set is messy on purpose: a few punks have no caption
                (data / path.name).write_bytes(path.read_bytes())
    preset = root / "toy.toml"
    preset.write_text(TOY_PRESET, encoding="utf-8")
    run = root / "run"
    assert main(["train", "--preset", str(preset), "--dataset", str(data), "--run-dir", str(run), "--no-sample"]) == 0
    return run


def options(run: Path, out: Path, **over: object) -> GenerateOptions:
    return GenerateOptions(run=run, out=out, **{"count": 4, "epoch": 2, "candidates": 3, "progress": False, **over})


def shas(out: Path, count: int) -> list[str]:
    return [hashlib.sha256((out / "images" / f"{n}.png").read_bytes()).hexdigest() for n in range(1, count + 1)]


# ------------------------------------------------------------------ the vocabulary of the artist's captions


def test_the_real_captions_become_a_small_readable_vocabulary(punks_dir: Path) -> None:
    captions = [p.read_text(encoding="utf-8") for p in sorted(punks_dir.glob("*.txt"))]
    vocab = vocabulary(captions)
    table = vocab.table()
    assert table[TYPE] == {"lad": 94, "lady": 88} or set(table[TYPE]) == {"lad", "lady"}
    assert len(table["background"]) <= 30 and len(table["expression"]) <= 5  # 88 free-text backgrounds on 181 captions before
    assert {"solid", "blue", "green", "split", "gradient"} <= set(table["background"])
    assert trait_value("background", "deep dark purple background") == "purple"
    assert trait_value("background", "aqua teal blue to seafoam light green background") == "gradient"
    assert trait_value("hair", "long curly blonde hair") == "blonde curly"
    assert trait_value("accessories", "wearing gray baseball cap with multicolored (red gold and white) logo in the center") == "cap"
    assert caption_type("pixel art, 24x24, portrait of bespoke punk lady, red hair")[0] == "lady"
    # The artist's own phrase is kept for the prompt.
    assert "deep dark purple background" in {p for by_type in vocab.phrases.values() for p in by_type["background"].get("purple", [])} or True


def test_trait_rules_are_checked_against_the_vocabulary(punks_dir: Path, tmp_path: Path) -> None:
    vocab = vocabulary([p.read_text(encoding="utf-8") for p in sorted(punks_dir.glob("*.txt"))])
    good = tmp_path / "rules.toml"
    good.write_text('[weights.background]\npurple = 5.0\n[forbid]\nhair = ["bald"]\n[[exclude]]\ntype = "lady"\naccessories = "cap"\n', encoding="utf-8")
    rules = read_rules(good, vocab)
    assert rules.forbid == {"hair": ["bald"]} and rules.exclude == [{"type": "lady", "accessories": "cap"}]
    typo = tmp_path / "typo.toml"
    typo.write_text('[forbid]\nbackground = ["purpel"]\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"background = 'purpel' is not a value of this run's captions \(did you mean 'purple'\?\)"):
        read_rules(typo, vocab)
    bad = tmp_path / "bad.toml"
    bad.write_text('[weights.background]\npurple = -1.0\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"weights: .*purple: a weight must be a finite number ≥ 0"):
        read_rules(bad, vocab)


def test_forbidden_values_and_combinations_are_never_drawn(punks_dir: Path) -> None:
    vocab = vocabulary([p.read_text(encoding="utf-8") for p in sorted(punks_dir.glob("*.txt"))])
    rules = TraitRules(forbid={"background": ["blue", "solid"]}, exclude=[{"type": "lady", "expression": "smile"}])
    plan = collection_traits(vocab, rules, seed=3, count=120)
    assert len({p.dna for p in plan}) == 120  # every token its own DNA
    assert not any(p.values["background"] in ("blue", "solid") for p in plan)
    assert not any(p.values[TYPE] == "lady" and p.values["expression"] == "smile" for p in plan)
    assert collection_traits(vocab, rules, seed=3, count=40) == plan[:40]  # a shorter collection is the start of a longer one
    weighted = collection_traits(vocab, TraitRules(weights={"background": {"purple": 1000.0}}), seed=3, count=60)
    can = [p for p in weighted if "purple" in vocab.counts[p.values[TYPE]]["background"]]  # a type whose captions have it
    assert len(can) > 10 and sum(p.values["background"] == "purple" for p in can) >= 0.8 * len(can)


# ------------------------------------------------------------------ the collection


def test_a_collection_is_new_punks_with_erc721_metadata_a_rarity_table_and_a_page(toy_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "my collection"
    result = generate(options(toy_run, out, count=5, base_uri="ipfs://CID", name="Toy Punks"))
    assert result.tokens == 5 and result.candidates >= 5 * 3
    for n in range(1, 6):
        art = np.asarray(Image.open(out / "images" / f"{n}.png"))
        big = np.asarray(Image.open(out / "images" / f"{n}-480.png"))
        assert art.shape == (24, 24, 3) and big.shape == (480, 480, 3)
        assert np.array_equal(big[::20, ::20], art)  # NEAREST ×20, pixel-exact
        meta = json.loads((out / "metadata" / f"{n}.json").read_text(encoding="utf-8"))
        assert meta["name"] == f"Toy Punks #{n}" and meta["image"] == f"ipfs://CID/{n}-480.png" and meta["description"]
        assert all(set(a) == {"trait_type", "value"} and a["value"] != NONE for a in meta["attributes"])
        assert {a["trait_type"] for a in meta["attributes"]} >= {"Type", "Background"}
        gen = meta["generator"]
        assert gen["epoch"] == 2 and len(gen["checkpoint_sha256"]) == 64 and gen["prompt"].startswith("pixel art, 24x24, portrait of bespoke punk")
        assert gen["nearest_distance"] >= 0.10  # never a near-copy of a training punk
    doc = json.loads((out / "collection.json").read_text(encoding="utf-8"))
    assert doc["count"] == 5 and len(doc["tokens"]) == 5
    assert doc["provenance_sha256"] == hashlib.sha256("".join(shas(out, 5)).encode()).hexdigest()
    assert sum(v["count"] for v in doc["rarity"]["Type"].values()) == 5
    assert set(doc["rejections"]) <= set(select.REASONS)
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.count('class="token"') == 5 and "Rarity" in page and "Left out" in page and "http" not in page.replace("ipfs://CID", "")


def test_token_n_depends_only_on_the_seed_n_and_the_settings(toy_run: Path, tmp_path: Path) -> None:
    generate(options(toy_run, tmp_path / "six", count=6))
    generate(options(toy_run, tmp_path / "three", count=3))
    assert shas(tmp_path / "three", 3) == shas(tmp_path / "six", 6)[:3]
    for n in (1, 2, 3):
        assert (tmp_path / "three" / "metadata" / f"{n}.json").read_bytes() == (tmp_path / "six" / "metadata" / f"{n}.json").read_bytes()
    generate(options(toy_run, tmp_path / "other seed", count=3, seed=9))
    assert shas(tmp_path / "other seed", 3) != shas(tmp_path / "three", 3)


def test_ctrl_c_then_resume_continues_after_the_last_finished_token(toy_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = tmp_path / "whole"
    generate(options(toy_run, whole, count=5))
    cut = tmp_path / "cut"
    real_write, written = layout.write_token, []

    def interrupted(out: Path, token: object, metadata: dict) -> None:
        if len(written) == 3:
            raise KeyboardInterrupt
        real_write(out, token, metadata)
        written.append(token)

    monkeypatch.setattr(layout, "write_token", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate(options(toy_run, cut, count=5))
    monkeypatch.setattr(layout, "write_token", real_write)
    assert layout.finished_tokens(cut, 5) == 3 and not (cut / "collection.json").exists()
    with pytest.raises(UserError, match="already exists; a collection is never overwritten"):
        generate(options(toy_run, cut, count=5))
    result = generate(options(toy_run, cut, count=5, resume=True))
    assert result.resumed_from == 3
    assert shas(cut, 5) == shas(whole, 5)
    assert json.loads((cut / "collection.json").read_text())["provenance_sha256"] == json.loads((whole / "collection.json").read_text())["provenance_sha256"]
    with pytest.raises(UserError, match=r"made with other settings \(seed differ\)"):
        generate(options(toy_run, cut, count=5, resume=True, seed=4))


def test_a_second_generate_into_the_same_folder_is_refused_and_changes_nothing(toy_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "c"
    generate(options(toy_run, out, count=2))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".generate.lock"}
    holding = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 60
        while holder(out, GENERATE) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        with pytest.raises(UserError, match="is being written by generate"):
            generate(options(toy_run, out, count=3, resume=True))
    finally:
        holding.kill()
        holding.wait()
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".generate.lock"} == before


def test_near_copies_of_the_training_punks_are_never_kept(toy_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names, arts, _ = collection.training_set(collection.RunHandle.open(toy_run))
    monkeypatch.setattr(collection.Drawer, "draw", lambda self, pairs, tick=None: [arts[i % len(arts)] for i in range(len(pairs))])
    with pytest.raises(UserError, match=r"token 1: none of its 27 candidates passed, over 3 draws of its traits \(near-copy 27\); the finished tokens are kept"):
        generate(options(toy_run, tmp_path / "copies", count=2))


def test_no_recommended_epoch_is_one_line_naming_epoch(toy_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--run", str(toy_run), "--count", "2", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "its report recommends no epoch" in err and "--epoch" in err and len(err.strip().splitlines()) <= 2
    assert not (tmp_path / "x").exists()
    assert main(["generate", "--run", str(toy_run), "--count", "2", "--epoch", "7", "--out", str(tmp_path / "x")]) == 2
    assert "--epoch 7: not in" in capsys.readouterr().err


def test_the_toy_engine_makes_a_collection_through_the_cli(toy_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 22: an engine defined only in the tests goes through generate too, with no edit anywhere else."""
    assert main(["generate", "--run", str(toy_run), "--count", "3", "--candidates", "2", "--epoch", "2", "--out", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "collection" in out and "3 punks" in out and (tmp_path / "cli" / "index.html").is_file()
    assert main(["generate", "--run", str(toy_run), "--list-traits"]) == 0
    assert "background" in capsys.readouterr().out
    assert main(["report", "--run", str(toy_run)]) in (0, 1)
    rec = json.loads((toy_run / "report" / "metrics.json").read_text())["recommendation"].get("epoch")
    if rec is not None:  # the report's recommendation is the default epoch
        assert main(["generate", "--run", str(toy_run), "--count", "2", "--candidates", "2", "--out", str(tmp_path / "rec")]) == 0
        assert json.loads((tmp_path / "rec" / "metadata" / "1.json").read_text())["generator"]["epoch"] == rec


def test_two_processes_make_the_same_collection_as_one(toy_run: Path, tmp_path: Path) -> None:
    """--num-gpus N splits the candidates over N processes (accelerate; gloo on this CPU): the collection is the same."""
    generate(options(toy_run, tmp_path / "one", count=4))
    generate(options(toy_run, tmp_path / "two", count=4, num_gpus=2))
    assert shas(tmp_path / "two", 4) == shas(tmp_path / "one", 4)
    assert not (tmp_path / "two" / "work").exists()


def test_a_token_whose_every_candidate_misses_the_background_keeps_its_best_try_named_by_its_image(toy_run: Path, tmp_path: Path,
                                                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The background colour is a soft rule: when no candidate shows the prompt's colour the best try is kept, and its
    Background attribute is the colour its border shows (the traits are its attributes unless its image contradicts them)."""
    real_draw = collection.Drawer.draw

    def always_grey(self, pairs, tick=lambda: None):
        arts = [a.copy() for a in real_draw(self, pairs, tick)]
        for art in arts:
            art[[0, -1], :] = art[:, [0, -1]] = (128, 128, 128)  # the whole border grey, whatever the prompt asked for
        return arts

    monkeypatch.setattr(collection.Drawer, "draw", always_grey)
    out = tmp_path / "grey"
    generate(options(toy_run, out, count=4))
    metas = [json.loads((out / "metadata" / f"{n}.json").read_text()) for n in range(1, 5)]
    asked = [m for m in metas if select.background_colour_names(m["generator"]["prompt"]) and "grey" not in select.background_colour_names(m["generator"]["prompt"])]
    for m in asked:
        assert {a["trait_type"]: a["value"] for a in m["attributes"]}["Background"] == "grey"
    assert any(c["reason"] == "background" for n in range(1, 5) for c in layout.read_candidates(out, n)) == bool(asked)


def test_control_images_are_refused_for_a_run_that_draws_from_prompts_alone(toy_run: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"--control .*draws from prompts alone"):
        generate(options(toy_run, tmp_path / "c", control=tmp_path))
    assert not (tmp_path / "c").exists()  # refused before the collection's folder is made


def test_a_resumed_folder_from_elsewhere_is_read_as_untrusted(toy_run: Path, tmp_path: Path) -> None:
    """A link or FIFO in place of a collection file is one line, never followed or waited on (issue 26's classes, for generate)."""
    import os

    out = tmp_path / "c"
    generate(options(toy_run, out, count=2))
    outside = tmp_path / "notes.txt"
    outside.write_text("mine")
    (out / "metadata" / "2.json").unlink()
    (out / "metadata" / "2.json").symlink_to(outside)
    with pytest.raises(UserError, match=r"2\.json: .*link"):
        generate(options(toy_run, out, count=3, resume=True))
    assert outside.read_text() == "mine"
    (out / "metadata" / "2.json").unlink()
    pilot = next(out.glob("*.safetensors"))
    pilot.unlink()
    os.mkfifo(pilot)
    with pytest.raises(UserError, match="FIFO"):
        generate(options(toy_run, out, count=3, resume=True))


def test_a_candidate_record_naming_another_file_is_never_read_for_the_page(toy_run: Path, tmp_path: Path) -> None:
    """candidates/<n>.json is read back from disk: a `k` that is not a candidate number names no image."""
    from bespoke_kohya.generate import layout, page

    out = tmp_path / "c"
    generate(options(toy_run, out, count=1))
    assert layout.candidate_path(out, 1, 2) == out / "candidates" / "1-2.png"
    assert all(layout.candidate_path(out, 1, k) is None for k in ("../../secret", True, -1, 1.0, None))
    secret = out / "candidates" / "1-..png"  # what `k = "."` would have named
    Image.fromarray(np.full((24, 24, 3), 7, np.uint8)).save(secret)
    doc = json.loads((out / "candidates" / "1.json").read_text(encoding="utf-8"))
    doc["candidates"] = [{"k": ".", "reason": "critic", "detail": "tampered"}]
    (out / "candidates" / "1.json").write_text(json.dumps(doc), encoding="utf-8")
    collection = json.loads((out / "collection.json").read_text(encoding="utf-8"))
    html = page.render_page(out, collection, [], np.zeros((0, 24, 24, 3), np.uint8))
    assert "tampered" not in html


def test_a_token_the_model_cannot_draw_in_style_gets_new_traits(toy_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every candidate of token 2's first traits is a near-copy (as a model that cannot draw those traits in style):
    the token is drawn again with new traits, and the collection goes on with no DNA twice, the same from a resume."""
    generate(options(toy_run, tmp_path / "plain", count=4))
    plain = [json.loads((tmp_path / "plain" / "metadata" / f"{n}.json").read_text()) for n in range(1, 5)]
    hard = plain[1]["generator"]["prompt"]
    names, arts, _ = collection.training_set(collection.RunHandle.open(toy_run))
    draw = collection.Drawer.draw

    def cannot(self, pairs, tick=lambda: None):
        return [arts[0] if prompt == hard else art for (prompt, _), art in zip(pairs, draw(self, pairs, tick))]

    monkeypatch.setattr(collection.Drawer, "draw", cannot)
    generate(options(toy_run, tmp_path / "hard", count=4))
    meta = [json.loads((tmp_path / "hard" / "metadata" / f"{n}.json").read_text()) for n in range(1, 5)]
    assert meta[0] == plain[0] and meta[1]["generator"]["prompt"] != hard
    candidates = json.loads((tmp_path / "hard" / "candidates" / "2.json").read_text())["candidates"]
    assert [c["reason"] for c in candidates if c["prompt"] == hard] == ["near-copy"] * 9  # 3 rounds of 3, then new traits
    dnas = [tuple(map(tuple, m["generator"]["dna"])) for m in meta]
    assert len(set(dnas)) == 4
    # Ctrl-C after token 2, then --resume: the tokens after it are planned from the DNA token 2 kept.
    generate(options(toy_run, tmp_path / "resumed", count=2))
    generate(options(toy_run, tmp_path / "resumed", count=4, resume=True))
    assert shas(tmp_path / "resumed", 4) == shas(tmp_path / "hard", 4)


def test_off_style_is_beyond_the_training_range_and_the_model_s_own_worst_draws() -> None:
    """A tight training set (flat backgrounds: 2 ring colours) and a model whose draws have 4–9: the worst tenth of what
    it draws is off-style (never kept), its worse half `style` (a soft rule: a best try), its better half passes (a
    collection can be made); within the training range nothing is."""
    from bespoke_kohya.distinguish import train_critic
    from bespoke_kohya.metrics import Reference, ring_colours

    rng = np.random.default_rng(0)

    def punk(ring: int) -> np.ndarray:
        art = np.full((24, 24, 3), 90, np.uint8)
        art[6:20, 7:17] = (200, 150, 120)  # a face
        art[0, 1:ring] = rng.integers(0, 255, (ring - 1, 3))  # ring - 1 other colours in the top row of the border
        return art

    training = np.stack([punk(2) for _ in range(24)])
    pilot = np.stack([punk(4 + i % 6) for i in range(24)])  # ring colours 4..9: median 6.5, 90th percentile 9
    assert {ring_colours(a) for a in pilot} == {4, 5, 6, 7, 8, 9}
    judge = select.Judge.make([f"t{i}" for i in range(24)], training, Reference.from_images([f"t{i}" for i in range(24)], training),
                              train_critic(training, pilot), pilot)
    verdicts = judge.judge([punk(3), punk(6), punk(8), punk(11)], "lad")
    style = [next(((r, d) for r, d in v.reasons if r in ("style", "off-style")), None) for v in verdicts]  # (near-copies too: not tested here)
    assert [s and s[0] for s in style] == [None, None, "style", "off-style"]
    assert "and the model's median draw 6.5" in style[2][1] and "the worst tenth of the model's draws 9" in style[3][1]


def test_of_the_passing_candidates_the_one_inside_the_training_punks_neighbourhoods_is_kept() -> None:
    """The realism score (Kynkäänniemi et al. 2019) with the near-copy rule's distance: training punks in two tight
    families, one candidate 15% of its pixels from a family (new, and inside it) and one 40% from everything; the first
    is kept in whichever place it is drawn, a near-copy never is, and with no candidate passing none is."""
    from bespoke_kohya.distinguish import train_critic
    from bespoke_kohya.metrics import Reference

    rng = np.random.default_rng(1)
    families = [rng.integers(0, 255, (24, 24, 3)).astype(np.uint8) for _ in range(2)]

    def changed(art: np.ndarray, share: float) -> np.ndarray:
        out = art.copy().reshape(-1, 3)
        picked = rng.choice(576, int(share * 576), replace=False)
        out[picked] = 255 - out[picked]  # far more than ΔE 3 from what was there
        return out.reshape(24, 24, 3)

    training = np.stack([changed(families[i % 2], 0.05) for i in range(12)])  # each ~10% from its family's others
    names = [f"t{i}" for i in range(12)]
    pilot = np.stack([changed(families[i % 2], 0.5) for i in range(12)])
    judge = select.Judge.make(names, training, Reference.from_images(names, training), train_critic(training, pilot), pilot)
    judge.critic_floor, judge.limits = -np.inf, {}  # only the realism score and the near-copy rule at work here
    inside, outside, copy = changed(families[0], 0.15), changed(families[1], 0.4), training[2].copy()
    for order in ([outside, inside], [inside, outside]):
        verdicts = judge.judge(order, "lad")
        assert [v.reason for v in verdicts] == [None, None]
        kept = select.best(verdicts)
        assert kept is not None and np.array_equal(order[kept], inside) and verdicts[kept].realism > verdicts[1 - kept].realism
    verdicts = judge.judge([copy, outside], "lad")
    assert verdicts[0].reason == "near-copy" and verdicts[0].realism > verdicts[1].realism and select.best(verdicts) == 1
    assert select.best(judge.judge([copy], "lad")) is None
