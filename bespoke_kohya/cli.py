"""The `bespoke-kohya` command: the only place that prints or chooses exit codes.

Each subcommand parses its flags, calls one pipeline stage, and shows the result
with rich. A `UserError` becomes one red line and exit status 2 (or its own code);
Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import errno
import math
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from rich.table import Table
from rich.text import Text

from . import __version__
from .atomic import read_only
from .console import console, err_console, warn
from .engines import engine_names, get_engine
from .errors import UserError
from .paths import REPO_ROOT


def utc_stamp() -> str:
    """UTC timestamp used in run names, sortable."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


# ------------------------------------------------------------------ commands


def cmd_presets(args: argparse.Namespace) -> int:
    """List the shipped presets with their key settings, or explain every field."""
    from .presets import PRESETS_DIR, available_presets, explain, read_preset_data, validate_preset

    if args.explain:
        table = Table(title="Preset fields (the reference manual)", show_lines=False)
        for col in ("key", "type", "default", "meaning"):
            table.add_column(col, overflow="fold")
        for row in explain():
            table.add_row(*row)
        console.print(table)
        return 0
    table = Table(title="Presets (presets/*.toml)")
    for col in ("name", "engine", "script", "resolution", "dim/alpha", "epochs", "lr", "repeats", "description"):
        table.add_column(col, overflow="fold")
    for name in available_presets():
        path = PRESETS_DIR / f"{name}.toml"
        preset = validate_preset(read_preset_data(path), path.name)
        shown = get_engine(preset.engine).describe(preset)
        table.add_row(
            name + (" [red](experimental)[/]" if preset.experimental else ""),
            preset.engine,
            shown.get("script", "-"),
            str(preset.resolution),
            shown.get("dim/alpha", "-"),
            shown.get("epochs", "-"),
            shown.get("lr", "-"),
            str(preset.dataset.num_repeats),
            preset.description,
        )
    console.print(table)
    return 0


def _load_preset(args: argparse.Namespace):
    from .presets import load_preset

    return load_preset(args.preset, args.set or [], experimental=getattr(args, "experimental", False))


def cmd_render(args: argparse.Namespace) -> int:
    """Render kohya's train.toml + dataset.toml and the prepared training images into --out."""
    from .dataset import check_dataset
    from .render import render

    preset = _load_preset(args)
    report = check_dataset(Path(args.dataset), preset.dataset.caption_extension)
    out = Path(args.out)
    rendered = render(preset, report, out, run_id=out.name)
    warn(rendered.warnings)
    p = rendered.prepared
    console.print(f"[green]rendered[/] {preset.name} → {rendered.run_dir}")
    console.print(f"  {p.count} images at {preset.resolution}x{preset.resolution} (NEAREST ×{p.scale:g}) in {p.folder}")
    for name in ("train.toml", "dataset.toml"):  # the engine's own config files, where it has them
        if (rendered.run_dir / "config" / name).is_file():
            console.print(f"  {rendered.run_dir / 'config' / name}")
    return 0


def cmd_dataset_check(args: argparse.Namespace) -> int:
    """Check a dataset folder and print what was found."""
    from .dataset import check_dataset

    report = check_dataset(Path(args.folder), args.caption_extension)
    s = report.summary()
    table = Table(title=f"Dataset {report.folder}", show_header=False)
    table.add_column("what")
    table.add_column("found", overflow="fold")
    table.add_row("images", str(s["images"]))
    table.add_row("sizes", ", ".join(f"{k} ×{v}" for k, v in s["sizes"].items()))
    table.add_row("modes", ", ".join(f"{k} ×{v}" for k, v in s["modes"].items()))
    table.add_row("colours per image", f"min {s['colours_min']}, median {s['colours_median']:g}, max {s['colours_max']}")
    table.add_row("with transparent pixels", str(s["with_transparency"]))
    table.add_row("missing captions", _names(s["missing_captions"]) or "none")
    table.add_row("duplicate images", "; ".join(" = ".join(g) for g in s["duplicate_images"]) or "none")
    table.add_row("duplicate captions", "; ".join(" = ".join(g) for g in s["duplicate_captions"]) or "none")
    repeated = report.with_repeated_phrases
    table.add_row(
        "captions repeating a phrase",
        f"{len(repeated)}" + (f" (e.g. {repeated[0].name}: '{repeated[0].repeated_phrases[0]}')" if repeated else ""),
    )
    table.add_row("content hash", report.content_hash()[:16])
    console.print(table)
    if s["missing_captions"]:
        warn([f"{len(s['missing_captions'])} image(s) have no {args.caption_extension} caption; training uses the preset's default_caption for them"])
    return 0


