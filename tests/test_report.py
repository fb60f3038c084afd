"""The epoch-comparison report, on a run built from real punks (tests/helpers/fake_run.py).

Epoch 1 is degraded renders, epoch 2 clean new punks, epoch 3 exact copies of
training images; the report must show all of them, score them, recommend neither the
bad nor the memorised epoch, and explain runs that are incomplete instead of failing.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from markupsafe import escape
from PIL import Image

from bespoke_kohya import report
from bespoke_kohya.presets import validate_preset
from bespoke_kohya.errors import UserError
from bespoke_kohya.report.collect import status_notices
from bespoke_kohya.report.page import SCALE, fmt

from tests.helpers.fake_run import FakeRun, build_fake_run
from tests.helpers.runs import write_record

IMG_RE = re.compile(r'<img class="px" src="data:image/png;base64,([A-Za-z0-9+/=]+)" width="(\d+)" height="(\d+)" alt="([^"]*)">')
STRIP_RE = re.compile(r'<img class="px" src="data:image/png;base64,([A-Za-z0-9+/=]+)" width="\d+" height="\d+" title="([^"]*)" alt="\2">')
CELL_RE = re.compile(r'<td data-epoch="([^"]+)" data-metric="([^"]+)">([^<]*)</td>')


def decode_png(b64: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory, punks_dir: Path) -> FakeRun:
    """A finished three-epoch run with its report written once (shared by the read-only tests)."""
    run_dir = tmp_path_factory.mktemp("report") / "sd15_512-20250101-000000"
    table = {
        "steps": [
            {"step": 1, "name": "upscale", "check": "NEAREST upscale is exact", "status": "pass", "evidence": "184/184 exact", "reason": ""},
            {"step": 4, "name": "generate", "check": "samples exist", "status": "skipped", "evidence": "", "reason": "no GPU", "command": "make sample"},
        ],
        "exit_code": 3,
    }
    fake = build_fake_run(run_dir, punks_dir, reproduce=table)
    report.write_report(run_dir)
    return fake


@pytest.fixture(scope="module")
def page(full_run: FakeRun) -> str:
    return (full_run.run_dir / "report" / "index.html").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def metrics(full_run: FakeRun) -> dict:
    return json.loads((full_run.run_dir / "report" / "metrics.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory, punks_dir: Path) -> FakeRun:
    """The same kind of run on 30 real punks at 192 px: the tests that break a run need no 184-image reference."""
    subset = tmp_path_factory.mktemp("punks30")
    for png in sorted(punks_dir.glob("*.png"))[::6][:30]:
        shutil.copy(png, subset / png.name)
    return build_fake_run(tmp_path_factory.mktemp("small") / "run", subset, size=192)


def copy_run(fake: FakeRun, tmp_path: Path) -> Path:
    """A private copy of a fake run (without any report) for a test that changes it."""
    target = tmp_path / "run"
    shutil.copytree(fake.run_dir, target, ignore=shutil.ignore_patterns("report"))
    return target


def edit_json(path: Path, change) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    change(doc)
    path.write_text(json.dumps(doc), encoding="utf-8")


# ------------------------------------------------------------------ the full run


def test_grid_shows_every_epoch_prompt_and_seed_pixel_exact(full_run: FakeRun, page: str) -> None:
    shown = {alt: (b64, int(w)) for b64, w, _h, alt in IMG_RE.findall(page) if alt.startswith("epoch ")}
    assert len(full_run.arts) == 3 * 3 * 2
    for (epoch, pid, seed), art in full_run.arts.items():
        b64, width = shown[f"epoch {epoch}, {pid}, seed {seed}"]
        # the embedded image is the true 24x24 result, enlarged only by CSS (pixelated)
        assert np.array_equal(decode_png(b64), art)
        assert width == 24 * SCALE
    assert "image-rendering:pixelated" in page


def test_grid_rows_line_up_prompt_and_seed_across_epochs(full_run: FakeRun, page: str) -> None:
    grid = page[page.index('id="samples"') : page.index('id="originals"')]
    body = grid[grid.index("<tbody>") : grid.index("</tbody>")]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", body, flags=re.S)
    assert len(rows) == len(full_run.prompt_ids) * len(full_run.seeds)
    for index, row in enumerate(rows):
        pid, seed = full_run.prompt_ids[index // len(full_run.seeds)], full_run.seeds[index % len(full_run.seeds)]
        assert f'<th class="seed">seed {seed}</th>' in row
        alts = re.findall(r'<img class="px"[^>]* alt="([^"]+)">', row)
        assert alts == [f"epoch {e}, {pid}, seed {seed}" for e in (1, 2, 3)]


def test_full_size_sample_is_embedded_for_hover(full_run: FakeRun, page: str) -> None:
    fulls = re.findall(r'<span class="full"><img src="data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)" alt="epoch 2, p01, seed 1 full size">', page)
    assert len(fulls) == 1
    mime, b64 = fulls[0]
    with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
        assert im.size == (512, 512)
    assert ".sample:hover .full" in page


def test_training_originals_strip(full_run: FakeRun, page: str, punks_dir: Path) -> None:
    strip = page[page.index('id="originals"') : page.index('id="metrics"')]
    shown = STRIP_RE.findall(strip)
    originals = sorted(punks_dir.glob("*.png"))
    assert [name for _, name in shown] == [p.stem for p in originals]
    for (b64, _), path in zip(shown[:10], originals):
        assert np.array_equal(decode_png(b64), np.asarray(Image.open(path).convert("RGB")))


def test_loss_curve_is_an_embedded_plot(page: str) -> None:
    m = re.search(r'<img class="loss" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert m, "loss plot missing"
    arr = decode_png(m.group(1))
    assert arr.shape[1] >= 800
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 20  # lines, labels, legend: not a blank canvas


def test_metrics_table_explains_every_metric(page: str, metrics: dict) -> None:
    from bespoke_kohya.metrics import METRICS

    infos = list(METRICS.values()) if isinstance(METRICS, dict) else list(METRICS)
    assert [m["key"] for m in metrics["metrics"]] == [m.key for m in infos]
    for info in infos:
        assert escape(info.explanation) in page
        assert escape(info.label) in page


def table_value(entry: dict, key: str) -> float | None:
    """What the metrics table shows for ``key`` of a metrics.json entry (an epoch or the reference)."""
    if key == "score":
        return entry.get("score")
    if key == "heldout_loss":
        return (entry.get("evidence") or {}).get("heldout_loss")
    return entry["values"].get(key)


def test_html_numbers_equal_metrics_json(page: str, metrics: dict) -> None:
    cells = CELL_RE.findall(page)
    keys = ["score", "heldout_loss"] + [m["key"] for m in metrics["metrics"]]
    assert [(row, key) for row, key, _ in cells] == [(row, key) for row in ["reference", "1", "2", "3"] for key in keys]
    checked = 0
    for row, key, text in cells:
        entry = metrics["reference"] if row == "reference" else metrics["epochs"][row]
        expected = table_value(entry, key)
        assert text == fmt(expected), (row, key)
        if expected is not None:
            assert float(text) == expected
            checked += 1
    assert checked >= 3 * (len(keys) - 1)  # every epoch's numbers, not only dashes (this run logged no held-out loss)


def test_recommends_neither_the_noisy_nor_the_memorised_epoch(page: str, metrics: dict) -> None:
    rec = metrics["recommendation"]
    assert rec["epoch"] not in (1, 3), rec
    assert rec["epoch"] == 2
    assert rec["reasons"]
    assert f"Recommended: epoch {rec['epoch']}" in page
    assert set(metrics["verdicts"]) == {"1", "2", "3"}
    assert re.search(r"cop|memori", metrics["verdicts"]["3"], re.I), metrics["verdicts"]["3"]
    assert '<th class="pick" data-epoch="2">epoch 2 ★ recommended' in page


def test_epoch3_copies_are_flagged_in_the_grid(full_run: FakeRun, metrics: dict) -> None:
    flagged = metrics["cells"].get("3", {})
    assert len(flagged) == 6, flagged
    for (epoch, pid, seed), source in full_run.sources.items():
        if epoch == 3:
            assert source in flagged[f"{pid}-s{seed}"]["text"]
    assert not metrics["cells"].get("2"), "clean new punks flagged as copies"


def test_reference_row_scores_the_originals(metrics: dict, punks_dir: Path) -> None:
    ref = metrics["reference"]
    assert ref["images"] == len(list(punks_dir.glob("*.png")))
    assert any(v is not None for v in ref["values"].values())


def test_reproduce_table_is_shown(page: str) -> None:
    section = page[page.index('id="reproduce"') :]
    assert "NEAREST upscale is exact" in section and "184/184 exact" in section
    assert '<span class="status skipped">skipped</span>' in section and "run: make sample" in section


def test_page_needs_no_network(page: str) -> None:
    lowered = page.lower()
    for pattern in ('src="http', "src='http", 'href="http', "url(http", "@import", "<script", "<link", "//cdn"):
        assert pattern not in lowered, pattern
    assert "http://" not in lowered and "https://" not in lowered


def test_report_summary_matches_metrics_json(full_run: FakeRun, metrics: dict) -> None:
    summary = report.report_summary(full_run.run_dir)
    assert summary["recommended_epoch"] == metrics["recommendation"]["epoch"]
    assert summary["verdicts"] == metrics["verdicts"]


def test_no_good_epoch_is_said_plainly_and_the_least_bad_named(small_run: FakeRun, tmp_path: Path) -> None:
    run = copy_run(small_run, tmp_path)
    edit_json(run / "samples" / "samples.json", lambda d: d["epochs"].pop("2"))  # left: blurred noise (1) and copies (3)
    page = report.write_report(run).read_text(encoding="utf-8")
    doc = json.loads((run / "report" / "metrics.json").read_text(encoding="utf-8"))
    rec = doc["recommendation"]
    assert rec["epoch"] is None and rec["least_bad"] in (1, 3) and report.best_epoch(doc) == rec["least_bad"]
    assert rec["reasons"][0].startswith("No epoch is good: epoch 3 is mostly near-copies of training images; epoch 1 is far from the training style")
    assert "No epoch recommended" in page and f'<p class="why">{escape(rec["reasons"][0])}</p>' in page
    assert 'class="pick"' not in page


def test_report_summary_recomputes_after_new_samples(small_run: FakeRun, tmp_path: Path) -> None:
    run = copy_run(small_run, tmp_path)
    report.write_report(run)
    assert set(report.report_summary(run)["verdicts"]) == {"1", "2", "3"}
    edit_json(run / "samples" / "samples.json", lambda d: d["epochs"].pop("2"))
    summary = report.report_summary(run)  # metrics.json is now stale: recomputed, not reused
    assert set(summary["verdicts"]) == {"1", "3"}
    assert summary["recommended_epoch"] != 2


# ------------------------------------------------------------------ held-out validation: loss, caption pairs, distinguishability

VALIDATION = {1: 0.31, 2: 0.25, 3: 0.29}
HELD_IMG_RE = re.compile(r'<img class="px" src="data:image/png;base64,([A-Za-z0-9+/=]+)" width="\d+" height="\d+" alt="(held-out [^"]+)">')


@pytest.fixture(scope="module")
def heldout_run(tmp_path_factory: pytest.TempPathFactory, punks_dir: Path) -> FakeRun:
    """30 real punks, 3 of them held out, each held-out caption drawn with one seed per epoch, and a held-out loss per epoch.

    9 outputs per epoch are too few for the two-sample test, so no CNN trains here (the slow test below trains it).
    """
    subset = tmp_path_factory.mktemp("punks30h")
    for png in sorted(punks_dir.glob("*.png"))[::6][:30]:
        shutil.copy(png, subset / png.name)
        if png.with_suffix(".txt").is_file():
            shutil.copy(png.with_suffix(".txt"), subset / png.with_suffix(".txt").name)
    fake = build_fake_run(tmp_path_factory.mktemp("heldout") / "run", subset, size=192, heldout_seeds=1, validation=VALIDATION)
    report.write_report(fake.run_dir)
    return fake


def heldout_page(fake: FakeRun) -> tuple[str, dict]:
    return (fake.run_dir / "report" / "index.html").read_text(encoding="utf-8"), json.loads((fake.run_dir / "report" / "metrics.json").read_text(encoding="utf-8"))


def test_heldout_loss_is_a_curve_and_a_table_column(heldout_run: FakeRun) -> None:
    page, doc = heldout_page(heldout_run)
    assert {e: doc["epochs"][e]["evidence"]["heldout_loss"] for e in ("1", "2", "3")} == {str(e): v for e, v in VALIDATION.items()}
    shown = {(row, key): text for row, key, text in CELL_RE.findall(page)}
    assert [shown[(str(e), "heldout_loss")] for e in VALIDATION] == [fmt(v) for v in VALIDATION.values()]
    m = re.search(r'<img class="loss" src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="held-out loss per epoch">', page)
    assert m, "held-out loss plot missing"
    plot = decode_png(m.group(1))
    reds = (plot[..., 0] > 150) & (plot[..., 1] < 80) & (plot[..., 2] < 80)
    assert reds.sum() > 200  # the held-out line is drawn, not only axes


def test_no_heldout_loss_is_a_notice_not_an_error(page: str, metrics: dict) -> None:
    assert "no held-out loss: this run was made before held-out validation" in page
    assert "No held-out loss recorded" in page and 'alt="held-out loss per epoch"' not in page
    assert all(e["evidence"]["heldout_loss"] is None for e in metrics["epochs"].values())
    assert all(e["recommendation_parts"]["heldout_loss"]["weight"] == 0 for e in metrics["epochs"].values())  # the rest re-weighted


def test_pairs_set_each_heldout_original_beside_its_captions_samples(heldout_run: FakeRun, punks_dir: Path) -> None:
    page, doc = heldout_page(heldout_run)
    assert len(heldout_run.heldout) == 3
    section = page[page.index('id="heldout"') : page.index('id="originals"')]
    shown_table = section[: section.index("<details>")]
    rows = re.findall(r'<tr data-heldout="([^"]+)">(.*?)</tr>', shown_table, flags=re.S)
    assert [name for name, _ in rows] == heldout_run.heldout
    epoch = doc["recommendation"]["epoch"]
    assert epoch == 2 and "epoch 2 (recommended)" in section
    for name, row in rows:
        images = {alt: decode_png(b64) for b64, alt in HELD_IMG_RE.findall(row)}
        stem = Path(name).stem
        original = np.asarray(Image.open(punks_dir / name).convert("RGB"))
        assert np.array_equal(images[f"held-out original {name}"], original)  # the real image, pixel-exact
        assert np.array_equal(images[f"held-out {stem}: epoch {epoch}, seed 1"], heldout_run.heldout_arts[(epoch, name, 1)])
        assert len(images) == 2
        caption = (heldout_run.run_dir / "data" / "10_bespoke_punk" / f"{stem}.txt").read_text(encoding="utf-8").strip()
        assert str(escape(caption)) in row
    every = section[section.index("<details>") :]
    for (e, name, seed), art in heldout_run.heldout_arts.items():  # every epoch is one click away
        found = [decode_png(b64) for b64, alt in HELD_IMG_RE.findall(every) if alt == f"held-out {Path(name).stem}: epoch {e}, seed {seed}"]
        assert len(found) == 1 and np.array_equal(found[0], art)


def test_heldout_draws_are_not_rows_of_the_suite_grid(heldout_run: FakeRun) -> None:
    page, doc = heldout_page(heldout_run)
    grid = page[page.index('id="samples"') : page.index('id="heldout"')]
    assert "heldout-" not in grid and "held-out" not in grid
    assert len(re.findall(r'<th class="seed">', grid)) == len(heldout_run.prompt_ids) * len(heldout_run.seeds)
    assert {e["images"] for e in doc["epochs"].values()} == {6} and {e["heldout_images"] for e in doc["epochs"].values()} == {3}


def test_too_few_images_for_the_two_sample_test_is_said(heldout_run: FakeRun) -> None:
    page, doc = heldout_page(heldout_run)
    told = doc["epochs"]["2"]["distinguish"]
    assert told["accuracy"] is None and "at least 10 images of each kind" in told["problem"]
    section = page[page.index('id="evidence"') : page.index('id="samples"')]
    assert "at least 10 images of each kind (got 30 real, 9 generated)" in section
    assert doc["epochs"]["2"]["recommendation_parts"]["distinguish"]["weight"] == 0


def test_evidence_table_equals_metrics_json(heldout_run: FakeRun) -> None:
    page, doc = heldout_page(heldout_run)
    cells = re.findall(r'<td data-epoch="([^"]+)" data-part="([^"]+)">(?:<span class="value">([^<]*)</span>.*?<small>part ([^<· ]*)|<b>([^<]*)</b>)', page, flags=re.S)
    assert {(e, k) for e, k, *_ in cells} == {(e, k) for e in ("1", "2", "3") for k in ("style", "distinguish", "near_copies", "heldout_loss", "score")}
    for epoch, key, _value, part, total in cells:
        entry = doc["epochs"][epoch]
        if key == "score":
            assert total == fmt(entry["score"])
        else:
            assert part == fmt(entry["recommendation_parts"][key]["part"])
    assert doc["weights"] == {"style": 2.0, "distinguish": 2.0, "near_copies": 2.0, "heldout_loss": 1.0}


def test_recommendation_sentence_leads_the_page(heldout_run: FakeRun) -> None:
    page, doc = heldout_page(heldout_run)
    sentence = doc["recommendation"]["reasons"][0]
    assert sentence.startswith("Epoch 2: lowest held-out loss (0.25)") and "no near-copies" in sentence
    assert f'<p class="why">{escape(sentence)}</p>' in page
    assert "epoch 3 is not recommended: 100% of its outputs are near-copies of training images" in doc["recommendation"]["reasons"]


def test_two_sample_results_are_cached_per_epoch_in_metrics_json(small_run: FakeRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second report reuses each unchanged epoch's result; a changed epoch alone is measured again.

    The CNN itself is replaced by a counter here (the slow test below runs it for real, twice)."""
    from bespoke_kohya.report import evidence

    run = tmp_path / "run"
    build_fake_run(run, small_run.dataset_dir, size=192, heldout_seeds=2)
    calls: list[int] = []

    def counted(real: np.ndarray, generated: np.ndarray, groups: list[str]) -> dict:
        calls.append(len(generated))
        return {"accuracy": 0.5 + 0.01 * len(calls), "fold_accuracies": [0.5] * 5, "per_class": len(generated), "grouped": True, "problem": None}

    monkeypatch.setattr(evidence, "two_sample", counted)
    report.write_report(run)
    first = json.loads((run / "report" / "metrics.json").read_text(encoding="utf-8"))
    assert calls == [12, 12, 12]  # 6 suite + 3 held-out captions × 2 seeds, per epoch

    def refuse(*args: object) -> dict:
        raise AssertionError("an unchanged epoch was measured again")

    monkeypatch.setattr(evidence, "two_sample", refuse)
    report.write_report(run)
    again = json.loads((run / "report" / "metrics.json").read_text(encoding="utf-8"))
    assert again["epochs"] == first["epochs"] and again["recommendation"] == first["recommendation"]

    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(run / "samples" / "epoch-002" / "p01-s1.24.png")
    monkeypatch.setattr(evidence, "two_sample", counted)
    calls.clear()
    report.write_report(run)
    assert calls == [12]  # only epoch 2 changed
    changed = json.loads((run / "report" / "metrics.json").read_text(encoding="utf-8"))
    assert changed["epochs"]["1"]["distinguish"] == first["epochs"]["1"]["distinguish"]
    assert changed["epochs"]["2"]["distinguish"]["key"] != first["epochs"]["2"]["distinguish"]["key"]


