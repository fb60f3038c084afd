"""Render a run: a new folder with the prepared training data and the engine's own config files.

Engine-neutral: ``data/<repeats>_<concept>/`` (the originals NEAREST-upscaled to the preset's
resolution, transparency flattened, captions as `dataset.captions` says), ``config/preset.json``
(the resolved preset), then whatever the engine writes for itself (kohya: sd-scripts' TOML files).
The folder is built privately and appears whole (`atomic.staged_folder`); an existing run is
never overwritten. Also here: which images the held-out split keeps out, the same split
sd-scripts makes, so every engine holds out the same files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import staged_folder, write_json_atomic
from .captions import for_training
from .dataset import DatasetReport, Prepared, prepare, split_heldout
from .engines import get_engine
from .runfolder import CONFIG, DATA, training_folder_name
from .settings import Preset


def heldout_images(run_dir: Path, preset: Preset) -> tuple[list[str], list[str]]:
    """(trained, held-out) prepared image names of a rendered run, as sd-scripts will split its image folder."""
    d = preset.dataset
    folder = Path(run_dir) / DATA / training_folder_name(d.num_repeats, d.concept)
    return split_heldout([p.name for p in folder.glob("*.png")], d.validation_split, d.validation_seed)


def validating(run_dir: Path, preset: Preset) -> bool:
    """Whether the run measures a validation loss: the split is on and holds out at least one image."""
    return bool(heldout_images(run_dir, preset)[1])


def split_notes(preset: Preset, trained: list[str], heldout: list[str]) -> list[str]:
    """One line when the split holds out nothing, or when it holds out images that are trained on anyway.

    sd-scripts v0.10.1 trains on ceil(n × (1 − split)) images and validates on round(n × split),
    so when n × split has a fraction of .5 or more one image is in both (8 × 0.1: 8 trained, 1 held out).
    """
    split, n = preset.dataset.validation_split, len(set(trained) | set(heldout))
    if split <= 0 or n == 0:
        return []
    if not heldout:
        better = _disjoint_split(n, 1)
        fix = f"set dataset.validation_split={better} to hold out 1, or 0 to turn it off" if better else "set dataset.validation_split=0 to turn it off"
        return [f"dataset.validation_split={split} holds out no image of {n} (round({n} × {split}) = 0): no validation loss and no held-out captions this run; {fix}"]
    both = sorted(set(trained) & set(heldout))
    if not both:
        return []
    better = _disjoint_split(n, len(heldout))
    fix = f"; dataset.validation_split={better} keeps them apart" if better else ""
    return [f"dataset.validation_split={split} of {n} images trains on {len(trained)} and holds out {len(heldout)}, so {len(both)} held-out image(s) "
            f"({', '.join(both[:3])}) are trained on too (sd-scripts v0.10.1 rounds the two parts separately){fix}"]


def _disjoint_split(n: int, held: int) -> float | None:
    """A validation_split (≤ 0.5, 4 decimals) holding out ``held`` of ``n`` images that are not also trained on (any seed)."""
    if held < 1:
        return None
    split = round((held + 0.25) / n, 4)  # a quarter image past `held`: clear of both roundings
    names = [str(i) for i in range(n)]
    trained, heldout = split_heldout(names, split, 0) if split <= 0.5 else (names, [])
    return split if len(heldout) == held and not set(trained) & set(heldout) else None


@dataclass
class RenderedRun:
    """A run directory with configs and prepared data, ready to launch."""

    run_dir: Path
    prepared: Prepared
    warnings: list[str]
    captions: dict[str, Any] = field(default_factory=dict)  # dataset.captions mode and what it changed, for run.json
    heldout: list[str] = field(default_factory=list)  # prepared image files held out (dataset.validation_split), for run.json


def rewrite_config(run_dir: Path, preset: Preset, write_preset_json: bool = True) -> None:
    """Re-render an existing run's config from a changed preset (a new base, CPU precision): preset.json and the engine's files."""
    if write_preset_json:
        write_json_atomic(Path(run_dir) / CONFIG / "preset.json", preset.model_dump(mode="json"))
    get_engine(preset.engine).write_config(run_dir, preset, Path(run_dir).name)


def write_run_files(preset: Preset, report: DatasetReport, run_dir: Path, run_id: str) -> RenderedRun:
    """Write configs and prepared data into an existing, empty ``run_dir``."""
    d = preset.dataset
    report, caption_notes, caption_record = for_training(report, d.captions)
    prepared = prepare(
        report,
        run_dir / DATA,
        resolution=preset.resolution,
        num_repeats=d.num_repeats,
        concept=d.concept,
        default_caption=d.default_caption,
        background=d.alpha_background,
        caption_extension=d.caption_extension,
    )
    (run_dir / CONFIG).mkdir()
    write_json_atomic(run_dir / CONFIG / "preset.json", preset.model_dump(mode="json"))
    engine_notes = get_engine(preset.engine).write_config(run_dir, preset, run_id)
    trained, heldout = heldout_images(run_dir, preset)
    warnings = prepared.warnings + caption_notes + engine_notes + split_notes(preset, trained, heldout)
    return RenderedRun(run_dir=run_dir, prepared=prepared, warnings=warnings, captions=caption_record, heldout=heldout)


def render(preset: Preset, report: DatasetReport, out_dir: Path, run_id: str) -> RenderedRun:
    """Render configs + prepared data into a new directory ``out_dir`` (atomically; an existing one is refused)."""
    target = Path(out_dir).resolve()
    with staged_folder(target, refusal="runs are never overwritten, choose another --out/--run-dir or remove it") as tmp:
        rendered = write_run_files(preset, report, tmp, run_id)
    # Built in a temporary sibling: point the result at the final location.
    rendered.run_dir = target
    rendered.prepared.folder = target / DATA / rendered.prepared.folder.name
    return rendered
