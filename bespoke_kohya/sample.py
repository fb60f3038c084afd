"""`sample`: every epoch of a run drawn with the same prompts × seeds, whatever the engine.

`draw_epochs` is the one epoch loop: the run's engine loads its model once
(`engines.<name>.sampler`) and draws each epoch's suite; every image is written
three times here: full size, the true 24×24 result of post-processing, and a
NEAREST ×8 preview. ``samples.json`` (paths in it are relative to the run folder)
is merged, so sampling epochs one at a time accumulates. Beside the suite, each held-out
image's own caption (run.json dataset.heldout) is drawn with the first ``sample.heldout_seeds``
seeds, so the report can set the draws beside the real image.

Nothing is half-written: an epoch's images are built in a hidden folder that is
renamed into place when the epoch is complete, and ``samples.json`` is replaced
atomically after each epoch.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from .atomic import staged_folder
from .engines import get_engine
from .engines.protocol import EpochSampler, SampleJob, SampleOptions, prompt_ids
from .errors import UserError
from .images import enlarge, save_png_atomic
from .metrics import even_sample
from .progress import counter
from .runfolder import ADHOC, ANY, RUN_JSON, SAMPLES, epoch_drawn, epoch_folder, file_sha256, inside_run
from .runfolder.data import training_colours
from .runfolder.lock import SAMPLE, run_lock
from .runfolder.records import RunHandle, SampledEpoch, Samples, read_samples, write_samples
from .regular import read_text
from .settings import MAX_PROMPTS, SampleSettings

PREVIEW_FACTOR = 8


@dataclass(frozen=True)
class HeldoutPrompt:
    """A held-out image's own caption (run.json dataset.heldout), drawn beside the suite so the report can pair them."""

    id: str  # prompt_id and file stem of its draws: `heldout-<stem>`
    prompt: str  # the caption as trained, verbatim
    file: str  # the prepared image file it describes (SampleImage.heldout)


_PLAIN_STEM = re.compile(r"[A-Za-z0-9_-]{1,80}")


def heldout_id(file: str) -> str:
    """``heldout-<stem>``: never a suite id (``p01``), and a safe file name whatever the stem holds.

    A stem with other characters becomes a slug plus ``~`` and a hash of the name; ``~`` is
    never in a plain stem, so two held-out files can never share an id.
    """
    stem = Path(file).stem
    if _PLAIN_STEM.fullmatch(stem):
        return f"heldout-{stem}"
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-")[:40] or "image"
    return f"heldout-{slug}~{hashlib.sha256(file.encode('utf-8')).hexdigest()[:8]}"


def heldout_subset(files: list[str], limit: int) -> list[str]:
    """At most ``limit`` of the held-out ``files``, evenly spread over them in their order: the same ones every time."""
    return [files[i] for i in even_sample(len(files), limit)]


def heldout_prompts(run: RunHandle, limit: int) -> tuple[list[HeldoutPrompt], list[str]]:
    """The captions of up to ``limit`` held-out images to draw, and a warning for those whose caption is not in the run's data/."""
    prompts, missing = [], []
    for file, caption in run.heldout_captions(heldout_subset(run.record.dataset.heldout or [], limit)):
        if caption is None:
            missing.append(file)
        else:
            prompts.append(HeldoutPrompt(heldout_id(file), caption, file))
    warnings = [f"{len(missing)} held-out image(s) have no caption in {run.training_folder}, so their captions are not drawn: {', '.join(missing[:5])}"
                f"{' …' if len(missing) > 5 else ''}"] if missing else []
    return prompts, warnings


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to the run folder when it lies inside it, else absolute (POSIX separators)."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def _options_record(options: Any) -> dict[str, Any]:
    """The post-processing options as JSON (the palette as its size and a hash, not every colour)."""
    palette = getattr(options, "palette", None)
    record = {name: getattr(options, name, None) for name in ("method", "max_delta_e", "merge", "max_colors")}
    if palette is None:
        record["palette"] = None
    else:
        arr = np.ascontiguousarray(np.asarray(palette, dtype=np.uint8))
        record["palette"] = {"colours": int(arr.shape[0]), "sha256": hashlib.sha256(arr.tobytes()).hexdigest()}
    return record