def cmd_dataset_captions(args: argparse.Namespace) -> int:
    """Lint a dataset's captions (one line per problem, then the trait vocabulary); --fix writes a normalised copy."""
    import json

    from .captions import CATEGORIES, lint, read_word_list, write_fixed
    from .dataset import check_dataset

    if bool(args.fix) != bool(args.out):
        raise UserError("--fix and --out go together: --fix --out DIR2 writes the normalised copy into the new folder DIR2")
    words = read_word_list(Path(args.words)) if args.words else []
    report = check_dataset(Path(args.folder), args.caption_extension)
    result = lint(report, words)
    diff = write_fixed(report, result, Path(args.out)) if args.fix else None
    if args.json:
        data = result.to_json() | ({"fixed_copy": str(Path(args.out).resolve()), "diff": str(diff.resolve())} if diff else {})
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return 0
    for problem in result.problems:
        console.print(Text(problem.line()), soft_wrap=True)
    console.print(Text(result.summary_line()), soft_wrap=True)
    table = Table(title="Trait vocabulary (images carrying each trait)")
    for col in ("trait", "images", "distinct", "most common"):
        table.add_column(col, overflow="fold")
    for cat in CATEGORIES:
        found = result.traits[cat]
        table.add_row(cat, str(result.images_with(cat)), str(len(found)), "; ".join(f"{t} ×{n}" for t, n in found.most_common(6)))
    console.print(table)
    if diff:
        console.print(f"[green]fixed copy[/] {args.out}: {len(result.changed)} of {len(result.fixed)} caption(s) changed, diff in {diff}; the originals are untouched")
    return 0


