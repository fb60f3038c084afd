"""The kohya engine's own subcommands: `vendor` (install sd-scripts) and `smoke` (prove an install works offline)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ...paths import REPO_ROOT


def register(sub: argparse._SubParsersAction) -> None:
    """Add `vendor` and `smoke` to the `bespoke-kohya` command."""
    from .vendor import DEFAULT_TORCH_SPEC, SD_SCRIPTS_TAG, SD_SCRIPTS_UPSTREAM

    p = sub.add_parser("smoke", help="prove this install works offline in minutes: 2 tiny sd-scripts epochs on the CPU, then sampling")
    p.add_argument("--dataset", default=None, help="take 8 images from this folder (default: dataset/, else punks drawn in code)")
    p.add_argument("--work-dir", default=None, help="folder for the run and samples (default: a temporary folder, removed when every stage passes)")
    p.add_argument("--keep", action="store_true", help="keep the run and samples even when every stage passes")
    p.add_argument("--tokenizer-cache", metavar="DIR", help="only fill this sd-scripts --tokenizer_cache_dir with the offline CLIP tokenizers")
    p.add_argument("--random-sd15", metavar="DIR", help="only write a random-weight SD1.5 diffusers folder here")
    p.set_defaults(func=cmd_smoke)

    p = sub.add_parser("vendor", help="install kohya sd-scripts into vendor/sd-scripts with its own venv (make vendor)")
    p.add_argument("--source", help=f"clone from this URL or local clone/mirror (default: $SD_SCRIPTS_SRC, else {SD_SCRIPTS_UPSTREAM})")
    p.add_argument("--tag", default=SD_SCRIPTS_TAG, help=f"tag or commit to check out (default {SD_SCRIPTS_TAG}, the tested one)")
    p.add_argument("--torch", dest="torch_spec", help=f"pip arguments for torch (default: $SD_SCRIPTS_TORCH, else '{DEFAULT_TORCH_SPEC}')")
    p.add_argument("--write-key-lists", type=Path, metavar="DIR", help="instead of installing, write the key lists read from the installed sd-scripts' own parsers into DIR (tests/data)")
    p.add_argument("--repo-root", type=Path, default=REPO_ROOT, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_vendor)


def cmd_smoke(args: argparse.Namespace) -> int:
    """Prove this install trains and samples offline in minutes: 2 tiny epochs through sd-scripts on the CPU, then each epoch's LoRA sampled."""
    from rich.table import Table
    from rich.text import Text

    from ...console import console
    from .smoke import run_smoke

    if args.tokenizer_cache or args.random_sd15:
        from .offline_sd import build_random_sd15, write_tokenizer_cache

        for entry in write_tokenizer_cache(Path(args.tokenizer_cache)) if args.tokenizer_cache else []:
            console.print(f"tokenizer: {entry}", markup=False)
        if args.random_sd15:
            console.print(f"random SD1.5: {build_random_sd15(Path(args.random_sd15))}", markup=False)
        return 0
    rows = run_smoke(work_dir=Path(args.work_dir) if args.work_dir else None,
                     dataset=Path(args.dataset) if args.dataset else None, keep=args.keep, console=console)
    table = Table(title="bespoke-kohya smoke")
    for col in ("stage", "result", "detail"):
        table.add_column(col, overflow="fold")
    for name, ok, detail in rows:
        result = "[green]pass[/]" if ok else ("[yellow]skipped[/]" if detail.startswith("skipped") else "[red]FAIL[/]")
        table.add_row(name, result, Text(detail))
    console.print(table)
    return 0 if all(ok for _, ok, _ in rows) else 1


def cmd_vendor(args: argparse.Namespace) -> int:
    """Install kohya sd-scripts into vendor/sd-scripts (its own venv), or write its key lists."""
    from ...console import console
    from .vendor import install, write_key_lists

    if args.write_key_lists:
        for path, names in write_key_lists(args.repo_root, args.write_key_lists):
            console.print(f"wrote {path} ({names} names)", markup=False)
        return 0
    sd = install(args.repo_root, source=args.source, tag=args.tag, torch_spec=args.torch_spec)
    console.print(json.dumps(sd.to_dict(), indent=2), markup=False)
    return 0
