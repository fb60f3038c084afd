"""`generate`: the last stage of the pipeline, a collection of new punks from the chosen epoch of a run.

  traits.py      the run's captions as a trait vocabulary; each token's traits and prompt; `--traits FILE`
  select.py      each candidate judged (near-copy, duplicate, background, off-style, critic); the most realistic passing one kept
  collection.py  the stage: epoch, pilot draws and critic, candidates through the engine's sampler, tokens in order
  layout.py      the collection folder and every read and write of it
  page.py        index.html (templates/collection.html.j2 + collection.css)
"""
