"""Captions as phrases of known words, and the small encoder that turns them into one vector.

A caption is split on commas into phrases, each phrase into normalised words. Words seen
at least ``vocab_min_count`` times in the training captions form the vocabulary (stored
in ``pixel24.json``). A phrase becomes the mean of its word embeddings passed through a
small MLP (so "green background" and "green eyes" differ), the phrase vectors of a
caption are summed, and the result is added to the U-Net's timestep embedding. An empty
caption is the learned "null" condition used for classifier-free guidance.
"""

from __future__ import annotations

import re
from collections import Counter

import torch
from torch import nn

_WORD = re.compile(r"[a-z0-9]+")
# Index 0 is reserved so that a vocabulary never shifts when it is extended (fine-tuning).
_RESERVED = ["<reserved>"]

Phrases = list[list[int]]  # one caption: phrases, each a list of word ids


def split_phrases(caption: str) -> list[list[str]]:
    """A caption as comma-separated phrases of lower-case words (punctuation dropped)."""
    phrases = [_WORD.findall(part.lower()) for part in caption.split(",")]
    return [p for p in phrases if p]


def build_vocab(captions: list[str], min_count: int, base: list[str] | None = None) -> list[str]:
    """Words seen at least ``min_count`` times, in a stable order, appended to ``base`` (kept as is)."""
    counts = Counter(word for caption in captions for phrase in split_phrases(caption) for word in phrase)
    vocab = list(base) if base else list(_RESERVED)
    known = set(vocab)
    vocab += sorted(w for w, n in counts.items() if n >= min_count and w not in known)
    return vocab


def encode_caption(vocab_index: dict[str, int], caption: str) -> tuple[Phrases, list[str]]:
    """(phrases as word ids, unknown words in order of appearance); phrases with no known word are dropped."""
    phrases: Phrases = []
    unknown: list[str] = []
    for words in split_phrases(caption):
        ids = [vocab_index[w] for w in words if w in vocab_index]
        unknown += [w for w in words if w not in vocab_index and w not in unknown]
        if ids:
            phrases.append(ids)
    return phrases, unknown


class PhraseEncoder(nn.Module):
    """Caption phrases -> one vector added to the U-Net's timestep embedding."""

    def __init__(self, vocab_size: int, dim: int, out_dim: int) -> None:
        super().__init__()
        self.words = nn.EmbeddingBag(vocab_size, dim, mode="mean")
        # Non-linear so that a phrase is more than the sum of its words ("green eyes" vs "green background").
        self.phrase = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(dim, out_dim))
        self.null = nn.Parameter(torch.zeros(out_dim))

    def forward(self, captions: list[Phrases]) -> torch.Tensor:
        """``captions[i]`` is a list of phrases (word-id lists); an empty list is the null condition."""
        device = self.null.device
        flat: list[int] = []
        offsets: list[int] = []
        owner: list[int] = []
        for i, phrases in enumerate(captions):
            for ids in phrases:
                offsets.append(len(flat))
                flat += ids
                owner.append(i)
        out = self.null.expand(len(captions), -1).clone()
        if not owner:
            return out
        vectors = self.phrase(self.words(torch.tensor(flat, device=device), torch.tensor(offsets, device=device)))
        owners = torch.tensor(owner, device=device)
        # A sum, not a mean: phrases every caption shares ("pixel art", "24x24") would otherwise
        # dilute the ones that say something, and the U-Net absorbs their constant part as a bias.
        sums = torch.zeros(len(captions), vectors.shape[1], device=device).index_add_(0, owners, vectors)
        has = torch.bincount(owners, minlength=len(captions)) > 0
        out[has] = self.out(sums)[has]
        return out

    def resize_vocab(self, size: int) -> None:
        """Grow the word table (fine-tuning on captions with new words); old rows are kept."""
        old = self.words.weight.data
        if size < old.shape[0]:
            raise ValueError("a vocabulary can only grow")
        table = nn.EmbeddingBag(size, old.shape[1], mode="mean").to(old.device)
        with torch.no_grad():
            table.weight[: old.shape[0]] = old
            table.weight[old.shape[0] :].normal_(0, old.std().item() or 1.0)
        self.words = table