def _names(names: list[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f" … (+{len(names) - limit})" if len(names) > limit else "")


def cmd_doctor(args: argparse.Namespace) -> int:
    """Report what is installed or missing, each with how to get it."""
    from .doctor import doctor_rows

    table = Table(title="bespoke-kohya doctor")
    for col in ("component", "status", "how to fix"):
        table.add_column(col, overflow="fold")
    for component, ok, status, fix in doctor_rows(REPO_ROOT):
        table.add_row(component, ("[green]" if ok else "[yellow]") + status + "[/]", fix)
    console.print(table)
    if not args.preset:
        return 0
    from .doctor import preflight_checks

    checks = preflight_checks(_load_preset(args), REPO_ROOT, Path(args.dataset) if args.dataset else REPO_ROOT / "dataset", cpu=args.cpu)
    table = Table(title=f"pre-flight for {args.preset} (what `train` checks before launching)")
    for col in ("check", "result", "detail"):
        table.add_column(col, overflow="fold")
    colours = {"ok": "green", "warning": "yellow", "error": "red", "skipped": "dim"}
    for check in checks:
        table.add_row(check.name, f"[{colours.get(check.level, 'dim')}]{check.level}[/]", Text(check.message))
    console.print(table)
    return 1 if any(check.level == "error" for check in checks) else 0


def cmd_train(args: argparse.Namespace) -> int:
    """Render a run and train it (kohya sd-scripts or the native pixel24 model)."""
    from .engines.protocol import TrainOptions
    from .train import train

    options = TrainOptions(
        preset=args.preset, overrides=list(args.set or []), experimental=args.experimental,
        dataset=Path(args.dataset) if args.dataset else None, run_dir=Path(args.run_dir) if args.run_dir else None,
        resume=Path(args.resume) if args.resume else None, dry_run=args.dry_run, num_gpus=args.num_gpus, cpu=args.cpu,
        skip_preflight=args.skip_preflight, warn=lambda line: warn([line]),
        sample=not args.no_sample,
    )
    return train(options, console=console, err_console=err_console)


def _int_list(text: str | None, flag: str, high: int | None = None, most: int | None = None) -> list[int] | None:
    """Comma-separated whole numbers from 0 to ``high``, at most ``most`` of them; empty items and repeats are refused.

    Checked in one pass (a list of thousands of seeds is parsed at once), each item first as plain
    digits, so a 100,000-digit "number" is refused before int() spends time on it.
    """
    if not text:
        return None
    example = f"e.g. {flag} 1,2,3"
    items = [x.strip() for x in text.split(",")]
    if most is not None and len(items) > most:
        raise UserError(f"{flag}: {len(items):,} values given, at most {most:,} are accepted; give fewer")
    if "" in items:
        raise UserError(f"{flag} {_shown(text)}: empty item; expected comma-separated whole numbers, {example}")
    bad = next((x for x in items if not (x.removeprefix("-").isascii() and x.removeprefix("-").isdigit() and len(x) <= 21)), None)
    if bad is not None:
        raise UserError(f"{flag} {_shown(text)}: {_shown(bad)} is not a whole number; expected comma-separated whole numbers, {example}")
    values = [int(x) for x in items]
    out_of_range = [v for v in values if v < 0 or (high is not None and v > high)]
    if out_of_range:
        raise UserError(f"{flag} {_shown(text)}: {out_of_range[0]} is out of range; use whole numbers from 0" + (f" to {high}" if high is not None else ""))
    seen: set[int] = set()
    repeated = sorted({v for v in values if v in seen or seen.add(v)})
    if repeated:
        raise UserError(f"{flag} {_shown(text)}: {', '.join(map(str, repeated[:5]))} given more than once; list each once")
    return values


def _shown(text: str, limit: int = 60) -> str:
    """A value as an error line quotes it: repr, cut short (a flag may carry thousands of items)."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "…"


def _at_least(minimum: int, convert: Callable[[str], float], what: str) -> Callable[[str], float]:
    """argparse type: ``convert(text)``, finite (nan and inf refused) and at least ``minimum``."""

    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"must be {what} of at least {minimum}, got {text!r}")
        return value

    return parse


def cmd_bundle(args: argparse.Namespace) -> int:
    """Render a run and pack it with this package and go.sh, to train on a rented GPU box."""
    from .bundle.build import build_bundle
    from .bundle.gohelper import human_size

    result = build_bundle(
        args.preset, Path(args.dataset), Path(args.out), args.set or [],
        experimental=args.experimental, include_base=args.include_base,
        wheel=Path(args.wheel) if args.wheel else None,
        err_console=err_console, log=lambda line: console.print(line, markup=False, highlight=False),
    )
    warn(result.notes)
    console.print(f"[green]bundle[/] {result.path} ({human_size(result.size)}, {result.files} files, wheel {result.wheel})")
    console.print("on the GPU box:", markup=False)
    console.print(f"  tar xzf {result.path.name} && cd {result.run_id} && ./go.sh", markup=False, soft_wrap=True)
    console.print(f"back home: copy {result.run_id}/results.tar.gz here, tar xzf it, then bespoke-kohya report --run {result.run_id}", markup=False, soft_wrap=True)
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    """Sample every epoch (or --epochs) of a run with the fixed prompt suite and seeds."""
    from .runfolder import MAX_EPOCH
    from .settings import MAX_SEED, MAX_SEEDS
    from .sample import sample_run

    doc = sample_run(
        Path(args.run),
        epochs=_int_list(args.epochs, "--epochs", high=MAX_EPOCH, most=MAX_EPOCH + 1),
        prompts_file=Path(args.prompts) if args.prompts else None,
        prompts=args.prompt or None,
        seeds=_int_list(args.seeds, "--seeds", high=MAX_SEED, most=MAX_SEEDS),
        device=args.device,
        include_base=args.include_base,
        base_override=args.base_model,
        dataset_dir=Path(args.dataset) if args.dataset else None,
        control=Path(args.control) if args.control else None,
    )
    for line in doc.get("warnings", []):
        warn([line])
    drawn, where = doc["drawn"], Path(args.run) / "samples" / ("adhoc" if args.prompt else "")
    if drawn:
        console.print(Text.assemble(("sampled", "green"), f" epoch(s) {', '.join(map(str, drawn))} → {where}"), soft_wrap=True)
    else:
        console.print(Text(f"nothing new to draw: every epoch asked for already has these samples in {where}"), soft_wrap=True)
    console.print(Text(f"next: bespoke-kohya report --run {shlex.quote(str(args.run))}"), soft_wrap=True)
    return 0


def cmd_postprocess(args: argparse.Namespace) -> int:
    """Turn full-size generated images into true 24x24 pixel art (+ x8 previews)."""
    from .postprocess import PostprocessOptions, dataset_palette, postprocess_files

    paths: list[Path] = []
    for item in args.images:
        p = Path(item)
        paths.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")) if p.is_dir() else [p])
    if not paths:
        raise UserError(f"no images found in {', '.join(args.images)}")
    palette = None if args.palette in (None, "none") else dataset_palette(Path(args.palette))
    options = PostprocessOptions(method=args.method, palette=palette, max_delta_e=args.max_delta_e, merge={"auto": "auto", "on": True, "off": False}[args.merge], max_colors=args.max_colors)
    records = postprocess_files(paths, Path(args.out), options)
    warn([r["warning"] for r in records if r["warning"]])
    console.print(f"[green]wrote[/] {len(records)} 24x24 image(s) and previews to {args.out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Draw the epochs that have no samples yet (unless --no-sample), then write the epoch-comparison report.

    Exit 1 when the page has nothing to compare (no trained epoch with pictures): its warnings say why.
    """
    if args.compare:
        return cmd_report_compare(args)
    if args.out:
        raise UserError("--out goes with --compare: `report --run RUN` always writes RUN/report/")
    from .report import report_summary, write_report

    run = Path(args.run)
    if not args.no_sample:
        from .engines.session import sample_unsampled

        sample_unsampled(run, console, err_console, "no samples yet", device=args.device)
    page = write_report(run)
    summary = report_summary(run)
    warn(summary["warnings"])
    console.print(f"[green]report[/] {page}")
    if not summary["compared_epochs"]:
        err_console.print(Text.assemble(("nothing to compare: ", "red"), "; ".join(summary["reasons"]) or "no trained epoch has samples"), soft_wrap=True)
        return 1
    console.print(f"compared epochs {', '.join(map(str, summary['compared_epochs']))} × {summary['images_per_epoch']} image(s) each")
    if summary.get("recommended_epoch") is not None:
        console.print(f"recommended epoch: {summary['recommended_epoch']}")
    if summary["reasons"]:
        console.print(summary["reasons"][0], soft_wrap=True, markup=False)  # why that epoch, or that no epoch is good
    return 0


def cmd_report_compare(args: argparse.Namespace) -> int:
    """`report --compare RUN[:EPOCH] ...`: one page with each run's recommended (or chosen) epoch side by side."""
    from .report.compare import write_compare

    if args.device:
        raise UserError("--device goes with --run: `report --compare` draws nothing, it compares what each run has already sampled")
    result = write_compare(list(args.compare), Path(args.out) if args.out else None)
    warn(result.warnings)
    console.print(f"[green]comparison[/] {result.page}", soft_wrap=True)
    for col in result.columns:
        how = "chosen" if col.chosen else "recommended"
        console.print(Text(f"  {col.spec}: epoch {col.epoch} ({how})"), soft_wrap=True)
    console.print(f"{result.pairs} prompt × seed pair(s) in common; {result.settings_differ} setting(s) differ")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Make a collection of new punks from a run's chosen epoch: the best of several candidates each, with metadata."""
    from .generate.collection import GenerateOptions, generate, run_vocabulary

    if args.list_traits:
        table = Table(title=f"Traits of {args.run}'s captions (images with each value)")
        for col in ("trait", "values"):
            table.add_column(col, overflow="fold")
        for trait, values in run_vocabulary(Path(args.run)).table().items():
            table.add_row(trait, ", ".join(f"{v} ×{n}" for v, n in values.items()))
        console.print(table)
        return 0
    if args.out is None or args.count is None:
        raise UserError("generate needs --count N and --out DIR (or --list-traits to see the run's trait values)")
    options = GenerateOptions(
        run=Path(args.run), out=Path(args.out), count=args.count, epoch=args.epoch, seed=args.seed, candidates=args.candidates, rounds=args.rounds,
        traits=Path(args.traits) if args.traits else None, name=args.name, description=args.description, base_uri=args.base_uri,
        resume=args.resume, device=args.device, num_gpus=args.num_gpus, control=Path(args.control) if args.control else None,
    )
    result = generate(options, console=console)
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(result.rejections.items())) or "none"
    resumed = f" (continued after token {result.resumed_from})" if result.resumed_from else ""
    console.print(f"[green]collection[/] {result.out}: {result.tokens} punks{resumed}, {result.candidates} candidates drawn in {result.seconds:.0f} s; left out: {rejected}", soft_wrap=True)
    if result.page:
        console.print(f"page {result.page}", soft_wrap=True)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Run the documented six-step checklist and print a pass/fail table."""
    from .reproduce import ReproduceOptions, format_table, run_checklist

    options = ReproduceOptions(
        preset=args.preset, overrides=list(args.set or []), experimental=args.experimental, cpu=args.cpu, device=args.device,
        dataset=Path(args.dataset) if args.dataset else None, run_dir=Path(args.run_dir) if args.run_dir else None,
    )
    checklist, run_dir = run_checklist(options, console=console, err_console=err_console)
    table = Table(title=f"reproduce: {args.preset}")
    for col in ("step", "checked", "status", "evidence", "why / to run it"):
        table.add_column(col, overflow="fold")
    colours = {"pass": "green", "fail": "red", "skipped": "yellow", "n/a": "dim"}
    rows, commands = format_table(checklist)
    for step, check, status, evidence, note in rows:
        table.add_row(step, check, f"[{colours[status]}]{status}[/]", Text(evidence), Text(note))
    console.print(table)
    for line in commands:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    console.print(f"written: {run_dir / 'reproduce.json'}")
    return checklist.exit_code


# ------------------------------------------------------------------ parser


def _add_preset_args(p: argparse.ArgumentParser, dataset_required: bool = True, preset_required: bool = True) -> None:
    p.add_argument("--preset", required=preset_required, help="preset name from presets/ (see `bespoke-kohya presets`) or a .toml file")
    if dataset_required:
        p.add_argument("--dataset", required=True, help="folder of 24x24 PNG originals with .txt captions")
    else:
        p.add_argument("--dataset", default=None, help="folder of 24x24 PNG originals with .txt captions (default: dataset/, or the stand-in for pixel24)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a preset value, validated like the file (repeatable), e.g. --set network_dim=16")
    p.add_argument("--experimental", action="store_true", help="allow presets marked experimental")


class _Parser(argparse.ArgumentParser):
    """argparse with its refusals as one `error:` line (like UserError) instead of the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        err_console.print(Text.assemble(("error: ", "red"), f"{self.prog}: {message} (see {self.prog} --help)"), soft_wrap=True)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bespoke-kohya", description="Train a generator of 24x24 Bespoke Punks and find its best epoch.")
    parser.add_argument("--version", action="version", version=f"bespoke-kohya {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("presets", help="list presets and their key settings")
    p.add_argument("--explain", action="store_true", help="print every preset field with its meaning")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("render", help="render kohya's TOML files and the prepared dataset")
    _add_preset_args(p)
    p.add_argument("--out", required=True, help="new folder to write (never overwritten)")
    p.set_defaults(func=cmd_render)

    ds = sub.add_parser("dataset", help="dataset tools").add_subparsers(dest="dataset_command", required=True, metavar="SUBCOMMAND")
    p = ds.add_parser("check", help="check a dataset folder and print what was found")
    p.add_argument("folder")
    p.add_argument("--caption-extension", default=".txt")
    p.set_defaults(func=cmd_dataset_check)

    p = ds.add_parser("captions", help="lint the captions (glued, rare and repeated words, dangling phrases, contradictions) and list the trait vocabulary")
    p.add_argument("folder")
    p.add_argument("--json", action="store_true", help="print the problems, counts and trait vocabulary as JSON")
    p.add_argument("--fix", action="store_true", help="write a normalised copy (needs --out); the originals are never changed")
    p.add_argument("--out", default=None, help="new folder for the --fix copy (images, fixed captions, captions.diff)")
    p.add_argument("--words", default=None, help="text file of words never to split (one a line, # comments), e.g. names")
    p.add_argument("--caption-extension", default=".txt")
    p.set_defaults(func=cmd_dataset_captions)

    p = sub.add_parser("doctor", help="what is installed or missing, and how to get it")
    p.add_argument("--preset", default=None, help="also run the pre-flight checks `train` makes for this preset")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a preset value for the checks (repeatable)")
    p.add_argument("--dataset", default=None, help="dataset folder (for the disk and CPU-time estimates; default dataset/)")
    p.add_argument("--cpu", action="store_true", help="check for a CPU run")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("train", help="render a run and train it")
    _add_preset_args(p, dataset_required=False, preset_required=False)
    p.add_argument("--run-dir", default=None, help="run directory (default runs/<preset>-<UTC time>)")
    p.add_argument("--dry-run", action="store_true", help="render the run and print the exact command, train nothing")
    p.add_argument("--resume", default=None, metavar="RUN", help="continue an interrupted run from its saved state")
    p.add_argument("--num-gpus", type=_at_least(1, int, "a whole number"), default=1, help="GPUs for accelerate's multi-GPU launcher")
    p.add_argument("--cpu", action="store_true", help="train on the CPU (no GPU needed; slow for kohya presets)")
    p.add_argument("--skip-preflight", action="store_true", help="launch sd-scripts without the pre-flight checks (GPU, base model, memory, disk, sd-scripts)")
    p.add_argument("--no-sample", action="store_true", help="do not draw the epochs with the preset's prompts × seeds when training ends (report does it later)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("bundle", help="pack a rendered run, this package and go.sh into one .tar.gz for a rented GPU box")
    _add_preset_args(p)
    p.add_argument("--out", required=True, help="new NAME.tar.gz to write (never overwritten); the run folder inside is NAME")
    p.add_argument("--include-base", action="store_true", help="also pack the local base model (file or folder) into the run's base/")
    p.add_argument("--wheel", default=None, help="use this bespoke-kohya wheel instead of building one from the checkout")
    p.set_defaults(func=cmd_bundle)

    p = sub.add_parser("sample", help="sample each epoch with the fixed prompts x seeds, and post-process to 24x24")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--epochs", help="comma-separated epochs (default: all recorded)")
    p.add_argument("--prompts", help="file with one prompt per line (default: the preset's suite)")
    p.add_argument("--prompt", action="append", help="a prompt (repeatable), e.g. --prompt \"lady, blonde hair, green background\"")
    p.add_argument("--seeds", help="comma-separated seeds (default: the preset's)")
    p.add_argument("--device", choices=["cuda", "mps", "cpu"], help="default: cuda, else mps, else cpu")
    p.add_argument("--base-model", help="use this base model (hub id, diffusers folder or single file) instead of the run's")
    p.add_argument("--include-base", action=argparse.BooleanOptionalAction, default=None,
                   help="also sample the base model without a LoRA as epoch 0 (default: on for kohya runs, drawn once; pixel24 has no base)")
    p.add_argument("--dataset", help="training images for palette snapping (default: the run's dataset)")
    p.add_argument("--control", metavar="DIR", help="24x24 images whose exact pixel edges the suite follows (runs that draw from a picture, e.g. a ControlNet run; default: the held-out originals)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("postprocess", help="turn full-size images into true 24x24 pixel art")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--method", choices=["nearest", "grid"], default="grid", help="grid: detect the art-pixel grid (default); nearest: plain NEAREST resize")
    p.add_argument("--palette", default="none", help="dataset folder whose colours close colours snap to, or none")
    p.add_argument("--max-delta-e", type=_at_least(0, float, "a finite number"), default=4.0, help="snap only colours closer than this ΔE76")
    p.add_argument("--merge", choices=["auto", "on", "off"], default="auto", help="merge the image's own near-identical colours: auto = only when the image is noisy (default)")
    p.add_argument("--max-colors", type=int, default=None, help="cap the colour count (median cut, no dithering)")
    p.set_defaults(func=cmd_postprocess)

    p = sub.add_parser("report", help="write the epoch-comparison report of a run, or compare runs (--compare)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="run directory")
    which.add_argument("--compare", nargs="+", metavar="RUN[:EPOCH]",
                       help="compare 2+ runs on one page: each run's recommended epoch, or the one after a trailing :EPOCH (e.g. runs/a:3)")
    p.add_argument("--out", default=None, help="with --compare: new folder for the page (default: compare-<UTC time> beside the first run)")
    p.add_argument("--no-sample", action="store_true", help="compare only what is already sampled (default: first draw every epoch that has no samples yet)")
    p.add_argument("--device", choices=["cuda", "mps", "cpu"], help="device for that sampling (default: cuda, else mps, else cpu)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("generate", help="make a collection of new punks from a run's chosen epoch (images, ERC-721 metadata, a page)")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--out", default=None, help="new folder for the collection (refused if it exists, unless --resume)")
    p.add_argument("--count", type=_at_least(1, int, "a whole number"), default=None, help="punks in the collection")
    p.add_argument("--list-traits", action="store_true", help="print the trait values of the run's captions (for a --traits file) and stop")
    p.add_argument("--epoch", type=_at_least(1, int, "a whole number"), default=None, help="epoch to draw from (default: the one the run's report recommends)")
    p.add_argument("--seed", type=_at_least(0, int, "a whole number"), default=0, help="the collection's seed (token n depends only on it, n, the run, the epoch and the settings)")
    p.add_argument("--candidates", type=_at_least(1, int, "a whole number"), default=4, help="candidates drawn per token per round; the best is kept (default 4)")
    p.add_argument("--rounds", type=_at_least(1, int, "a whole number"), default=3, help="rounds of candidates a token gets before generate stops (default 3)")
    p.add_argument("--traits", default=None, help="TOML file of trait weights, forbidden values and combinations (see docs in README: Make a collection)")
    p.add_argument("--name", default="New Bespoke Punks", help="collection name: each token is \"<name> #<n>\"")
    p.add_argument("--description", default="New punks drawn in the style of the Bespoke Punks.", help="description in each token's metadata")
    p.add_argument("--base-uri", default=None, help="where the images will live (e.g. ipfs://CID): metadata image = <base-uri>/<n>-480.png")
    p.add_argument("--resume", action="store_true", help="continue a collection after its last finished token (same settings)")
    p.add_argument("--device", choices=["cuda", "mps", "cpu"], help="default: cuda, else mps, else cpu")
    p.add_argument("--num-gpus", type=_at_least(1, int, "a whole number"), default=1, help="processes drawing candidates at once, one per GPU (accelerate); the same collection as one")
    p.add_argument("--control", metavar="DIR", help="ControlNet runs: 24x24 images whose exact edges the candidates follow, one picked per candidate (default: the run's held-out originals, which the near-copy check then mostly rejects)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("reproduce", help="the documented six-step checklist with a pass/fail table")
    p.add_argument("--preset", default="sd15_512", help="preset to check (default sd15_512, the documented recipe)")
    p.add_argument("--dataset", default=None, help="dataset folder (default dataset/, or the stand-in for pixel24)")
    p.add_argument("--run-dir", default=None, help="run directory (default runs/reproduce-<preset>-<UTC time>)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a preset value (repeatable)")
    p.add_argument("--experimental", action="store_true", help="allow presets marked experimental")
    p.add_argument("--cpu", action="store_true", help="train on the CPU")
    p.add_argument("--device", choices=["cuda", "mps", "cpu"], help="sampling device")
    p.set_defaults(func=cmd_reproduce)

    from .engines.protocol import CommandGroups

    for name in engine_names():  # each engine's own subcommands (kohya: vendor, smoke; pixel24: dataset standin)
        get_engine(name).register_commands(CommandGroups(sub, ds))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        for i, line in enumerate(str(exc).splitlines()):
            err_console.print(Text.assemble(("error: " if i == 0 else "       ", "red"), line), soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/]")
        return 130
    except OSError as exc:
        if read_only(exc):  # a read-only mount or a folder without write permission: the user's to fix, not a bug
            err_console.print(Text.assemble(("error: ", "red"), f"{exc.filename or 'a file'}: cannot write it ({exc.strerror}); make the folder writable "
                                            "or work on a copy of it (for a run: cp -r RUN COPY)"), soft_wrap=True)
            return 2
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # Every file is written to a temporary name and renamed into place, so what existed before is intact.
        err_console.print(Text.assemble(("error: ", "red"), f"disk full while writing {exc.filename or 'a file'}: free some space, then run the "
                                        "same command again (a training run continues with `train --resume RUN`); files written before are intact"), soft_wrap=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
