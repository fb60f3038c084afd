"""A collection folder: its layout, and every read and write of it (each write atomic).

    OUT/generate.json            the settings every token depends on (written first; --resume must match)
    OUT/pilot.safetensors        the pilot draws the critic learned from (uint8 24×24 art)
    OUT/images/<n>.png           token n's punk, the exact 24×24 art
    OUT/images/<n>-480.png       the same, NEAREST ×20, for marketplaces
    OUT/candidates/<n>.json      every candidate drawn for token n: seed, critic score, reason it was left out
    OUT/candidates/<n>-<k>.png   each candidate left out (the page shows them with their reason)
    OUT/metadata/<n>.json        ERC-721 / OpenSea metadata; written last, so it marks token n finished
    OUT/collection.json          settings, tokens, rarity table, provenance hash, rejections by reason (at the end)
    OUT/index.html               contact sheet, rarity table, rejected candidates (at the end)
    OUT/.generate.lock           held while generate writes the folder
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..atomic import write_atomic, write_json_atomic
from ..errors import UserError
from ..images import load_rgb, save_png_atomic
from ..regular import read_regular

SETTINGS = "generate.json"
PILOT = "pilot.safetensors"
IMAGES = "images"
CANDIDATES = "candidates"
METADATA = "metadata"
COLLECTION = "collection.json"
PAGE = "index.html"


def image_name(n: int, scale: int = 1) -> str:
    return f"{n}.png" if scale == 1 else f"{n}-{24 * scale}.png"


def candidate_path(out: Path, n: int, k: Any) -> Path | None:
    """Where candidate ``k`` of token ``n`` left out is kept; None unless ``k`` (read from candidates/<n>.json) is a
    candidate number, so a record naming another file is never followed."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        return None
    return out / CANDIDATES / f"{n}-{k}.png"


def open_folder(out: Path, resume: bool) -> Path:
    """The collection folder: new (refused when it exists), or with --resume one that generate made."""
    out = Path(out)
    if resume:
        if not (out / SETTINGS).is_file():
            raise UserError(f"--resume {out}: not a collection folder made by generate (no {SETTINGS}); leave --resume out to start one")
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: already exists; a collection is never overwritten: choose another --out, or --resume to continue this one")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist; create it first")
    out.mkdir(exist_ok=True)
    return out


# A collection's JSON files are a few KiB; a folder given to --resume may come from elsewhere, so what is read
# back is a regular file (never a link or FIFO) of bounded size.
MAX_JSON_BYTES = 64 * 1024 * 1024
MAX_IMAGE_BYTES = 16 * 1024 * 1024


def _read_json(path: Path, fix: str) -> Any:
    data = read_regular(path, limit=MAX_JSON_BYTES, what="collection file", fix=fix)
    if data is None:
        return None
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UserError(f"{path}: unreadable ({str(exc)[:200]}); {fix}") from None


def check_settings(out: Path, settings: dict[str, Any], resume: bool) -> None:
    """Write the settings of a new collection; a resumed one must have been made with the same."""
    path = out / SETTINGS
    before = _read_json(path, "it is written by generate: start a new collection in another --out folder")
    if before is None:
        write_json_atomic(path, settings)
        return
    if before != settings:
        keys = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k)) if isinstance(before, dict) else ["(all)"]
        raise UserError(f"--resume {out}: made with other settings ({', '.join(keys)} differ); continue it with the same run, epoch, seed and options, "
                        "or start a new collection in another --out folder")


def finished_tokens(out: Path, count: int) -> int:
    """How many tokens from #1 on are finished (their metadata written last, and their image there)."""
    n = 0
    while (out / METADATA / f"{n + 1}.json").is_file() and (out / IMAGES / image_name(n + 1)).is_file():
        n += 1
    if n > count:
        raise UserError(f"{out}: already holds {n} tokens, more than --count {count}; give --count {n} or more")
    return n


def read_token_art(out: Path, n: int) -> np.ndarray:
    return load_rgb(out / IMAGES / image_name(n))


def rejection_counts(out: Path, done: int) -> dict[str, int]:
    """Rejections by reason among the finished tokens' candidates (a resumed collection keeps counting)."""
    counts: Counter[str] = Counter()
    for n in range(1, done + 1):
        counts.update(str(c["reason"]) for c in read_candidates(out, n) if c.get("reason"))
    return dict(counts)


def write_pilot(path: Path, pilot: np.ndarray) -> None:
    from safetensors.numpy import save_file

    write_atomic(path, lambda tmp: save_file({"art": np.ascontiguousarray(pilot, np.uint8)}, str(tmp)))


def read_pilot(path: Path) -> np.ndarray:
    from safetensors.numpy import load

    fix = "delete it and run generate again with --resume"
    data = read_regular(path, limit=MAX_IMAGE_BYTES, what="pilot file", fix=fix)  # a FIFO or link in its place is refused
    if data is None:
        raise UserError(f"{path}: missing; {fix}")
    try:
        art = load(data)["art"]
    except Exception as exc:  # safetensors raises its own error type
        raise UserError(f"{path}: unreadable ({exc.__class__.__name__}); delete it and run generate again with --resume") from None
    if art.dtype != np.uint8 or art.ndim != 4 or art.shape[1:] != (24, 24, 3):
        raise UserError(f"{path}: holds {art.dtype} {tuple(art.shape)}, not 24×24 art; delete it and run generate again with --resume")
    return art


