"""Drawing a collection's candidates: the epoch's checkpoint, the engine's sampler loaded once, each (prompt, seed) to 24×24.

Used by the collection (collection.py) and by each `--num-gpus` process (parallel.py), so a candidate is
drawn the same way whichever process draws it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from ..engines import get_engine
from ..engines.protocol import SampleJob, SampleOptions, draw_pairs
from ..errors import UserError
from ..runfolder import RUN_JSON, inside_run
from ..runfolder.records import RunHandle


def choose_epoch(run: RunHandle, epoch: int | None) -> tuple[int, Path]:
    """The epoch to draw from (``--epoch``, else the one the run's report recommends) and its checkpoint, inside the run."""
    recorded = run.record.checkpoints()
    if epoch is None:
        from ..report import read_recommended_epoch

        epoch = read_recommended_epoch(run.dir)
        if epoch is None:
            have = ", ".join(map(str, sorted(recorded))) or "none"
            raise UserError(f"{run.dir}: its report recommends no epoch (run `bespoke-kohya report --run {run.dir}` first); "
                            f"or choose one with --epoch (recorded: {have})")
    if epoch not in recorded:
        have = ", ".join(map(str, sorted(recorded))) or "none"
        raise UserError(f"--epoch {epoch}: not in {run.dir / RUN_JSON} (recorded epochs: {have})")
    if inside_run(run.dir, recorded[epoch]) is None:
        raise UserError(f"{run.dir / RUN_JSON}: epochs.{epoch}: {recorded[epoch]} is outside the run folder; checkpoints are read from the run's own checkpoints/ only")
    return epoch, run.dir / recorded[epoch]


def candidate_seed(seed: int, n: int, k: int) -> int:
    """Candidate ``k`` of token ``n``: a seed of its own (n = 0 is the pilot), the same in every collection with this seed."""
    return int.from_bytes(hashlib.sha256(f"bespoke-kohya generate {seed} {n} {k}".encode()).digest()[:4], "big")


class Drawer:
    """The engine's sampler with the epoch loaded (on first use), turning (prompt, seed) pairs into 24×24 art as `sample` does.

    ``ready``: art drawn already (by `--num-gpus` processes), taken instead of drawing again.
    """

    def __init__(self, run: RunHandle, checkpoint: Path, device: str | None, control: Path | None = None) -> None:
        from ..sample import check_control, postprocess_options_for

        self.preset = run.record.preset_model(run.dir)
        self.job = SampleJob(1, checkpoint)
        self.post = postprocess_options_for(self.preset.sample, run, None)
        # The sampler is made now (cheap: its refusals, e.g. --control for a run that draws from prompts alone, come
        # before the collection's folder is made); its model loads on the first draw.
        self.sampler: Any = get_engine(run.record.engine).sampler(run, SampleOptions(device=device, seeds=[0], control=control))
        check_control(self.sampler, control, run)
        self.checked = False
        self.ready: dict[tuple[str, int], np.ndarray] = {}
        self.drawn = 0

    def _loaded(self) -> Any:
        if not self.checked:
            self.sampler.check(["punk"], [0], [self.job])  # refuses a checkpoint it cannot draw, then loads the model once
            self.checked = True
        return self.sampler

    def draw(self, pairs: list[tuple[str, int]], tick: Callable[[], None] = lambda: None) -> list[np.ndarray]:
        """The 24×24 art of each (prompt, seed), in order."""
        from ..postprocess import postprocess

        out = {pair: self.ready.pop(pair) for pair in pairs if pair in self.ready}
        self.drawn += len(out)

        def write(full: Image.Image, _pid: str, prompt: str, seed: int) -> None:
            out[(prompt, seed)] = np.asarray(postprocess(full, self.post)[0].convert("RGB"))
            self.drawn += 1
            tick()

        todo = [pair for pair in dict.fromkeys(pairs) if pair not in out]
        if todo:
            draw_pairs(self._loaded(), self.job, todo, write)
        return [out[pair] for pair in pairs]


