"""A toy engine that lives only in the tests: it proves a new engine is one package plus one registry line.

It "learns" the training images' most common colours and paints flat-colour 24×24 punks
with them (a background, a head, eyes), seeded per image. Registered by the tests with
``monkeypatch.setitem(REGISTRY, "toy", "tests.helpers.toy_engine")``; nothing in the package is edited.
"""
