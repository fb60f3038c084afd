"""`generate --num-gpus N`: the candidates drawn by N processes at once, one per GPU, with accelerate.

Each process loads the run's sampler on its own device and draws its share of the (prompt, seed)
pairs (``PartialState().split_between_processes``), then writes them into the collection's
``work/`` folder; the main process reads them back and judges every token in order as one
process would. A candidate's image depends only on its prompt and seed, so the collection is
the same whatever N. Launched with accelerate's ``notebook_launcher`` on CUDA and its
``debug_launcher`` (gloo, CPU) elsewhere, so two CPU processes show the same split works.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..atomic import write_atomic

WORK = "work"


def _part(work: Path, rank: int) -> tuple[Path, Path]:
    return work / f"part-{rank}.json", work / f"part-{rank}.safetensors"


def _worker(run_dir: str, epoch: int, device: str | None, cpu: bool, pairs: list[tuple[str, int]], work: str, control: str | None = None) -> None:
    """One process's share of ``pairs``, drawn and written to ``work/part-<rank>``."""
    from accelerate import PartialState
    from safetensors.numpy import save_file

    from ..runfolder.records import RunHandle
    from .draw import Drawer, choose_epoch

    state = PartialState(cpu=cpu)
    run = RunHandle.open(Path(run_dir))
    _, checkpoint = choose_epoch(run, epoch)
    use = device or state.device.type  # accelerate has made this process's GPU the current one
    with state.split_between_processes([list(p) for p in pairs]) as mine:
        mine = [(str(p), int(s)) for p, s in mine]
        arts = Drawer(run, checkpoint, use, Path(control) if control else None).draw(mine) if mine else []
    names, tensors = _part(Path(work), state.process_index)
    stack = np.stack(arts).astype(np.uint8) if arts else np.zeros((0, 24, 24, 3), np.uint8)
    write_atomic(tensors, lambda tmp: save_file({"art": np.ascontiguousarray(stack)}, str(tmp)))
    write_atomic(names, lambda tmp: tmp.write_text(json.dumps(mine), encoding="utf-8"))
    state.wait_for_everyone()


def draw_in_parallel(run_dir: Path, epoch: int, device: str | None, pairs: list[tuple[str, int]], out: Path, processes: int,
                     control: Path | None = None) -> dict[tuple[str, int], np.ndarray]:
    """Every pair's 24×24 art, drawn by ``processes`` processes; {} when there is nothing to draw."""
    from safetensors.numpy import load_file

    if not pairs:
        return {}
    work = out / WORK
    shutil.rmtree(work, ignore_errors=True)  # a killed run's parts: drawn again, they are the same
    work.mkdir()
    import torch

    gpus = torch.cuda.is_available() and device in (None, "cuda")
    args = (str(run_dir), epoch, device, not gpus, [list(p) for p in pairs], str(work), str(control) if control else None)
    if gpus:
        from accelerate import notebook_launcher

        notebook_launcher(_worker, args, num_processes=processes)
    else:
        from accelerate import debug_launcher

        os.environ.setdefault("OMP_NUM_THREADS", "1")
        debug_launcher(_worker, args, num_processes=processes)
    found: dict[tuple[str, int], np.ndarray] = {}
    for rank in range(processes):
        names, tensors = _part(work, rank)
        listed = json.loads(names.read_text(encoding="utf-8"))
        for (prompt, seed), art in zip(listed, load_file(str(tensors))["art"]):
            found[(str(prompt), int(seed))] = art
    shutil.rmtree(work, ignore_errors=True)
    return found
