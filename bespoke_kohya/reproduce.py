"""`reproduce`: the documented six-step checklist as one command with a pass/fail table.

1 upscale · 2 config (+ training) · 3 epoch · 4 generate · 5 downscale · 6 verify.
Each step is checked and recorded with evidence; a step that cannot run here is
`skipped` with the reason and the command that would make it run; a step that
does not apply to the engine is `n/a`. Exit status: 0 all applicable steps
passed, 3 some were skipped, 1 a step failed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from .dataset import DatasetReport
from .images import flatten_alpha, open_image, parse_hex_colour
from .presets import Preset
from .render import train_args

# The training arguments exactly as the user's notes document them (background notes).
DOCUMENTED_ARGS: dict[str, Any] = {
    "pretrained_model_name_or_path": "runwayml/stable-diffusion-v1-5",
    "resolution": "512,512",
    "network_dim": 32,
    "network_alpha": 16.0,
    "max_train_epochs": 3,
    "learning_rate": 1e-4,
    "unet_lr": 1e-4,
    "text_encoder_lr": 5e-5,
    "lr_scheduler": "cosine_with_restarts",
    "lr_scheduler_num_cycles": 3,
    "optimizer_type": "AdamW",
    "mixed_precision": "fp16",
    "noise_offset": 0.1,
    "min_snr_gamma": 5.0,
}
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

    def write(self, path: Path) -> None:
        from .train import write_json_atomic

        write_json_atomic(path, self.to_dict())


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


def config_differences(preset: Preset, documented: dict[str, Any] = DOCUMENTED_ARGS) -> list[str]:
    """Documented keys whose rendered value differs (or is missing), as `key: documented → rendered`."""
    rendered = {k: v for section in train_args(preset).values() for k, v in section.items()}
    diffs = []
    for key, want in documented.items():
        got = rendered.get(key, "<missing>")
        if got != want:
            diffs.append(f"{key}: {want!r} → {got!r}")
    return diffs


def format_table(checklist: Checklist) -> list[tuple[str, str, str, str, str]]:
    """Rows (step, check, status, evidence, reason/command) for printing."""
    rows = []
    for s in checklist.steps:
        note = s.reason + (f" → run: {s.command}" if s.command else "")
        rows.append((f"{s.step} {s.name}", s.check, s.status, s.evidence, note))
    return rows


def load_table(run_dir: Path) -> dict[str, Any] | None:
    """A run's reproduce.json, if any (the report shows it)."""
    path = run_dir / "reproduce.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


Runner = Callable[..., Any]


# ------------------------------------------------------------------ the runner


def _training_blockers(preset: Preset, cpu: bool) -> list[tuple[str, str]]:
    """(reason, what fixes it) for each thing that keeps a kohya run from training here: the pre-flight's failures."""
    from .preflight import Level, Plan, run_checks
    from .train import REPO_ROOT, RUNS_DIR

    plan = Plan.from_resolved(preset.model_dump(mode="json"))
    if plan is None:
        return []
    return [(c.cause, c.fix) for c in run_checks(plan, repo_root=REPO_ROOT, run_dir=RUNS_DIR, images=0, cpu=cpu) if c.level is Level.FAIL]


def run_checklist(args: Any, console: Any, err_console: Any) -> tuple[Checklist, Path]:
    """Run the six steps for ``args.preset``; returns the checklist (also written to RUN/reproduce.json) and the run."""
    import argparse
    from datetime import datetime, timezone

    from .dataset import check_dataset
    from .presets import load_preset
    from .train import RUNS_DIR, create_run, resolve_dataset

    overrides = list(args.set or [])
    preset = load_preset(args.preset, overrides, experimental=args.experimental)
    if preset.engine == "kohya" and args.cpu and preset.kohya and preset.kohya.mixed_precision != "no":
        overrides.append("mixed_precision=no")
        preset = load_preset(args.preset, overrides, experimental=args.experimental)
    dataset_dir = resolve_dataset(args.dataset, preset, console)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir = Path(args.run_dir) if args.run_dir else RUNS_DIR / f"reproduce-{preset.name}-{stamp}"
    run_dir, record, prepared = create_run(preset, overrides, dataset_dir, run_dir, err_console)
    report = check_dataset(dataset_dir, preset.dataset.caption_extension)
    checklist = Checklist()
    native = preset.engine == "pixel24"

    # 1 upscale
    ok, evidence = check_upscale(report, prepared, preset.dataset.alpha_background)
    if native:
        checklist.add(1, "prepared images equal the originals", PASS if ok else FAIL, evidence.replace("downscale (NEAREST) to", "equal"), reason="pixel24 trains at 24x24: there is no upscale to check" if ok else "")
        checklist.steps[-1].status = NA if ok else FAIL
    else:
        checklist.add(1, "prepared images are NEAREST upscales (downscaled back = originals)", PASS if ok else FAIL, evidence)

    # 2 config, then training
    if native:
        checklist.add(2, "rendered preset equals the validated preset file", PASS, f"config/preset.json: {len(preset.model_dump())} sections, overrides: {', '.join(overrides) or 'none'}")
    else:
        diffs = config_differences(preset)
        checklist.add(
            2,
            f"train.toml equals the documented config key by key ({len(DOCUMENTED_ARGS)} keys)",
            FAIL if diffs else PASS,
            "; ".join(diffs) if diffs else f"{len(DOCUMENTED_ARGS)}/{len(DOCUMENTED_ARGS)} keys equal (config/train.toml)",
            reason="differs from the documented recipe" if diffs else "",
        )
    config_row = checklist.steps[-1]
    blockers = [] if native else _training_blockers(preset, args.cpu)
    if blockers:
        # The config check passed or failed on its own; training is what could not run here.
        config_row.reason = "; ".join(filter(None, [config_row.reason, "training not launched: " + "; ".join(b[0] for b in blockers)]))
        config_row.command = "; ".join(dict.fromkeys(b[1] for b in blockers))
        return _finish(checklist, run_dir, trained=False)
    from .train import read_run, resume

    train_args = argparse.Namespace(cpu=args.cpu, num_gpus=1, dry_run=False, resume=str(run_dir))
    code = resume(run_dir, train_args, console, err_console)
    record = read_run(run_dir)
    epochs = {int(k): v for k, v in record.get("epochs", {}).items()}
    config_row.evidence += f"; trained: status {record.get('status')}, epochs {sorted(epochs)} in checkpoints/"
    if code != 0 or not epochs:
        config_row.status = FAIL
        config_row.reason = f"training failed (exit status {code}); see logs/train.log"
        return _finish(checklist, run_dir, trained=False)
    return _after_training(checklist, preset, run_dir, epochs, args, dataset_dir)