def suite_id(suite: dict[str, Any]) -> str:
    """A short hash of the suite: epochs with the same id were drawn the same way and are comparable."""
    canonical = json.dumps(suite, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _write_sample(full: Image.Image, staging: Path, final_rel: str, pid: str, prompt: str, seed: int, options: Any) -> dict[str, Any]:
    """Post-process one sample and write its three files; the record names them by their final paths."""
    from .postprocess import postprocess

    art, grid = postprocess(full, options)
    stem = f"{pid}-s{seed}"
    save_png_atomic(full, staging / f"{stem}.png")
    save_png_atomic(art, staging / f"{stem}.24.png")
    save_png_atomic(enlarge(art, PREVIEW_FACTOR), staging / f"{stem}.x8.png")
    return {
        "prompt_id": pid, "prompt": prompt, "seed": seed,
        "full": f"{final_rel}/{stem}.png", "art": f"{final_rel}/{stem}.24.png", "preview": f"{final_rel}/{stem}.x8.png",
        "grid": grid.to_dict() if grid is not None else None,
    }



# ------------------------------------------------------------------ the one epoch loop


def draw_epochs(run_dir: Path, sampler: EpochSampler, jobs: list[SampleJob], prompts: list[str], seeds: list[int], options: Any,
                progress: bool = True, adhoc: bool = False, heldout: list[HeldoutPrompt] | None = None, heldout_seeds: list[int] | None = None,
                drawn: list[int] | None = None) -> Samples:
    """Draw every job's prompts × seeds into ``RUN/samples`` with ``sampler`` and return the merged samples.json.

    Writes ``epoch-NNN/<prompt-id>-s<seed>.png`` (full size), ``.24.png`` (24×24 result)
    and ``.x8.png`` (×8 preview); paths in samples.json are relative to the run folder.
    Each epoch is drawn into a private folder swapped in whole, and samples.json is
    rewritten after every epoch, so an interruption keeps the finished ones.

    ``adhoc``: prompts tried out beside the suite, not instead of it. They go to
    ``samples/adhoc/epoch-NNN/`` (named by the prompt's text, added to what is there) and to
    samples.json's ``adhoc`` table; the suite's folders and records, which the report
    compares, are left as they are.

    ``heldout``: held-out images' captions, each drawn with ``heldout_seeds`` into the same epoch
    folders and records as the suite (``SampleImage.heldout`` names the image); not with ``adhoc``.

    ``drawn``: the epochs this call drew are appended to it (epochs already drawn with this suite are skipped).
    The progress line counts every image as it is written; a record lists an epoch's images in suite
    order (prompt, then seed; held-out draws last), however the engine batches them.
    """
    epochs = [job.epoch for job in jobs]
    if len(set(epochs)) != len(epochs):
        raise UserError(f"sample: an epoch is listed twice ({epochs}); list each once")
    heldout = [] if adhoc or not heldout_seeds else list(heldout or [])
    heldout_seeds = list(heldout_seeds or []) if heldout else []
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir, SAMPLE):  # samples.json is read, merged and rewritten: one sampler at a time
        sampler.check(prompts, seeds, jobs)
        out_dir = run_dir / SAMPLES
        out_dir.mkdir(exist_ok=True)
        _remove_leftovers(out_dir)
        doc = read_samples(run_dir) or Samples()
        ids = adhoc_ids(prompts) if adhoc else prompt_ids(prompts)
        sid = None
        if not adhoc:
            settings = sampler.settings(prompts, seeds, _options_record(options))
            # How many held-out seeds is part of the suite only when held-out captions are drawn (below), so the
            # suite of a run without held-out images keeps the id it had before held-out draws existed.
            settings.pop("heldout_seeds", None)
            settings.pop("heldout_captions", None)  # the chosen held-out captions themselves are hashed below
            suite = {"settings": settings, "prompts": [{"id": pid, "prompt": p} for pid, p in zip(ids, prompts)], "seeds": list(seeds)}
            hashed = {**suite, "heldout": {"prompts": [asdict(h) for h in heldout], "seeds": heldout_seeds}} if heldout else suite
            sid = suite_id(hashed)
            doc.settings, doc.prompts, doc.seeds, doc.suite_id = suite["settings"], suite["prompts"], suite["seeds"], sid
        jobs = [job for job in jobs if not (job.if_missing and _drawn(doc, job.epoch, sid, ids, seeds, adhoc))]
        id_of = {p: ids[i] for i, p in reversed(list(enumerate(prompts)))}  # the first prompt of a repeated text, as list.index gave
        rank = {(pid, seed): i for i, (pid, seed) in enumerate((pid, seed) for pid in ids for seed in seeds)}
        folder = out_dir / ADHOC if adhoc else out_dir
        folder.mkdir(exist_ok=True)
        rel_folder = f"{SAMPLES}/{ADHOC}" if adhoc else SAMPLES
        total = len(jobs) * (len(prompts) * len(seeds) + len(heldout) * len(heldout_seeds))
        # Every checkpoint read (and hashed) before anything is announced: a damaged one is the only line printed.
        digests = {job.epoch: file_sha256(job.checkpoint) for job in jobs if job.checkpoint is not None}
        if progress and total:
            _announce(jobs, prompts, seeds, heldout, heldout_seeds, doc, total)
        with counter("sampling", total, progress) as tick:
            for job in jobs:
                name = epoch_folder(job.epoch)
                with staged_folder(folder / name, "replace", start_from_target=adhoc) as staging:
                    started = time.perf_counter()
                    entry: dict[str, Any] = {"checkpoint": None, "sha256": None, "base_only": job.checkpoint is None}
                    if job.checkpoint is not None:
                        entry.update(checkpoint=_rel(job.checkpoint, run_dir), sha256=digests[job.epoch])
                    images: list[dict[str, Any]] = []

                    def write(full: Image.Image, pid: str, prompt: str, seed: int) -> None:
                        # The sampler numbers prompts in call order; ad-hoc files are named by the text instead.
                        images.append(_write_sample(full, staging, f"{rel_folder}/{name}", id_of[prompt] if adhoc else pid, prompt, seed, options))
                        tick()

                    def write_heldout(full: Image.Image, h: HeldoutPrompt, seed: int) -> None:
                        images.append({**_write_sample(full, staging, f"{rel_folder}/{name}", h.id, h.prompt, seed, options), "heldout": h.file})
                        tick()

                    extra = sampler.draw(job, prompts, seeds, write)
                    if heldout:
                        extra.update(_draw_heldout(sampler, job, heldout, heldout_seeds, write_heldout))
                    images.sort(key=lambda img: (img.get("heldout") is not None, rank.get((img["prompt_id"], img["seed"]), 0)))  # stable: held-out in draw order
                entry.update(extra, suite_id=sid, sampled=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                             seconds=round(time.perf_counter() - started, 3), images=images)
                if adhoc:
                    entry["images"] = _merged_images(doc.adhoc.get(str(job.epoch)), images)
                    doc.adhoc[str(job.epoch)] = SampledEpoch.model_validate(entry)
                    doc.adhoc = dict(sorted(doc.adhoc.items(), key=lambda kv: int(kv[0])))
                else:
                    doc.epochs[str(job.epoch)] = SampledEpoch.model_validate(entry)
                    doc.epochs = dict(sorted(doc.epochs.items(), key=lambda kv: int(kv[0])))
                write_samples(run_dir, doc)
                if drawn is not None:
                    drawn.append(job.epoch)
    return doc


