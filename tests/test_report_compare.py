"""`report --compare`: runs side by side, on fake runs built from real punks (tests/helpers/fake_run.py).

Each fake run's epoch 1 is degraded, epoch 2 clean new punks (what its report recommends),
epoch 3 copies. The second run differs in its learning rate and overrides; tests that need
another difference (dataset, prompts, a missing epoch) change a copy through the run contract.
"""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from bespoke_kohya import cli
from bespoke_kohya.errors import UserError
from bespoke_kohya.report import build
from bespoke_kohya.report.compare import ABSENT, parse_spec, settings_diff, write_compare
from bespoke_kohya.runfolder.records import read_run, read_samples, write_run, write_samples

from tests.helpers.fake_run import PROMPTS, SEEDS, FakeRun, build_fake_run
from tests.test_report import decode_png

IMG_RE = re.compile(r'<img class="px" src="data:image/png;base64,([A-Za-z0-9+/=]+)" width="96" height="96" alt="([^"]*)">')
CELL_RE = re.compile(r'<td data-run="(\d+)" data-metric="([^"]+)"(?: class="best")?>([^<]*)')
DIFF_RE = re.compile(r'<tr data-key="([^"]+)"><th class="key">[^<]*</th>((?:<td data-run="\d+">[^<]*</td>)+)</tr>')
VALUE_RE = re.compile(r'<td data-run="\d+">([^<]*)</td>')


def settings_rows(page: str) -> dict[str, list[str]]:
    """The page's "settings that differ" table: key → each run's value as shown."""
    return {key: [html.unescape(v) for v in VALUE_RE.findall(tds)] for key, tds in DIFF_RE.findall(page)}


def change_record(run_dir: Path, **changes: object) -> None:
    """Rewrite run.json through the contract with ``changes`` (dotted keys reach into resolved / dataset)."""
    record = read_run(run_dir)
    for key, value in changes.items():
        if key.startswith("resolved."):
            section, name = key.split(".")[1:]
            record.resolved[section][name] = value
        elif key.startswith("dataset."):
            setattr(record.dataset, key.split(".", 1)[1], value)
        else:
            setattr(record, key, value)
    write_run(run_dir, record)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, punks_dir: Path) -> tuple[FakeRun, FakeRun]:
    """Two finished fake runs on the same dataset; B trained with another learning rate."""
    root = tmp_path_factory.mktemp("compare")
    a = build_fake_run(root / "runs" / "sd15_512-a", punks_dir, size=96)
    b = build_fake_run(root / "runs" / "sd15_512-b", punks_dir, size=96)
    change_record(b.run_dir, **{"resolved.kohya.learning_rate": 2e-4, "overrides": ["sample.postprocess=nearest", "kohya.learning_rate=2e-4"]})
    return a, b


@pytest.fixture(scope="module")
def compared(runs: tuple[FakeRun, FakeRun], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict]:
    a, b = runs
    result = write_compare([str(a.run_dir), str(b.run_dir)], tmp_path_factory.mktemp("out") / "cmp")
    return result.page, result.page.read_text(encoding="utf-8"), json.loads((result.page.parent / "compare.json").read_text(encoding="utf-8"))


def copy_run(fake: FakeRun, dest: Path) -> Path:
    shutil.copytree(fake.run_dir, dest)
    return dest


# ------------------------------------------------------------------ naming runs and epochs


def test_only_a_trailing_colon_number_is_an_epoch(tmp_path: Path) -> None:
    assert parse_spec("runs/a:3") == (Path("runs/a"), 3)
    assert parse_spec("runs/a") == (Path("runs/a"), None)
    assert parse_spec("runs/x:y:12") == (Path("runs/x:y"), 12)
    assert parse_spec("runs/a:b") == (Path("runs/a:b"), None)
    odd = tmp_path / "run:7"
    odd.mkdir()
    assert parse_spec(str(odd)) == (odd, None)  # an existing folder is a run, whatever its name ends in
    assert parse_spec(f"{odd}:2") == (odd, 2)


# ------------------------------------------------------------------ settings that differ


