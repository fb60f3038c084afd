"""`doctor`'s kohya rows: sd-scripts and its interpreter, the offline tokenizer, and the presets' base models."""

from __future__ import annotations

from pathlib import Path

from ..protocol import DoctorRow


def rows(repo_root: Path) -> list[DoctorRow]:
    """sd-scripts' rows, then whether each kohya preset's base model is available offline."""
    from .vendor import doctor_rows as sd_scripts_rows

    out: list[DoctorRow] = [(component, not fix, status, fix) for component, status, fix in sd_scripts_rows(repo_root)]
    return out + base_model_rows()


def base_model_rows() -> list[DoctorRow]:
    """Whether the kohya presets' base models are available offline (hub cache or local file)."""
    from ...presets import PRESETS_DIR, available_presets, read_preset_data, validate_preset
    from .preflight import Level, Probes, RunNeeds, check_base

    out: list[DoctorRow] = []
    seen: set[str] = set()
    # Offline here: the cache and local files only; `doctor --preset P` also asks the hub.
    probes = Probes(offline=lambda: True)
    for name in available_presets(PRESETS_DIR):
        path = PRESETS_DIR / f"{name}.toml"
        needs = RunNeeds.from_resolved(validate_preset(read_preset_data(path), path.name).model_dump(mode="json"))
        if needs is None or needs.base in seen:
            continue
        if not needs.base:
            out.append((f"base model ({name})", False, "needs your local checkpoint", f"--set pretrained_model_name_or_path=/path/model.safetensors with --preset {name}"))
            continue
        seen.add(needs.base)
        check = check_base(needs, probes)
        out.append((f"base model {needs.base}", check.level is Level.OK, check.cause.removeprefix(f"base model {needs.base}: "), check.fix))
    return out
