"""`reproduce`: the documented six-step checklist as one command with a pass/fail table.

1 upscale · 2 config (+ training) · 3 epoch · 4 generate · 5 downscale · 6 verify.
Each step is checked and recorded with evidence; a step that cannot run here is
`skipped` with the reason and the command that would make it run; a step that
does not apply to the engine is `n/a`. Exit status: 0 all applicable steps
passed, 3 some were skipped, 1 a step failed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from .dataset import DatasetReport
from .engines import get_engine
from .images import flatten_alpha, open_image, parse_hex_colour
from .paths import ART
from .runfolder import epoch_folder, write_reproduce_document
from .settings import Preset

DOCUMENTED_EPOCH = 2

PASS, FAIL, SKIPPED, NA = "pass", "fail", "skipped", "n/a"
STEP_NAMES = {1: "upscale", 2: "config", 3: "epoch", 4: "generate", 5: "downscale", 6: "verify"}


@dataclass
class Step:
    """One row of the checklist table."""

    step: int
    name: str
    check: str
    status: str
    evidence: str = ""
    reason: str = ""
    command: str = ""


@dataclass
class Checklist:
    """The table, and where it was written."""

    steps: list[Step] = field(default_factory=list)

    def add(self, step: int, check: str, status: str, evidence: str = "", reason: str = "", command: str = "") -> Step:
        row = Step(step, STEP_NAMES[step], check, status, evidence, reason, command)
        self.steps.append(row)
        return row

    @property
    def exit_code(self) -> int:
        statuses = {s.status for s in self.steps}
        if FAIL in statuses:
            return 1
        if SKIPPED in statuses:
            return 3
        return 0

    def to_dict(self) -> dict[str, Any]:
        return {"steps": [asdict(s) for s in self.steps], "exit_code": self.exit_code}

    def write(self, run_dir: Path) -> None:
        write_reproduce_document(run_dir, self.to_dict())


# ------------------------------------------------------------------ step checks (pure)


def check_upscale(report: DatasetReport, prepared_folder: Path, background: str) -> tuple[bool, str]:
    """Every prepared image, downscaled with NEAREST, equals its original pixel for pixel."""
    bg = parse_hex_colour(background)
    exact, bad = 0, []
    for info in report.images:
        original = np.asarray(flatten_alpha(open_image(info.path), bg))
        prepared = open_image(prepared_folder / f"{info.name}.png").convert("RGB")
        back = np.asarray(prepared.resize(original.shape[1::-1], Image.NEAREST))
        if back.shape == original.shape and (back == original).all():
            exact += 1
        else:
            bad.append(info.name)
    size = open_image(prepared_folder / f"{report.images[0].name}.png").size
    evidence = f"{exact}/{len(report.images)} prepared {size[0]}x{size[1]} images downscale (NEAREST) to their originals exactly"
    if bad:
        evidence += f"; differ: {', '.join(bad[:5])}"
    return not bad, evidence


def heldout_note(preset: Preset, heldout: list[str] | None) -> str:
    """The recipe's one stated departure, when it is on: images held out of training for the validation loss."""
    if not heldout:
        return ""
    return (f"; apart from the recipe, {len(heldout)} image(s) held out of training for a validation loss "
            f"(dataset.validation_split={preset.dataset.validation_split}; 0 trains on all, as documented)")


def format_table(checklist: Checklist) -> tuple[list[tuple[str, str, str, str, str]], list[str]]:
    """Rows (step, check, status, evidence, reason) for printing, and the commands to show once below the table.

    Several skipped steps share one long command; each row points at it as ``[n]`` and
    the n-th command line is ``[n] <command>``.
    """
    commands = list(dict.fromkeys(s.command for s in checklist.steps if s.command))
    rows = []
    for s in checklist.steps:
        note = s.reason + (f" → run [{commands.index(s.command) + 1}] below" if s.command else "")
        rows.append((f"{s.step} {s.name}", s.check, s.status, s.evidence, note))
    return rows, [f"[{i}] {command}" for i, command in enumerate(commands, 1)]


Runner = Callable[..., Any]


# ------------------------------------------------------------------ the runner


@dataclass(frozen=True)
class ReproduceOptions:
    """`bespoke-kohya reproduce` as typed values."""

    preset: str = "sd15_512"
    overrides: list[str] = field(default_factory=list)
    experimental: bool = False
    dataset: Path | None = None
    run_dir: Path | None = None
    cpu: bool = False
    device: str | None = None


