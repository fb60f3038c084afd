"""Self-contained run bundles: render a run here, train it on a rented GPU box with one script.

`bespoke-kohya bundle --preset P --dataset DIR --out NAME.tar.gz` writes one tarball:

    NAME/                   the run directory (its name is the file name without .tar.gz)
      run.json              status "rendered"; the dataset recorded by name and content hash only
      config/ data/         rendered exactly as `bespoke-kohya render` does
      wheels/*.whl          this package, installed on the box into NAME/.venv
      vendor/constraints.txt  pins for the engine's own environment (kohya: sd-scripts)
      base/                 only with --include-base: the local base model
      bundle.json           what was packed, for `go.sh` and for the record
      go.sh                 the entry script: install, check the GPU, train, sample, report

On the box `tar xzf NAME.tar.gz && cd NAME && ./go.sh` runs every stage inside NAME/ and
skips the ones already done, so it is safe to re-run after a disconnect.

One module per job: `build.py` (render the run, relocate its base, write go.sh and
bundle.json, pack), `wheel.py` (this package as a wheel), `tarball.py` (reproducible
tarballs, the leak scan), `results.py` (what travels home), `gohelper.py` (go.sh's helper,
`python -m bespoke_kohya.bundle`). This file imports nothing, and gohelper, results and
tarball only the standard library: go.sh runs them from the bundled wheel before anything
is installed.
"""