def _announce(jobs: list[SampleJob], prompts: list[str], seeds: list[int], heldout: list[HeldoutPrompt], heldout_seeds: list[int], doc: Samples, total: int) -> None:
    """Before drawing: how many images, what they are, and how long they should take at the speed of earlier epochs."""
    from rich.console import Console

    parts = f"{len(prompts)} prompt(s) × {len(seeds)} seed(s)" + (f" + {len(heldout)} held-out caption(s) × {len(heldout_seeds)} seed(s)" if heldout else "")
    timed = [(e.seconds, len(e.images)) for e in doc.epochs.values() if getattr(e, "seconds", None) and e.images]
    rate = sum(n for _, n in timed) / sum(t for t, _ in timed) if timed else None
    guess = f", about {_duration(total / rate)} at the speed of the epochs drawn before" if rate else ""
    Console(stderr=True, highlight=False).print(f"sampling {total} image(s): {len(jobs)} epoch(s) × ({parts}){guess}", markup=False, soft_wrap=True)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _draw_heldout(sampler: EpochSampler, job: SampleJob, heldout: list[HeldoutPrompt], seeds: list[int],
                  write: Callable[[Image.Image, HeldoutPrompt, int], None]) -> dict[str, Any]:
    """Draw each held-out caption × ``seeds`` with ``job``'s checkpoint: one more ``draw`` call, so engines need nothing new.

    Samplers number a call's prompts p01, p02, … (prompt_ids); two held-out images may share a
    caption, so each draw is matched to its image by that number, not by the text.
    """
    captions = [h.prompt for h in heldout]
    by_pid = dict(zip(prompt_ids(captions), heldout))
    # A sampler that draws from a picture is given each caption's own image (EpochSampler.takes_images).
    images = {"images": [h.file for h in heldout]} if getattr(sampler, "takes_images", False) else {}
    return sampler.draw(job, captions, seeds, lambda full, pid, _prompt, seed: write(full, by_pid[pid], seed), **images)