def run_checklist(options: ReproduceOptions, console: Any, err_console: Any) -> tuple[Checklist, Path]:
    """Run the six steps for ``options.preset``; returns the checklist (also written to RUN/reproduce.json) and the run."""
    from dataclasses import replace

    from .dataset import check_dataset
    from .engines.protocol import TrainOptions
    from .engines.session import new_run, resolve_dataset

    train_options = TrainOptions(preset=options.preset, overrides=list(options.overrides), experimental=options.experimental, cpu=options.cpu,
                                 dataset=options.dataset, run_dir=options.run_dir)
    # A dry run's preset: the machine is checked below, as blockers, so that steps 1 and 2 run anywhere.
    run, prepared = new_run(replace(train_options, dry_run=True), console, err_console, prefix="reproduce-")
    run_dir = run.dir
    preset = run.record.preset_model(run_dir)
    # The dataset the user named (or the default new_run found), never the path run.json records: that is only shown.
    report = check_dataset(resolve_dataset(options.dataset, preset, console), preset.dataset.caption_extension)
    checklist = Checklist()
    engine = get_engine(preset.engine)
    upscales = preset.resolution != ART

    # 1 upscale
    ok, evidence = check_upscale(report, prepared, preset.dataset.alpha_background)
    if upscales:
        checklist.add(1, "prepared images are NEAREST upscales (downscaled back = originals)", PASS if ok else FAIL, evidence)
    else:
        checklist.add(1, "prepared images equal the originals", NA if ok else FAIL, evidence.replace("downscale (NEAREST) to", "equal"), reason=f"{preset.engine} trains at 24x24: there is no upscale to check" if ok else "")

    # 2 config, then training
    recipe = engine.recipe_check(preset)
    if recipe is None:
        checklist.add(2, "rendered preset equals the validated preset file", PASS, f"config/preset.json: {len(preset.model_dump())} sections, overrides: {', '.join(run.record.overrides) or 'none'}")
    else:
        checklist.add(
            2, recipe.what, FAIL if recipe.differences else PASS,
            ("; ".join(recipe.differences) if recipe.differences else recipe.evidence) + heldout_note(preset, run.record.dataset.heldout),
            reason="differs from the documented recipe" if recipe.differences else "",
        )
    config_row = checklist.steps[-1]
    blockers = engine.blockers(preset, options.cpu)
    if blockers:
        # The config check passed or failed on its own; training is what could not run here.
        config_row.reason = "; ".join(filter(None, [config_row.reason, "training not launched: " + "; ".join(b.reason for b in blockers)]))
        config_row.command = "; ".join(dict.fromkeys(b.fix for b in blockers))
        return _finish(checklist, run_dir, trained=False)
    code = _train(run, train_options, console, err_console)
    epochs = run.record.checkpoints()
    config_row.evidence += f"; trained: status {run.record.status}, epochs {sorted(epochs)} in checkpoints/"
    if code != 0 or not epochs:
        config_row.status = FAIL
        config_row.reason = f"training failed (exit status {code}); see logs/train.log"
        return _finish(checklist, run_dir, trained=False)
    return _after_training(checklist, preset, run_dir, epochs, options)


def _train(run: Any, options: Any, console: Any, err_console: Any) -> int:
    """Train the new run as `train --resume` would, with the same messages; returns its exit status."""
    from .engines.session import finish_message, start_session, train_run
    from .progress import TrainProgress

    session = start_session(run, options)
    with TrainProgress(console) as view:
        outcome = train_run(run, session, options, view.update)
    return finish_message(run, outcome, console, err_console)


