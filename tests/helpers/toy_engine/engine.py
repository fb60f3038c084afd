"""The toy engine: the protocol's required members only (the rest are BaseEngine's defaults)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from safetensors.numpy import load_file, save_file

from bespoke_kohya.engines.protocol import BaseEngine, Outcome, Progress, SampleJob, SampleOptions, TrainOptions, TrainSession, check_suite, prompt_ids
from bespoke_kohya.images import load_rgb
from bespoke_kohya.metrics import background_colour_names
from bespoke_kohya.runfolder import CHECKPOINTS, Status
from bespoke_kohya.runfolder.records import RunHandle

from .settings import ToyPreset


def _common_colours(folder: Path, n: int) -> np.ndarray:
    pixels = np.concatenate([load_rgb(p).reshape(-1, 3) for p in sorted(folder.glob("*.png"))])
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    return colours[np.argsort(-counts)[:n]].astype(np.uint8)


# One sRGB colour per name of bespoke_kohya.metrics' colour table (checked: each answers to its name).
NAMED = {"purple": (128, 0, 128), "green": (0, 160, 0), "blue": (30, 60, 220), "red": (220, 30, 30), "pink": (255, 105, 180), "grey": (128, 128, 128),
         "orange": (255, 140, 0), "yellow": (240, 220, 0), "brown": (120, 70, 20), "black": (0, 0, 0), "white": (255, 255, 255), "teal": (0, 128, 128),
         "beige": (230, 215, 180)}


def _named(prompt: str, rng: np.random.Generator) -> np.ndarray | None:
    """The background colour the prompt names, or None: the toy follows a caption's background."""
    wanted = sorted(background_colour_names(prompt) or ())
    return np.array(NAMED[wanted[0]], np.uint8) if wanted and wanted[0] in NAMED else None


class ToyEngine(BaseEngine[ToyPreset]):
    name = "toy"
    preset_class = ToyPreset

    def describe(self, preset: ToyPreset) -> dict[str, str]:
        return {"epochs": str(preset.toy.epochs)}

    def train(self, run: RunHandle, session: TrainSession, options: TrainOptions, progress: Progress) -> Outcome:
        preset = run.record.preset_model(run.dir)
        colours = _common_colours(run.training_folder, preset.toy.colours)
        (run.dir / CHECKPOINTS).mkdir(exist_ok=True)
        for epoch in range(1, preset.toy.epochs + 1):
            name = f"{CHECKPOINTS}/toy-{epoch:06d}.safetensors"
            save_file({"colours": colours[: max(2, len(colours) * epoch // preset.toy.epochs)]}, str(run.dir / name))
            run.record_epoch(epoch, name)
            progress({"epoch": epoch, "epochs": preset.toy.epochs})
        return Outcome(Status.FINISHED, 0)

    def sampler(self, run: RunHandle, options: SampleOptions) -> "ToySampler":
        return ToySampler()


class ToySampler:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def check(self, prompts: list[str], seeds: list[int], jobs: list[SampleJob]) -> None:
        check_suite(prompts, seeds, (24, 24), factor=1)

    def settings(self, prompts: list[str], seeds: list[int], options_record: dict[str, Any]) -> dict[str, Any]:
        return {"engine": "toy", "postprocess_options": options_record}

    def draw(self, job: SampleJob, prompts: list[str], seeds: list[int], write: Any) -> dict[str, Any]:
        colours = load_file(str(job.checkpoint))["colours"]
        for pid, prompt in zip(prompt_ids(prompts), prompts):
            for seed in seeds:
                rng = np.random.default_rng(int(hashlib.sha256(f"{prompt}|{seed}".encode()).hexdigest()[:8], 16))
                bg, head, eye = (colours[i] for i in rng.choice(len(colours), 3, replace=len(colours) < 3))
                named = _named(prompt, rng)
                bg = bg if named is None else named
                art = np.empty((24, 24, 3), np.uint8)
                art[:] = bg
                top = int(rng.integers(4, 8))
                art[top:21, 7:17] = head
                art[top + 5, 9:11] = art[top + 5, 13:15] = eye
                write(Image.fromarray(art), pid, prompt, seed)
        return {}


ENGINE = ToyEngine()