def test_settings_diff_lists_only_keys_whose_values_differ() -> None:
    one = {"preset": "pixel24", "overrides": [], "resolved": {"name": "pixel24", "resolution": 24, "pixel24": {"steps": 40, "base": "standin"}, "kohya": None}}
    two = {"preset": "pixel24", "overrides": ["pixel24.steps=80"], "resolved": {"name": "pixel24", "resolution": 24, "pixel24": {"steps": 80, "base": "standin"}, "kohya": None}}
    three = {"preset": "sd15_512", "overrides": [], "resolved": {"name": "sd15_512", "resolution": 512, "kohya": {"learning_rate": 1e-4}}}
    assert settings_diff([one, two]) == [("overrides", [[], ["pixel24.steps=80"]]), ("pixel24.steps", [40, 80])]
    diff = dict(settings_diff([one, three]))
    assert diff["preset"] == ["pixel24", "sd15_512"] and diff["resolution"] == [24, 512]
    assert diff["kohya"] == [None, ABSENT] and diff["kohya.learning_rate"] == [ABSENT, 1e-4]  # a section one engine lacks
    assert diff["pixel24.steps"] == [40, ABSENT]
    assert settings_diff([one, dict(one)]) == []


# ------------------------------------------------------------------ the page


def test_grid_shows_each_runs_recommended_epoch_pixel_exact(runs: tuple[FakeRun, FakeRun], compared: tuple[Path, str, dict]) -> None:
    _, page, doc = compared
    assert [r["epoch"] for r in doc["runs"]] == [2, 2] and not any(r["chosen"] for r in doc["runs"])
    assert [r["recommended_epoch"] for r in doc["runs"]] == [2, 2]
    shown = IMG_RE.findall(page)
    pairs = [(p, s) for p in PROMPTS for s in SEEDS]
    assert len(shown) == 2 * len(pairs)  # rows = prompt × seed, columns = runs, in that order
    for i, (b64, alt) in enumerate(shown):
        fake = runs[i % 2]
        pid = fake.prompt_ids[(i // 2) // len(SEEDS)]
        seed = SEEDS[(i // 2) % len(SEEDS)]
        assert alt == f"{fake.run_dir.name}, epoch 2, seed {seed}"
        np.testing.assert_array_equal(decode_png(b64), fake.arts[(2, pid, seed)])
    assert len(doc["pairs"]) == len(pairs) and doc["pairs"][0]["seed"] == SEEDS[0]
    assert "image-rendering:pixelated" in page and "<script" not in page and "http://" not in page and "https://" not in page


def test_metrics_table_has_a_column_per_run_with_its_reports_values(runs: tuple[FakeRun, FakeRun], compared: tuple[Path, str, dict]) -> None:
    _, page, doc = compared
    cells = {(int(run), key): text.strip() for run, key, text in CELL_RE.findall(page)}
    for i, fake in enumerate(runs):
        _, metrics = build(fake.run_dir)
        entry = metrics["epochs"]["2"]
        assert doc["runs"][i]["metrics"]["values"] == entry["values"]
        assert cells[i, "score"] == format(entry["score"], ".6g")
        for key, value in entry["values"].items():
            assert cells[i, key].split(" ")[0] == ("–" if value is None else format(value, ".6g")), key
        assert cells[i, "near_copies"] == str(len(entry["copies"]))


def test_settings_that_differ_are_listed_with_each_runs_value(compared: tuple[Path, str, dict]) -> None:
    _, page, doc = compared
    rows = settings_rows(page)
    assert rows == {"overrides": ['["sample.postprocess=nearest"]', '["sample.postprocess=nearest", "kohya.learning_rate=2e-4"]'], "kohya.learning_rate": ["0.0001", "0.0002"]}
    assert [d["key"] for d in doc["settings_differ"]] == ["overrides", "kohya.learning_rate"]
    assert doc["dataset_warning"] is None and 'id="dataset-warning"' not in page


def test_chosen_epochs_of_one_run_compare_and_the_same_epoch_twice_is_refused(runs: tuple[FakeRun, FakeRun], tmp_path: Path) -> None:
    a, _ = runs
    result = write_compare([f"{a.run_dir}:1", f"{a.run_dir}:3"], tmp_path / "epochs")
    doc = json.loads((tmp_path / "epochs" / "compare.json").read_text(encoding="utf-8"))
    assert [(r["epoch"], r["chosen"]) for r in doc["runs"]] == [(1, True), (3, True)] and doc["settings_differ"] == []
    page = result.page.read_text(encoding="utf-8")
    arts = [decode_png(b64) for b64, _ in IMG_RE.findall(page)]
    np.testing.assert_array_equal(arts[1], a.arts[(3, a.prompt_ids[0], SEEDS[0])])
    with pytest.raises(UserError, match=r"sd15_512-a:2: epoch 2 of this run is already compared \(as .*sd15_512-a\); give another epoch"):
        write_compare([str(a.run_dir), f"{a.run_dir}:2"], tmp_path / "twice")
    assert not (tmp_path / "twice").exists()


def test_different_or_unknown_datasets_are_warned_about(runs: tuple[FakeRun, FakeRun], tmp_path: Path) -> None:
    a, b = runs
    other = copy_run(b, tmp_path / "other")
    change_record(other, **{"dataset.content_hash": "f" * 64})
    page = write_compare([str(a.run_dir), str(other)], tmp_path / "cmp").page.read_text(encoding="utf-8")
    assert re.search(r'id="dataset-warning">the runs were trained on different datasets \(.*hash 000000000000; .*hash ffffffffffff\)', page)
    change_record(other, **{"dataset.content_hash": None})
    result = write_compare([str(a.run_dir), str(other)], tmp_path / "cmp2")
    assert result.warnings == [f"{other} records no dataset hash in run.json, so whether the runs were trained on the same images is unknown; each run's metrics compare against its own training set"]


# ------------------------------------------------------------------ refusals, one line each


def one_line(exc: pytest.ExceptionInfo[UserError]) -> str:
    assert "\n" not in str(exc.value)
    return str(exc.value)


def test_one_run_is_refused(runs: tuple[FakeRun, FakeRun], tmp_path: Path) -> None:
    with pytest.raises(UserError) as exc:
        write_compare([str(runs[0].run_dir)], tmp_path / "x")
    assert one_line(exc) == f"report --compare needs at least two runs (RUN or RUN:EPOCH), got 1; for the epochs of one run use `bespoke-kohya report --run {runs[0].run_dir}`"


def test_a_run_without_samples_is_named_with_the_fix(runs: tuple[FakeRun, FakeRun], punks_dir: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    build_fake_run(bare, punks_dir, size=96, with_samples=False)
    with pytest.raises(UserError) as exc:
        write_compare([str(runs[0].run_dir), str(bare)], tmp_path / "x")
    assert one_line(exc) == f"{bare}: the run has no samples yet; run `bespoke-kohya sample --run {bare}` first"


def test_an_epoch_the_run_lacks_or_never_sampled_is_named(runs: tuple[FakeRun, FakeRun], punks_dir: Path, tmp_path: Path) -> None:
    a, b = runs
    with pytest.raises(UserError) as exc:
        write_compare([str(a.run_dir), f"{b.run_dir}:9"], tmp_path / "x")
    assert one_line(exc) == f"{b.run_dir}:9: the run has no epoch 9; pick one of the sampled epochs: 1, 2, 3"
    gap = tmp_path / "gap"
    build_fake_run(gap, punks_dir, size=96, skip_sample_epochs=(3,))
    with pytest.raises(UserError) as exc:
        write_compare([str(a.run_dir), f"{gap}:3"], tmp_path / "x")
    assert one_line(exc) == f"{gap}:3: epoch 3 has no readable samples; run `bespoke-kohya sample --run {gap} --epochs 3` first"
    with pytest.raises(UserError) as exc:
        write_compare([str(a.run_dir), f"{gap}:0"], tmp_path / "x")
    assert one_line(exc) == f"{gap}:0: the base model (epoch 0) was not sampled; run `bespoke-kohya sample --run {gap} --include-base` first"
    assert not (tmp_path / "x").exists()


def test_runs_sharing_no_prompt_and_seed_say_how_to_draw_one_suite(runs: tuple[FakeRun, FakeRun], tmp_path: Path) -> None:
    a, b = runs
    other = copy_run(b, tmp_path / "reseeded")
    samples = read_samples(other)
    assert samples is not None
    samples.seeds = [7, 8]
    for epoch in samples.epochs.values():
        for image in epoch.images:
            image.seed += 6
    write_samples(other, samples)
    with pytest.raises(UserError) as exc:
        write_compare([str(a.run_dir), str(other)], tmp_path / "x")
    assert one_line(exc).startswith(f"{a.run_dir} and {other} share no prompt × seed at the compared epochs; draw one suite in every run, e.g. `bespoke-kohya sample --run RUN --prompts prompts.txt --seeds 1,2`")


def test_pairs_match_by_prompt_text_not_by_id(runs: tuple[FakeRun, FakeRun], tmp_path: Path) -> None:
    """A run whose suite lists the same prompts in another order shows each prompt on its own row."""
    a, b = runs
    other = copy_run(b, tmp_path / "reordered")
    samples = read_samples(other)
    assert samples is not None and samples.prompts is not None
    first, second = samples.prompts[0]["prompt"], samples.prompts[1]["prompt"]
    samples.prompts[0]["prompt"], samples.prompts[1]["prompt"] = second, first
    for epoch in samples.epochs.values():
        for image in epoch.images:
            image.prompt = {first: second, second: first}.get(image.prompt, image.prompt)
    write_samples(other, samples)
    page = write_compare([str(a.run_dir), str(other)], tmp_path / "cmp").page.read_text(encoding="utf-8")
    shown = [decode_png(b64) for b64, _ in IMG_RE.findall(page)]
    # Row 1 is a's p01 (first prompt, seed 1); beside it, the reordered run's p02 image.
    np.testing.assert_array_equal(shown[0], a.arts[(2, "p01", SEEDS[0])])
    np.testing.assert_array_equal(shown[1], b.arts[(2, "p02", SEEDS[0])])


def test_out_is_never_overwritten_and_the_default_is_a_new_folder_beside_the_first_run(runs: tuple[FakeRun, FakeRun], tmp_path: Path) -> None:
    a, b = runs
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(UserError) as exc:
        write_compare([str(a.run_dir), str(b.run_dir)], taken)
    assert one_line(exc) == f"{taken} already exists; give a new folder with --out (a comparison never overwrites one)"
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    first = write_compare([str(a.run_dir), str(b.run_dir)]).page.parent
    second = write_compare([str(a.run_dir), str(b.run_dir)]).page.parent
    try:
        assert first.parent == second.parent == a.run_dir.parent and first != second
        assert first.name.startswith("compare-") and sorted(p.name for p in first.iterdir()) == ["compare.json", "index.html"]
        assert not [p for p in a.run_dir.parent.iterdir() if p.name.startswith(".")]  # no partial folder left behind
    finally:
        shutil.rmtree(first)
        shutil.rmtree(second)


# ------------------------------------------------------------------ the command line


def test_cli_compare_prints_the_page_and_refuses_in_one_line(runs: tuple[FakeRun, FakeRun], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = runs
    assert cli.main(["report", "--compare", str(a.run_dir), f"{b.run_dir}:3", "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert f"comparison {tmp_path / 'c' / 'index.html'}" in out
    assert f"{a.run_dir}: epoch 2 (recommended)" in out and f"{b.run_dir}:3: epoch 3 (chosen)" in out
    assert f"{len(PROMPTS) * len(SEEDS)} prompt × seed pair(s) in common; 2 setting(s) differ" in out
    assert cli.main(["report", "--compare", str(a.run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: report --compare needs at least two runs") and len(err.strip().splitlines()) == 1
    assert cli.main(["report", "--run", str(a.run_dir), "--out", str(tmp_path / "d")]) == 2
    assert "--out goes with --compare" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["report", "--run", str(a.run_dir), "--compare", str(a.run_dir), str(b.run_dir)])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
