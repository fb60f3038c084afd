"""Minimal run folders written through the run contract (bespoke_kohya.runfolder), never by hand."""

from __future__ import annotations

from pathlib import Path

from bespoke_kohya.presets import Preset
from bespoke_kohya.runfolder import Status
from bespoke_kohya.runfolder.records import DatasetRef, RunRecord, write_run


def write_record(run_dir: Path, preset: Preset, dataset: Path, epochs: dict[str, str], status: str = "finished",
                 heldout: list[str] | None = None) -> RunRecord:
    """run.json of a run trained from ``preset`` on ``dataset`` with these epoch checkpoints (and held-out images, if any)."""
    record = RunRecord(id=run_dir.name, preset=preset.name, engine=preset.engine, resolved=preset.model_dump(mode="json"),
                       dataset=DatasetRef(path=str(dataset), heldout=heldout), status=Status(status), epochs=epochs)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run(run_dir, record)
    return record


def write_training_images(run_dir: Path, preset: Preset, dataset: Path) -> Path:
    """data/<repeats>_<concept>/ as `render` prepares it from ``dataset`` (later stages read the originals there)."""
    from bespoke_kohya.dataset import check_dataset, prepare

    d = preset.dataset
    report = check_dataset(dataset, d.caption_extension)
    return prepare(report, run_dir / "data", resolution=preset.resolution, num_repeats=d.num_repeats, concept=d.concept,
                   default_caption=d.default_caption, background=d.alpha_background, caption_extension=d.caption_extension).folder