def write_candidates(out: Path, n: int, records: list[dict[str, Any]]) -> None:
    """Token n's candidates: the images of those not kept, then the record of all of them."""
    for r in records:
        if not r["kept"]:  # every one not kept, left out or merely not the best: the artist may prefer another
            path = candidate_path(out, n, r["k"])
            assert path is not None  # k is the collection's own counter
            save_png_atomic(r["art"], path)
    write_json_atomic(out / CANDIDATES / f"{n}.json", {"token": n, "candidates": [{k: v for k, v in r.items() if k != "art"} for r in records]})


def read_candidates(out: Path, n: int) -> list[dict[str, Any]]:
    doc = _read_json(out / CANDIDATES / f"{n}.json", "delete that token's candidates/ files and metadata, then run generate again with --resume")
    found = doc.get("candidates") if isinstance(doc, dict) else None
    return [c for c in found if isinstance(c, dict)] if isinstance(found, list) else []


def write_token(out: Path, token: Any, metadata: dict[str, Any]) -> None:
    """Token n's images, then its metadata (the mark that it is finished)."""
    art = Image.fromarray(np.asarray(token.art, np.uint8))
    save_png_atomic(art, out / IMAGES / image_name(token.n))
    save_png_atomic(art.resize((24 * 20, 24 * 20), Image.NEAREST), out / IMAGES / image_name(token.n, 20))
    write_json_atomic(out / METADATA / f"{token.n}.json", metadata)


def read_metadata(out: Path, n: int) -> dict[str, Any]:
    doc = _read_json(out / METADATA / f"{n}.json", "delete that token's metadata and images and run generate again with --resume")
    if not isinstance(doc, dict):
        raise UserError(f"{out / METADATA / f'{n}.json'}: not a metadata object; delete it and its images and run generate again with --resume")
    return doc


def finished_dna(out: Path, done: int) -> set[tuple[tuple[str, str], ...]]:
    """The traits (DNA) tokens 1..done were drawn with, from their metadata: the tokens after them must not repeat one."""
    taken = set()
    for n in range(1, done + 1):
        dna = (read_metadata(out, n).get("generator") or {}).get("dna")
        if not (isinstance(dna, list) and dna and all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in dna)):
            raise UserError(f"{out / METADATA / f'{n}.json'}: generator.dna is missing or not a list of [trait, value] pairs; "
                            "delete that token's metadata and images and run generate again with --resume")
        taken.add(tuple(sorted((t, v) for t, v in dna)))
    return taken


def _sha256(path: Path) -> str:
    data = read_regular(path, limit=MAX_IMAGE_BYTES, what="image", fix="delete that token's metadata and images and run generate again with --resume")
    if data is None:
        raise UserError(f"{path}: missing; delete that token's metadata and run generate again with --resume")
    return hashlib.sha256(data).hexdigest()


def provenance(out: Path, count: int) -> tuple[str, list[str]]:
    """(provenance hash, each image's sha256): sha256 of the 24×24 images' sha256s, concatenated in token order."""
    shas = [_sha256(out / IMAGES / image_name(n)) for n in range(1, count + 1)]
    return hashlib.sha256("".join(shas).encode("ascii")).hexdigest(), shas


def rarity(tokens: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """trait -> value -> {count, share} over the collection (a token without the trait counts as "none")."""
    traits = sorted({a["trait_type"] for t in tokens for a in t["attributes"]})
    out: dict[str, dict[str, dict[str, float]]] = {}
    for trait in traits:
        values = Counter(next((a["value"] for a in t["attributes"] if a["trait_type"] == trait), "none") for t in tokens)
        out[trait] = {v: {"count": c, "share": round(c / len(tokens), 4)} for v, c in values.most_common()}
    return out


def write_collection(out: Path, settings: dict[str, Any], count: int, vocabulary: dict[str, dict[str, int]], rejections: dict[str, int]) -> dict[str, Any]:
    """collection.json, once every token is finished; returns it."""
    metas = [read_metadata(out, n) for n in range(1, count + 1)]
    proof, shas = provenance(out, count)
    listed = [{"token": n, "name": m.get("name"), "image": m.get("image"), "sha256": sha, "attributes": m.get("attributes", []),
               **{k: (m.get("generator") or {}).get(k) for k in ("prompt", "seed", "critic_score", "realism_score", "candidates_drawn", "nearest_training_punk", "nearest_distance")}}
              for n, (m, sha) in enumerate(zip(metas, shas), start=1)]
    doc = {"version": 1, "settings": settings, "count": count, "provenance_sha256": proof, "tokens": listed, "rarity": rarity(listed),
           "rejections": dict(sorted(rejections.items())), "candidates_drawn": sum(t["candidates_drawn"] or 0 for t in listed),
           "vocabulary": vocabulary}
    write_json_atomic(out / COLLECTION, doc)
    return doc


def write_page(out: Path, html: str) -> Path:
    page = out / PAGE
    write_atomic(page, lambda tmp: tmp.write_text(html, encoding="utf-8"))
    return page