@pytest.fixture(scope="module")
def measured_run(tmp_path_factory: pytest.TempPathFactory, punks_dir: Path) -> FakeRun:
    """All 184 punks, 18 held out, one seed per held-out caption: 24 outputs per epoch, enough for the real two-sample test."""
    fake = build_fake_run(tmp_path_factory.mktemp("measured") / "run", punks_dir, size=192, heldout_seeds=1, validation=VALIDATION)
    report.write_report(fake.run_dir)
    return fake


@pytest.mark.slow
def test_distinguishability_per_epoch_with_the_real_classifier(measured_run: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    from bespoke_kohya.report import evidence

    page, doc = heldout_page(measured_run)
    told = {e: doc["epochs"][e]["distinguish"] for e in ("1", "2", "3")}
    # 24 images per class: measured, but below MIN_CONFIDENT, so called uncertain on the page
    assert all(t["per_class"] == 24 and t["grouped"] and t["uncertain"] and 0.0 <= t["accuracy"] <= 1.0 for t in told.values())
    assert told["3"]["near_copy_share"] == 1.0 and told["2"]["near_copy_share"] == 0.0
    assert doc["recommendation"]["epoch"] == 2
    assert doc["recommendation"]["reasons"][0].startswith("Epoch 2: lowest held-out loss (0.25)")
    section = page[page.index('id="evidence"') : page.index('id="samples"')]
    for epoch, t in told.items():
        assert re.search(rf'data-epoch="{epoch}" data-part="distinguish"><span class="value">{re.escape(fmt(t["accuracy"]))}</span>', section)
    assert "real vs real 0.54, CryptoPunks vs Bespoke 0.99" in section  # the calibration, in the legend

    def refuse(*args: object) -> dict:
        raise AssertionError("an unchanged epoch was measured again")

    monkeypatch.setattr(evidence, "two_sample", refuse)
    report.write_report(measured_run.run_dir)
    page2, doc2 = heldout_page(measured_run)
    assert doc2["epochs"] == doc["epochs"] and doc2["recommendation"] == doc["recommendation"]
    assert re.sub(r"Generated \S+", "", page2) == re.sub(r"Generated \S+", "", page)  # the same page from cached numbers


# ------------------------------------------------------------------ incomplete and broken runs


def test_no_samples_yet(small_run: FakeRun, tmp_path: Path) -> None:
    run = copy_run(small_run, tmp_path)
    shutil.rmtree(run / "samples")
    page = report.write_report(run).read_text(encoding="utf-8")
    doc = json.loads((run / "report" / "metrics.json").read_text(encoding="utf-8"))
    assert f"no samples yet: run `bespoke-kohya sample --run {run}`" in page
    assert doc["epochs"] == {} and doc["recommendation"]["epoch"] is None
    assert "No epoch recommended" in page
    assert doc["reference"]["images"] > 0  # the originals are still scored


def test_epoch_without_samples_is_named(small_run: FakeRun, tmp_path: Path) -> None:
    run = copy_run(small_run, tmp_path)
    edit_json(run / "samples" / "samples.json", lambda d: d["epochs"].pop("2"))
    page = report.write_report(run).read_text(encoding="utf-8")
    doc = json.loads((run / "report" / "metrics.json").read_text(encoding="utf-8"))
    assert "epoch 2 has a checkpoint (checkpoints/bespoke-000002.safetensors) but no samples" in page
    assert set(doc["epochs"]) == {"1", "3"}
    assert page.count('title="not sampled yet"') == 6  # one hole per prompt × seed in epoch 2's column
    assert doc["recommendation"]["epoch"] != 3  # the memorised epoch is never the pick


def test_epoch_gap_is_named(small_run: FakeRun, tmp_path: Path) -> None:
    run = copy_run(small_run, tmp_path)
    edit_json(run / "run.json", lambda d: d["epochs"].pop("2"))
    edit_json(run / "samples" / "samples.json", lambda d: d["epochs"].pop("2"))
    page = report.write_report(run).read_text(encoding="utf-8")
    assert "epoch 2 is missing: run.json records no checkpoint for it" in page


def test_missing_sample_file_is_named(small_run: FakeRun, tmp_path: Path) -> None:
    run = copy_run(small_run, tmp_path)
    (run / "samples" / "epoch-001" / "p02-s1.24.png").unlink()
    page = report.write_report(run).read_text(encoding="utf-8")
    assert "epoch 1, p02 seed 1: samples/epoch-001/p02-s1.24.png is missing" in page


def test_failed_training_shows_cause_and_log_tail(small_run: FakeRun, tmp_path: Path) -> None:
    run = copy_run(small_run, tmp_path)

    def fail(d: dict) -> None:
        d["status"] = "failed"
        d["failure"] = {"cause": "CUDA out of memory while training epoch 3", "tail": ["step 400/609", "torch.OutOfMemoryError: <GPU 0> & more"]}

    edit_json(run / "run.json", fail)
    page = report.write_report(run).read_text(encoding="utf-8")
    assert "training failed: CUDA out of memory while training epoch 3" in page
    assert "torch.OutOfMemoryError: &lt;GPU 0&gt; &amp; more" in page  # the tail, escaped


@pytest.mark.parametrize(
    "status, expected",
    [
        ("running", "training is still running (3 epoch(s) recorded so far); run the report again when it finishes"),
        ("interrupted", "training was interrupted after 3 epoch(s); continue it with `bespoke-kohya train --resume {run}`"),
        ("rendered", "training has not run yet (status rendered): no checkpoints to compare"),
        ("finished", None),
    ],
)
def test_status_notices(status: str, expected: str | None, tmp_path: Path) -> None:
    record = {"status": status, "epochs": {"1": "c/a", "2": "c/b", "3": "c/c"}}
    notes = status_notices(record, tmp_path)
    assert [n.text for n in notes] == ([expected.format(run=tmp_path)] if expected else [])


def test_untrained_run_says_what_is_missing(small_run: FakeRun, tmp_path: Path) -> None:
    run = copy_run(small_run, tmp_path)
    for folder in ("samples", "checkpoints", "logs"):
        shutil.rmtree(run / folder)
    edit_json(run / "run.json", lambda d: d.update(status="dry-run", epochs={}))
    page = report.write_report(run).read_text(encoding="utf-8")
    doc = json.loads((run / "report" / "metrics.json").read_text(encoding="utf-8"))
    for text in ("training has not run yet (status dry-run)", "no samples yet: run `bespoke-kohya sample --run", "no loss log yet", "No loss values recorded"):
        assert text in page
    assert doc["epochs"] == {} and doc["recommendation"]["epoch"] is None


def test_base_model_column_is_shown_but_never_recommended(small_run: FakeRun, tmp_path: Path) -> None:
    run = copy_run(small_run, tmp_path)

    def add_base(d: dict) -> None:  # what `sample --include-base` records: epoch 0, no LoRA
        d["epochs"] = {"0": {**d["epochs"]["2"], "checkpoint": None, "sha256": None, "base_only": True}, **d["epochs"]}

    edit_json(run / "samples" / "samples.json", add_base)
    page = report.write_report(run).read_text(encoding="utf-8")
    doc = json.loads((run / "report" / "metrics.json").read_text(encoding="utf-8"))
    assert list(doc["epochs"]) == ["0", "1", "2", "3"]
    assert doc["verdicts"]["0"].startswith("base model without a LoRA")
    assert doc["recommendation"]["epoch"] == 2  # epoch 0 scores the same as 2, yet is not a candidate
    heads = re.findall(r'<th[^>]* data-epoch="(\d+)">([^<]+)', page)
    assert heads == [("0", "base model (no LoRA)"), ("1", "epoch 1"), ("2", "epoch 2 ★ recommended"), ("3", "epoch 3")]


def test_changed_checkpoint_marks_samples_stale(small_run: FakeRun, tmp_path: Path) -> None:
    run = copy_run(small_run, tmp_path)
    with open(run / "checkpoints" / "bespoke-000001.safetensors", "ab") as f:
        f.write(b"retrained")
    page = report.write_report(run).read_text(encoding="utf-8")
    assert "epoch 1: checkpoints/bespoke-000001.safetensors changed after these samples were made" in page


def test_prompts_are_escaped(small_run: FakeRun, tmp_path: Path) -> None:
    run = copy_run(small_run, tmp_path)
    evil = 'lad, <script>alert("x")</script> & "quotes"'

    def change(d: dict) -> None:
        d["prompts"][0]["prompt"] = evil
        for entry in d["epochs"].values():
            for img in entry["images"]:
                if img["prompt_id"] == "p01":
                    img["prompt"] = evil

    edit_json(run / "samples" / "samples.json", change)
    page = report.write_report(run).read_text(encoding="utf-8")
    assert "<script>" not in page
    assert "lad, &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &#34;quotes&#34;" in page  # markupsafe's spelling of quotes


def test_originals_come_from_the_runs_own_data_never_from_the_recorded_path(small_run: FakeRun, tmp_path: Path, punks_dir: Path) -> None:
    """A run from elsewhere can name any folder as its dataset: its images must never reach the mailable page (issue 26)."""
    run = copy_run(small_run, tmp_path)
    private = tmp_path / "someone else's pictures"
    private.mkdir()
    secret = np.zeros((24, 24, 3), np.uint8)
    secret[::2, ::2] = (255, 0, 255)
    Image.fromarray(secret).save(private / "secret.png")
    edit_json(run / "run.json", lambda d: d["dataset"].update(path=str(private)))
    prepared = sorted((run / "data" / "10_bespoke_punk").glob("*.png"))
    page = report.write_report(run).read_text(encoding="utf-8")
    doc = json.loads((run / "report" / "metrics.json").read_text(encoding="utf-8"))
    assert doc["reference"]["images"] == len(prepared)
    strip = page[page.index('id="originals"') : page.index('id="metrics"')]
    arrays = [decode_png(b64) for b64, _ in STRIP_RE.findall(strip)]
    assert arrays and all(np.array_equal(a, np.asarray(Image.open(p).convert("RGB").resize((24, 24), Image.NEAREST))) for a, p in zip(arrays, prepared))
    every_image = [decode_png(b64) for b64 in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]
    assert not any(a.shape == secret.shape and np.array_equal(a, secret) for a in every_image)


def test_a_run_without_its_data_has_no_reference_row(small_run: FakeRun, tmp_path: Path) -> None:
    run = copy_run(small_run, tmp_path)
    shutil.rmtree(run / "data")
    page = report.write_report(run).read_text(encoding="utf-8")
    assert "training images are missing" in page and "no reference row" in page


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no run.json"):
        report.write_report(tmp_path)
    with pytest.raises(UserError, match="no such run directory"):
        report.write_report(tmp_path / "nope")


def test_corrupt_samples_json_is_a_user_error(small_run: FakeRun, tmp_path: Path) -> None:
    run = copy_run(small_run, tmp_path)
    (run / "samples" / "samples.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match=r"samples\.json: not valid JSON .*bespoke-kohya sample --run"):
        report.write_report(run)


# ------------------------------------------------------------------ writing


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_rerun_rewrites_only_report(small_run: FakeRun, tmp_path: Path) -> None:
    run = copy_run(small_run, tmp_path)
    report.write_report(run)
    (run / "report" / "stale.txt").write_text("from an older report", encoding="utf-8")
    before = {k: v for k, v in tree_digest(run).items() if not k.startswith("report")}
    report.write_report(run)
    after = tree_digest(run)
    assert {k: v for k, v in after.items() if not k.startswith("report")} == before
    assert sorted(k for k in after if k.startswith("report")) == ["report/index.html", "report/metrics.json"]
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []  # no temp folders left


def test_failed_write_keeps_previous_report(small_run: FakeRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = copy_run(small_run, tmp_path)
    report.write_report(run)
    old = tree_digest(run / "report")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", boom)
    with pytest.raises(OSError, match="disk full"):
        report.write_report(run)
    monkeypatch.undo()
    assert tree_digest(run / "report") == old
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []


# ------------------------------------------------------------------ end to end with the real sampler


@pytest.mark.slow
def test_report_of_a_run_sampled_by_the_real_sampler(tmp_path: Path, punks_dir: Path) -> None:
    """Tiny random-weight SD1.5 + two kohya LoRAs → the kohya sampler's `sample_epochs` → report: the real samples.json format."""
    import torch

    from bespoke_kohya.engines.kohya import sampler as kohya
    from bespoke_kohya.engines.protocol import SampleJob
    from bespoke_kohya.postprocess import PostprocessOptions

    from tests.helpers.runs import write_training_images

    from tests.helpers.tiny_sd import build_tiny_sd15, write_kohya_lora

    base = build_tiny_sd15(tmp_path / "base")
    run = tmp_path / "run"
    loras = {e: write_kohya_lora(base, run / "checkpoints" / f"bespoke-{e:06d}.safetensors", seed=e, epoch=e) for e in (1, 2)}
    preset = validate_preset({
        "name": "tiny", "description": "tiny random SD1.5", "engine": "kohya", "family": "sd15",
        "kohya": {"pretrained_model_name_or_path": str(base), "resolution": 64, "output_name": "bespoke"},
        "sample": {"steps": 2, "width": 64, "height": 64, "seeds": [1, 2], "prompts": ["lad, green solid background", "lady, blonde hair"], "postprocess": "grid", "palette_max_delta_e": None},
    }, "test preset")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model gains nothing from two threads on a shared CPU
    try:
        pipe = kohya.load_base(preset, device="cpu")
        kohya.sample_epochs(pipe, [SampleJob(e, p) for e, p in loras.items()], preset.sample.full_prompts(), [1, 2], preset.sample, run / "samples",
                             size=(64, 64), negative_prompt="", postprocess_options=PostprocessOptions(method="grid"), progress=False)
    finally:
        torch.set_num_threads(threads)
    write_record(run, preset, punks_dir, {str(e): f"checkpoints/{p.name}" for e, p in loras.items()})
    write_training_images(run, preset, punks_dir)

    page = report.write_report(run).read_text(encoding="utf-8")
    doc = json.loads((run / "report" / "metrics.json").read_text(encoding="utf-8"))
    shown = {alt: b64 for b64, _w, _h, alt in IMG_RE.findall(page) if alt.startswith("epoch ")}
    assert len(shown) == 2 * 2 * 2
    for epoch in (1, 2):
        for pid in ("p01", "p02"):
            for seed in (1, 2):
                art = np.asarray(Image.open(run / "samples" / f"epoch-{epoch:03d}" / f"{pid}-s{seed}.24.png").convert("RGB"))
                assert np.array_equal(decode_png(shown[f"epoch {epoch}, {pid}, seed {seed}"]), art)
        entry = doc["epochs"][str(epoch)]
        assert entry["images"] == 4 and entry["score"] is not None
        # 64 px renders have under 3 px per art pixel: the grid metrics say "not applicable"
        assert entry["values"]["grid_alignment"] is None
    assert set(doc["verdicts"]) == {"1", "2"}
    assert "changed after these samples were made" not in page  # sha256 recorded by the sampler matches


# ------------------------------------------------------------------ the page is a template, shipped as package data


def test_report_modules_hold_no_markup() -> None:
    """HTML and CSS live only in report/templates/: no string in the report's Python looks like a tag or a style rule."""
    import ast

    tag = re.compile(r"<\s*/?\s*[a-zA-Z][a-zA-Z0-9]*(\s[^<>]*)?>|<!DOCTYPE", re.I)
    rule = re.compile(r"\{[^{}]*[a-z-]+\s*:[^{}]*\}|\b[a-z-]+\s*:\s*[#\w.%-]+;")  # a style rule, or `name:value;` as in a style attribute
    package = Path(report.__file__).parent
    modules = sorted(package.glob("*.py"))
    assert {p.name for p in modules} >= {"__init__.py", "collect.py", "score.py", "plot.py", "page.py", "compare.py"}
    for path in modules:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(n.body[0].value) for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body and isinstance(n.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                assert not tag.search(node.value) and not rule.search(node.value), f"{path.name}:{node.lineno}: {node.value[:80]!r}"
    assert sorted(p.name for p in (package / "templates").iterdir()) == ["compare.css", "compare.html.j2", "report.css", "report.html.j2"]


@pytest.mark.slow
def test_template_and_css_ship_in_the_wheel(small_run: FakeRun, tmp_path: Path) -> None:
    """A wheel built from this checkout renders the page from its own copy of the template and CSS."""
    import subprocess
    import sys
    import zipfile

    from bespoke_kohya.bundle.build import build_wheel

    wheel = build_wheel(Path(report.__file__).resolve().parents[2], tmp_path / "dist")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        zf.extractall(tmp_path / "site")
    assert {"bespoke_kohya/report/templates/report.html.j2", "bespoke_kohya/report/templates/report.css"} <= set(names)
    run = copy_run(small_run, tmp_path)
    code = "import sys; from bespoke_kohya import report; print(report.__file__); report.write_report(sys.argv[1])"
    done = subprocess.run([sys.executable, "-c", code, str(run)], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path / "site")}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(tmp_path / "site"))
    page = (run / "report" / "index.html").read_text(encoding="utf-8")
    css = (tmp_path / "site" / "bespoke_kohya" / "report" / "templates" / "report.css").read_text(encoding="utf-8")
    assert css.strip() in page and "image-rendering:pixelated" in css


def test_sample_paths_outside_the_run_are_not_read_or_embedded(small_run: FakeRun, tmp_path: Path) -> None:
    """Issue 12: samples.json may name files outside the run (absolute, `..`); the report embedded any such PNG.
    They are now refused cell by cell with a notice, and nothing outside the run is read."""
    run = copy_run(small_run, tmp_path)
    secret = tmp_path / "secret.png"
    Image.new("RGB", (24, 24), (1, 2, 3)).save(secret)

    def point_outside(doc: dict) -> None:
        first, second = doc["epochs"]["1"]["images"][:2]
        first["art"] = first["full"] = str(secret)
        second["art"] = "../secret.png"

    edit_json(run / "samples" / "samples.json", point_outside)
    page = report.write_report(run).read_text(encoding="utf-8")
    assert f"{secret} is outside the run folder, so it is not shown" in page
    assert "../secret.png is outside the run folder, so it is not shown" in page
    assert base64.b64encode(secret.read_bytes()).decode() not in page and secret.as_uri() not in page