def _drawn(doc: Samples, epoch: int, sid: str | None, ids: list[str], seeds: list[int], adhoc: bool) -> bool:
    """Whether samples.json already holds ``epoch`` drawn with this suite (ad hoc: every prompt × seed of this call)."""
    entry = (doc.adhoc if adhoc else doc.epochs).get(str(epoch))
    pairs = [(pid, seed) for pid in ids for seed in seeds]
    return entry is not None and epoch_drawn(entry.model_dump(mode="json"), suite_id=ANY if adhoc else sid, pairs=pairs)


def adhoc_ids(prompts: list[str]) -> list[str]:
    """File stems of ad-hoc prompts: a slug of the text plus a short hash, so the same prompt lands on the same files."""
    out = []
    for prompt in prompts:
        slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40].rstrip("-") or "prompt"
        out.append(f"{slug}-{hashlib.sha256(prompt.encode('utf-8')).hexdigest()[:6]}")
    return out


def _merged_images(before: SampledEpoch | None, new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An epoch's earlier ad-hoc images, with those drawn again (same prompt and seed) replaced by the new ones."""
    drawn = {(img["prompt_id"], img["seed"]) for img in new}
    kept = [img.model_dump(mode="json") for img in (before.images if before else []) if (img.prompt_id, img.seed) not in drawn]
    return kept + new


def _remove_leftovers(out_dir: Path) -> None:
    """Hidden staging folders of a sampler that was killed (SIGKILL, out of memory); called under the sample lock, so none is in use."""
    for folder in (out_dir, out_dir / ADHOC):
        for path in folder.glob(".epoch-*") if folder.is_dir() else []:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------ a whole run


def read_prompts_file(path: Path) -> list[str]:
    """Prompts from a text file: one full prompt per line; blank lines and ``#`` comments are skipped."""
    text = read_text(path, what="prompt list", fix="give a UTF-8 text file with one prompt per line")
    if text is None:
        raise UserError(f"--prompts {path}: file not found")
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise UserError(f"--prompts {path}: no prompts in it (one prompt per line; # starts a comment)")
    if len(prompts) > MAX_PROMPTS:
        raise UserError(f"--prompts {path}: {len(prompts):,} prompts, at most {MAX_PROMPTS:,} are drawn per epoch; give fewer")
    return prompts


def postprocess_options_for(settings: SampleSettings, run: RunHandle, dataset_dir: Path | None) -> Any:
    """PostprocessOptions from the preset: the method, and the training palette when snapping is on.

    The palette is the colours of ``dataset_dir`` (``--dataset``) when given, else of the run's own
    prepared images in data/ (NEAREST upscaling keeps the exact colours).
    """
    from .postprocess import PostprocessOptions, dataset_palette

    merge = {"auto": "auto", "on": True, "off": False}[settings.merge]
    if settings.palette_max_delta_e is None:
        return PostprocessOptions(method=settings.postprocess, merge=merge, max_colors=settings.max_colors)
    palette = dataset_palette(dataset_dir) if dataset_dir is not None else training_colours(run.dir, run.record.resolved)
    return PostprocessOptions(method=settings.postprocess, palette=palette, max_delta_e=settings.palette_max_delta_e, merge=merge, max_colors=settings.max_colors)


def select_jobs(run: RunHandle, epochs: list[int] | None, include_base: bool | None, engine_default: bool = False) -> list[SampleJob]:
    """The epochs to sample (all recorded ones by default) with their checkpoint paths, and epoch 0 (the base alone).

    ``include_base`` None: the engine's default (``engine_default``), and then a base already drawn
    with the same suite is not drawn again; True/False: as asked (True draws it even if drawn).
    """
    recorded = run.record.checkpoints()
    if not recorded and not include_base:  # the default base alone is nothing to compare
        raise UserError(f"{run.dir}: run.json records no epoch checkpoints yet (status {str(run.record.status)!r}); train it first")
    wanted = sorted(recorded) if epochs is None else epochs
    missing = [e for e in wanted if e not in recorded]
    if missing:
        have = ", ".join(map(str, sorted(recorded))) or "none"
        raise UserError(f"--epochs: {', '.join(map(str, missing))} not in {run.dir / RUN_JSON} (recorded epochs: {have})")
    for e in wanted:
        rel = recorded[e]
        if inside_run(run.dir, rel) is not None:
            continue
        if not Path(rel).is_absolute() and ".." not in Path(rel).parts:  # named inside the run, so a link leads out
            raise UserError(f"{run.dir / rel}: a symbolic link leading out of the run folder; checkpoints are read from the run's own "
                            "checkpoints/ only: replace it by the file itself")
        raise UserError(f"{run.dir / RUN_JSON}: epochs.{e}: {rel} is outside the run folder; checkpoints are read from the run's own checkpoints/ only")
    base = engine_default if include_base is None else include_base
    jobs = [SampleJob(0, None, if_missing=include_base is None)] if base else []
    return jobs + [SampleJob(e, run.dir / recorded[e]) for e in wanted]


@dataclass
class SamplingPlan:
    """What one `sample` call draws: the epochs, the suite, the held-out captions; ``images`` is how many in all."""

    jobs: list[SampleJob]
    prompts: list[str]
    seeds: list[int]
    heldout: list[HeldoutPrompt]
    heldout_seeds: list[int]
    adhoc: bool
    notes: list[str]

    @property
    def images(self) -> int:
        """Images drawn if no epoch is skipped (the default base is skipped when already drawn)."""
        return len(self.jobs) * (len(self.prompts) * len(self.seeds) + len(self.heldout) * len(self.heldout_seeds))


def sampling_plan(run: RunHandle, *, epochs: list[int] | None = None, prompts_file: Path | None = None, prompts: list[str] | None = None,
                  seeds: list[int] | None = None, include_base: bool | None = None) -> SamplingPlan:
    """What `sample --run RUN` with these options draws, decided before any model is loaded.

    The suite is the preset's prompts, or ``prompts_file`` in their place; ``prompts`` (``--prompt``)
    are ad-hoc: drawn beside the suite into ``samples/adhoc/``, never over it. ``include_base``
    None: epoch 0 (the base alone) when the engine has one (`samples_base`) and it is not drawn yet.
    Held-out captions go with the suite (the preset's, or --prompts FILE), never with ad-hoc draws,
    at most ``sample.heldout_captions`` of them.
    """
    preset = run.record.preset_model(run.dir)
    if prompts is None and prompts_file is None:
        suite = preset.sample.full_prompts()
    else:
        suite = list(prompts or []) + (read_prompts_file(prompts_file) if prompts_file else [])
    jobs = select_jobs(run, epochs, include_base, get_engine(run.record.engine).samples_base)
    seeds = list(seeds) if seeds else list(preset.sample.seeds)
    heldout, notes = ([], []) if prompts or not preset.sample.heldout_seeds else heldout_prompts(run, preset.sample.heldout_captions)
    return SamplingPlan(jobs, suite, seeds, heldout, seeds[: preset.sample.heldout_seeds] if heldout else [], bool(prompts), notes)


def check_control(sampler: EpochSampler, control: Path | None, run: RunHandle) -> None:
    """``--control DIR`` only for a sampler that draws from a picture (`takes_images`), else one line saying so."""
    if control is not None and not getattr(sampler, "takes_images", False):
        raise UserError(f"--control {control}: run {run.dir.name} ({run.record.preset}) draws from prompts alone, so there is nothing to follow "
                        "the images; --control is for runs whose model draws from a picture (a ControlNet run)")


def sample_run(run_dir: Path, *, epochs: list[int] | None = None, prompts_file: Path | None = None, prompts: list[str] | None = None,
               seeds: list[int] | None = None, device: str | None = None, include_base: bool | None = None, base_override: str | None = None,
               dataset_dir: Path | None = None, progress: bool = True, control: Path | None = None) -> dict[str, Any]:
    """`bespoke-kohya sample --run RUN`: draw the run's epochs with its engine into ``RUN/samples``; returns samples.json (+ warnings, drawn).

    What is drawn: :func:`sampling_plan`. ``control`` (``--control DIR``): 24×24 images the suite is drawn from,
    for a sampler that draws from a picture.
    """
    run = RunHandle.open(Path(run_dir))
    with run_lock(run.dir, SAMPLE):  # taken before the model loads: a second sampler is refused at once
        preset = run.record.preset_model(run.dir)
        plan = sampling_plan(run, epochs=epochs, prompts_file=prompts_file, prompts=prompts, seeds=seeds, include_base=include_base)
        options = SampleOptions(epochs=epochs, prompts=plan.prompts, seeds=plan.seeds, device=device,
                                include_base=any(job.checkpoint is None for job in plan.jobs), base_override=base_override, progress=progress,
                                control=control)
        sampler = get_engine(run.record.engine).sampler(run, options)
        check_control(sampler, control, run)
        post = postprocess_options_for(preset.sample, run, dataset_dir)
        drawn: list[int] = []
        doc = draw_epochs(run.dir, sampler, plan.jobs, plan.prompts, plan.seeds, post, progress, adhoc=plan.adhoc,
                          heldout=plan.heldout, heldout_seeds=plan.heldout_seeds, drawn=drawn).as_dict()
    doc["warnings"] = plan.notes + list(sampler.warnings)
    doc["drawn"] = drawn  # the epochs this call drew (not written to samples.json)
    return doc