def _after_training(checklist: Checklist, preset: Preset, run_dir: Path, epochs: dict[int, str], args: Any, dataset_dir: Path) -> tuple[Checklist, Path]:
    """Steps 3-6 once checkpoints exist: sample, downscale both ways, score, report."""
    from .report import report_summary, write_report
    from .sample import sample_any_run

    chosen = DOCUMENTED_EPOCH if DOCUMENTED_EPOCH in epochs else max(epochs)
    # 4 generate (every epoch, so the report can recommend one; the documented epoch is the evidence)
    try:
        doc = sample_any_run(run_dir, device=getattr(args, "device", None), dataset_dir=dataset_dir, progress=True)
    except Exception as exc:  # noqa: BLE001 - recorded as the step's failure
        checklist.add(4, f"generate with epoch {chosen}", FAIL, "", reason=f"{exc.__class__.__name__}: {exc}")
        return _finish(checklist, run_dir, trained=True)
    images = (doc.get("epochs", {}).get(str(chosen)) or {}).get("images", [])
    width, height = preset.sample_size if preset.engine == "kohya" else (24, 24)
    checklist.add(4, f"generate at {width}x{height} with epoch {chosen}'s checkpoint", PASS if images else FAIL, f"{len(images)} images in samples/epoch-{chosen:03d}/")

    # 5 downscale
    if preset.engine == "pixel24":
        checklist.add(5, "downscale to 24x24 (NEAREST and grid)", NA, "samples are 24x24 already", reason="pixel24 generates at 24x24: nothing to downscale")
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
    out = run_dir / "reproduce" / f"epoch-{epoch:03d}"
    nearest = postprocess_files(fulls, out / "nearest", PostprocessOptions(method="nearest"), progress=False)
    grid = postprocess_files(fulls, out / "grid", PostprocessOptions(method="grid"), progress=False)
    same = 0.0
    for a, b in zip(nearest, grid):
        pa = np.asarray(Image.open(a["output"]).convert("RGB"))
        pb = np.asarray(Image.open(b["output"]).convert("RGB"))
        same += float((pa == pb).all(axis=-1).mean())
    return ("downscale to 24x24 with NEAREST (documented) and grid, both kept", PASS, f"{len(nearest)}+{len(grid)} images in reproduce/epoch-{epoch:03d}/{{nearest,grid}}; methods agree on {same / len(nearest):.0%} of pixels")


def _finish(checklist: Checklist, run_dir: Path, trained: bool) -> tuple[Checklist, Path]:
    """Mark the steps that never ran as skipped, sort, write RUN/reproduce.json."""
    done = {s.step for s in checklist.steps}
    why = "needs trained checkpoints (training did not run)" if not trained else "an earlier step failed"
    then = f"bespoke-kohya train --resume {run_dir} && bespoke-kohya sample --run {run_dir} && bespoke-kohya report --run {run_dir}"
    for step in range(3, 7):
        if step not in done:
            checklist.add(step, {3: f"take epoch {DOCUMENTED_EPOCH}", 4: "generate with that epoch", 5: "downscale to 24x24", 6: "score and report"}[step], SKIPPED, "", reason=why, command=then if not trained else "")
    checklist.steps.sort(key=lambda s: s.step)
    checklist.write(run_dir / "reproduce.json")
    if (run_dir / "report" / "index.html").is_file():
        from .report import write_report

        write_report(run_dir)  # again, so the page shows the finished table
    return checklist, run_dir