def _after_training(checklist: Checklist, preset: Preset, run_dir: Path, epochs: dict[int, str], options: ReproduceOptions) -> tuple[Checklist, Path]:
    """Steps 3-6 once checkpoints exist: sample, downscale both ways, score, report."""
    from .report import report_summary, write_report
    from .sample import sample_run

    chosen = DOCUMENTED_EPOCH if DOCUMENTED_EPOCH in epochs else max(epochs)
    # 4 generate (every epoch, so the report can recommend one; the documented epoch is the evidence)
    try:
        doc = sample_run(run_dir, device=options.device, dataset_dir=options.dataset, progress=True)
    except Exception as exc:  # noqa: BLE001 - recorded as the step's failure
        checklist.add(4, f"generate with epoch {chosen}", FAIL, "", reason=f"{exc.__class__.__name__}: {exc}")
        return _finish(checklist, run_dir, trained=True)
    images = (doc.get("epochs", {}).get(str(chosen)) or {}).get("images", [])
    width, height = preset.sample_size
    checklist.add(4, f"generate at {width}x{height} with epoch {chosen}'s checkpoint", PASS if images else FAIL, f"{len(images)} images in samples/{epoch_folder(chosen)}/")

    # 5 downscale
    if (width, height) == (ART, ART):
        checklist.add(5, "downscale to 24x24 (NEAREST and grid)", NA, "samples are 24x24 already", reason=f"{preset.engine} generates at 24x24: nothing to downscale")
    else:
        checklist.add(5, *_downscale_both(run_dir, chosen, images))

    # 6 verify, then 3 epoch (the recommendation needs every epoch's metrics)
    try:
        page = write_report(run_dir)
        summary = report_summary(run_dir)
    except Exception as exc:  # noqa: BLE001
        checklist.add(6, "score against the originals and write the report", FAIL, "", reason=f"{exc.__class__.__name__}: {exc}")
        return _finish(checklist, run_dir, trained=True)
    recommended = summary.get("recommended_epoch")
    verdict = (summary.get("verdicts") or {}).get(str(chosen)) or (summary.get("verdicts") or {}).get(chosen, "")
    checklist.add(3, f"take epoch {DOCUMENTED_EPOCH} as documented", PASS if chosen == DOCUMENTED_EPOCH else FAIL, f"epoch {chosen}: {epochs[chosen]}; report recommends epoch {recommended}", reason="" if chosen == DOCUMENTED_EPOCH else f"the run has no epoch {DOCUMENTED_EPOCH}")
    checklist.add(6, "score with the report's metrics against the originals", PASS, f"{verdict} — report: {page.relative_to(run_dir)}")
    return _finish(checklist, run_dir, trained=True)


def _downscale_both(run_dir: Path, epoch: int, images: list[dict[str, Any]]) -> tuple[str, str, str]:
    """Downscale the chosen epoch's full-size samples with NEAREST and with the grid method, keeping both."""
    from .postprocess import PostprocessOptions, postprocess_files

    fulls = [run_dir / "samples" / img["full"] if not str(img["full"]).startswith("samples/") else run_dir / img["full"] for img in images]
    fulls = [p for p in fulls if p.is_file()]
    if not fulls:
        return ("downscale to 24x24 (NEAREST and grid)", FAIL, "no full-size samples found")
    out = run_dir / "reproduce" / epoch_folder(epoch)
    nearest = postprocess_files(fulls, out / "nearest", PostprocessOptions(method="nearest"), progress=False)
    grid = postprocess_files(fulls, out / "grid", PostprocessOptions(method="grid"), progress=False)
    same = 0.0
    for a, b in zip(nearest, grid):
        pa = np.asarray(Image.open(a["output"]).convert("RGB"))
        pb = np.asarray(Image.open(b["output"]).convert("RGB"))
        same += float((pa == pb).all(axis=-1).mean())
    return ("downscale to 24x24 with NEAREST (documented) and grid, both kept", PASS, f"{len(nearest)}+{len(grid)} images in reproduce/{epoch_folder(epoch)}/{{nearest,grid}}; methods agree on {same / len(nearest):.0%} of pixels")


def _finish(checklist: Checklist, run_dir: Path, trained: bool) -> tuple[Checklist, Path]:
    """Mark the steps that never ran as skipped, sort, write RUN/reproduce.json."""
    done = {s.step for s in checklist.steps}
    why = "needs trained checkpoints (training did not run)" if not trained else "an earlier step failed"
    then = f"bespoke-kohya train --resume {run_dir} && bespoke-kohya sample --run {run_dir} && bespoke-kohya report --run {run_dir}"
    for step in range(3, 7):
        if step not in done:
            checklist.add(step, {3: f"take epoch {DOCUMENTED_EPOCH}", 4: "generate with that epoch", 5: "downscale to 24x24", 6: "score and report"}[step], SKIPPED, "", reason=why, command=then if not trained else "")
    checklist.steps.sort(key=lambda s: s.step)
    checklist.write(run_dir)
    if (run_dir / "report" / "index.html").is_file():
        from .report import write_report

        write_report(run_dir)  # again, so the page shows the finished table
    return checklist, run_dir
