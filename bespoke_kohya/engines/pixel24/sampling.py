"""Drawing with a pixel24 model: MaskGIT-style iterative unmasking with classifier-free guidance, then re-drawing the least likely pixels.

Start with every pixel masked. At each of ``steps`` steps the model gives logits for
every pixel; guidance mixes the captioned and the empty-caption logits
(``uncond + g·(cond − uncond)``); a colour is drawn for each masked pixel at
``temperature``; the most confident of them are kept and the rest masked again, so that
the masked share follows a cosine schedule down to zero (Chang et al., MaskGIT, 2022).
Confidence is the drawn colour's log-probability plus Gumbel noise that fades over the
steps, so early choices vary between seeds while late ones follow the model.

A pixel, once drawn, is never revisited by MaskGIT, so an unlucky early draw stays as a
stray wrong-colour pixel. Refinement fixes that with the model as its own critic (in the
spirit of Token-Critic, Lezama et al. 2022, and ReMDM's re-masking, Wang et al. 2025):
each round masks every pixel once, in ``CRITIC_GROUPS`` random groups, scores each pixel's
colour by its log-probability given the others, masks the ``refine_share`` least likely
again and re-draws them over ``refine_steps`` steps at ``refine_temperature``.

Measured on the Bespoke fine-tune (160 held-out-caption samples, two-sample accuracy
averaged over 4 draws): 2 rounds of 10% took it from 0.76 to 0.71, colours per image from
58 to 45 and orphan pixels from 0.20 to 0.14; 25% re-drawn or temperature 0.7 was worse
(benchmarks/README.md).

Version 3's parts, all off by default (version 2's pixels): ``refine_components`` scores and
re-draws a small one-colour area whole, ``refine_rare_colours`` re-draws the pixels of colours an
image uses on only a few pixels, from its other colours; a model with a background head draws
each image's background colour first (``background_from_caption``: among the palette colours of the
colour a prompt names, then ``background_repaint``: the drawn background repainted in it before
refinement, and ``background_flatten``: its near shades reached from the edge painted flat after;
measured, the head alone followed a caption's colour 0.40 of the time, told the name 0.89, repainted
0.98); ``batch`` sets the images per forward pass. Every image
follows its own unmasking schedule (from its own masked count), so an image never depends on
its batch-mates even when refinement re-masks different counts per image.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ...errors import UserError
from ...paths import ART
from .model import Pixel24Model
from .text import Phrases, encode_caption

SAMPLE_BATCH = 16  # images per forward pass, fixed: CPU kernels round differently for other batch sizes
PIXELS = ART * ART
CHOICE_NOISE = 2.0  # Gumbel scale on the confidences at the first step, fading to 0
CRITIC_GROUPS = 4  # a pixel is scored with a quarter of the image masked: the rest is context, as in training


def encode_prompt(model: Pixel24Model, prompt: str) -> tuple[Phrases, list[str]]:
    """A prompt as phrases of word ids, plus the words the model never saw in training (reported, not hidden).

    Glued words are split first ("greybackground" -> "grey background"); words in the vocabulary are never split.
    """
    from ...captions import normalise_caption

    return encode_caption(model.vocab_index, normalise_caption(prompt, model.vocab))


def _gumbel(shape: tuple[int, ...], generators: list[torch.Generator]) -> torch.Tensor:
    """Gumbel noise, each image's from its own generator (an image never depends on its batch-mates)."""
    u = torch.stack([torch.rand(shape, generator=g) for g in generators])
    # -log(-log(u)), in place: the same values without four (B, 24, 24, K) temporaries per step
    return u.clamp_(1e-10, 1.0 - 1e-7).log_().neg_().log_().neg_()


def _guided(forward: Callable[..., torch.Tensor], model: Pixel24Model, x: torch.Tensor, conditions: torch.Tensor,
            guidance: float) -> torch.Tensor:
    """``forward`` (the model's logits or features) of indices ``x`` (B, 24, 24), index K = masked, mixed as
    ``uncond + g·(cond − uncond)`` when guided: one batch of twice the images, the captioned and the empty caption."""
    k = len(model.palette)
    x = x.to(model.device)
    ratio = (x == k).float().mean(dim=(1, 2))
    if guidance == 1.0:
        return forward(x, ratio, conditions)
    cond, uncond = forward(torch.cat([x, x]), torch.cat([ratio, ratio]), conditions).chunk(2)
    return uncond + guidance * (cond - uncond)


def _logits(model: Pixel24Model, x: torch.Tensor, conditions: torch.Tensor, guidance: float) -> torch.Tensor:
    """(B, 24, 24, K) guided logits on the CPU for indices ``x`` (B, 24, 24), index K = masked."""
    return _guided(model.logits, model, x, conditions, guidance).permute(0, 2, 3, 1).float().cpu()


def _logits_where(model: Pixel24Model, x: torch.Tensor, conditions: torch.Tensor, guidance: float, where: torch.Tensor) -> torch.Tensor:
    """(M, K) guided logits on the CPU of only the M pixels ``where`` (B, 24, 24) is true, in ``x[where]``'s order (fast_draw).

    Guidance mixes the features, not the logits: the palette projection is linear, so the mix projects to the same
    ``uncond + g·(cond − uncond)`` of the logits, for one projection of the pixels drawn instead of two of all 576 × K."""
    features = _guided(model.features, model, x, conditions, guidance)
    picked = features.permute(0, 2, 3, 1)[where.to(model.device)]
    return model.net.project(picked, model.lab).float().cpu()


def _categorical(logp: torch.Tensor, counts: list[int], generators: list[torch.Generator]) -> torch.Tensor:
    """(M,) one colour per row of ``logp`` (M, K), drawn from its probabilities by inverse CDF with one uniform number per
    row, rows ``counts[i]`` at a time from image i's generator: the same distribution as Gumbel-max, from one random
    number a pixel instead of K (the Gumbel noise over 576 × K was a twelfth of drawing)."""
    u = torch.cat([torch.rand(n, generator=g) for n, g in zip(counts, generators)])
    cdf = logp.exp().cumsum(dim=-1)
    # right=True: the first colour whose cumulative share exceeds u·total, so a colour of probability 0 is never drawn
    return torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0].clamp_(max=logp.shape[-1] - 1)


def _draw(model: Pixel24Model, x: torch.Tensor, masked: torch.Tensor, conditions: torch.Tensor, guidance: float, temperature: float,
          generators: list[torch.Generator], allowed: torch.Tensor | None, fast: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 24, 24) colours drawn at ``temperature`` for the ``masked`` pixels of ``x``, and their log-probabilities (the
    MaskGIT confidence); both meaningful only where ``masked``. ``fast`` (fast_draw): those pixels alone are scored."""
    k, b = len(model.palette), len(generators)
    if not fast:
        logp = (_logits(model, x, conditions, guidance) / max(temperature, 1e-4)).log_softmax(dim=-1)
        if allowed is not None:
            logp = torch.where(allowed[:, None, None, :], logp, torch.full_like(logp, -math.inf))
        drawn = (logp + _gumbel((ART, ART, k), generators)).argmax(dim=-1)  # Gumbel-max: a draw at this temperature
        return drawn, logp.gather(-1, drawn[..., None])[..., 0]
    logp = (_logits_where(model, x, conditions, guidance, masked) / max(temperature, 1e-4)).log_softmax(dim=-1)
    if allowed is not None:
        image = torch.arange(b)[:, None, None].expand_as(masked)[masked]  # each row's image
        logp = torch.where(allowed[image], logp, torch.full_like(logp, -math.inf))
    picked = _categorical(logp, masked.view(b, -1).sum(dim=1).tolist(), generators)
    drawn, confidence = torch.full_like(x, k), torch.zeros(x.shape)
    drawn[masked], confidence[masked] = picked, logp.gather(-1, picked[:, None])[:, 0]
    return drawn, confidence


def _remask(x: torch.Tensor, masked: torch.Tensor, confidence: torch.Tensor, still: list[int], k: int) -> torch.Tensor:
    """``x`` with each image's ``still[i]`` least confident of its ``masked`` pixels masked (index ``k``) again."""
    b = len(x)
    keep = torch.tensor(still)
    confidence = torch.where(masked, confidence, torch.full_like(confidence, math.inf)).view(b, -1)
    threshold = confidence.sort(dim=1).values.gather(1, (keep - 1).clamp(min=0)[:, None])
    again = (confidence <= threshold) & masked.view(b, -1) & (keep > 0)[:, None]
    return torch.where(again.view(b, ART, ART), torch.full_like(x, k), x)


def _unguided(conditions: torch.Tensor, b: int) -> torch.Tensor:
    """The captioned half of a batch's conditioning (all of it when drawing without guidance): a pass at guidance 1."""
    return conditions[:b]


def _fill(model: Pixel24Model, x: torch.Tensor, conditions: torch.Tensor, generators: list[torch.Generator], steps: int, guidance: float,
          temperature: float, choice_noise: float, allowed: torch.Tensor | None = None, guided_steps: int = 0, fast: bool = False) -> torch.Tensor:
    """``x`` with its masked pixels drawn over ``steps`` steps, each image's masked share following a cosine down to none.

    ``allowed`` (B, K) bool: the colours each image may draw (None: all). ``guided_steps`` > 0: only the first that many
    steps are guided, the rest run the captioned pass alone (half the images per pass); 0: every step is guided.
    ``fast``: see :func:`_draw`.
    """
    k, b = len(model.palette), len(generators)
    start = (x == k).view(b, -1).sum(dim=1).tolist()  # per image, so that an image's schedule never depends on its batch-mates
    for step in range(steps):
        masked = x == k
        guided = not guided_steps or step < guided_steps
        step_conditions, step_guidance = (conditions, guidance) if guided else (_unguided(conditions, b), 1.0)
        drawn, confidence = _draw(model, x, masked, step_conditions, step_guidance, temperature, generators, allowed, fast)
        if choice_noise:
            confidence = confidence + choice_noise * (1 - (step + 1) / steps) * _gumbel((ART, ART), generators)
        x = torch.where(masked, drawn, x)
        still = [int(math.floor(math.cos(math.pi / 2 * (step + 1) / steps) * n)) for n in start]
        if max(still) > 0:
            x = _remask(x, masked, confidence, still, k)
    return x


def components(x: torch.Tensor) -> torch.Tensor:
    """(B, 24, 24) long: each pixel's 4-connected area of one colour, named by its first pixel's flat index."""
    b = len(x)
    label = torch.arange(PIXELS).expand(b, PIXELS).reshape(b, ART, ART).clone()
    none = torch.full_like(label, PIXELS)
    while True:
        best = label.clone()
        for dim, shift in ((1, 1), (1, -1), (2, 1), (2, -1)):
            same = x == x.roll(shift, dim)
            edge = torch.zeros_like(same)  # roll wraps around: the first row (column) has no neighbour above (left), the last none below (right)
            edge.select(dim, 0 if shift == 1 else ART - 1).fill_(True)
            best = torch.minimum(best, torch.where(same & ~edge, label.roll(shift, dim), none))
        if torch.equal(best, label):
            return label
        label = best


def _scores(model: Pixel24Model, x: torch.Tensor, conditions: torch.Tensor, generators: list[torch.Generator], guidance: float,
            component_limit: int = 0, fast: bool = False) -> torch.Tensor:
    """(B, 24, 24): each pixel's log-probability of its own colour, with it and a random 1/CRITIC_GROUPS of the image masked.

    ``component_limit`` > 0: a one-colour area of at most that many pixels is masked whole (and its pixels share
    the area's mean score), so a blotch of wrong pixels cannot vouch for itself; larger areas go pixel by pixel.
    ``fast`` (fast_draw): each pass scores only the pixels it hides.
    """
    k, b = len(model.palette), len(generators)
    groups = torch.stack([torch.randint(CRITIC_GROUPS, (ART, ART), generator=g) for g in generators])
    if component_limit:
        label = components(x).view(b, -1)
        size = torch.zeros(b, PIXELS, dtype=torch.long).scatter_add_(1, label, torch.ones_like(label))
        small = (size.gather(1, label) <= component_limit).view(b, ART, ART)
        # an area takes the group its naming pixel drew: all of its pixels are masked together
        groups = torch.where(small, groups.view(b, -1).gather(1, label).view(b, ART, ART), groups)
    scores = torch.zeros(x.shape)
    for group in range(CRITIC_GROUPS):
        hidden = groups == group
        shown = torch.where(hidden, torch.full_like(x, k), x)
        if fast:
            scores[hidden] = _logits_where(model, shown, conditions, guidance, hidden).log_softmax(dim=-1).gather(-1, x[hidden][:, None])[:, 0]
            continue
        logp = _logits(model, shown, conditions, guidance).log_softmax(dim=-1)
        scores = torch.where(hidden, logp.gather(-1, x[..., None])[..., 0], scores)
    if component_limit:
        mean = torch.zeros(b, PIXELS).scatter_add_(1, label, scores.view(b, -1)) / size.clamp(min=1)
        scores = torch.where(small, mean.gather(1, label).view(b, ART, ART), scores)
    return scores


def _allowed_colours(x: torch.Tensor, k: int, rare: int) -> torch.Tensor:
    """(B, K) bool: the colours each image of ``x`` uses on more than ``rare`` pixels (those refinement may draw), and
    always its commonest colour (an image whose colours are all rare still has one to draw)."""
    b = len(x)
    counts = torch.zeros(b, k, dtype=torch.long).scatter_add_(1, x.view(b, -1), torch.ones(b, PIXELS, dtype=torch.long))
    return (counts > rare) | (counts == counts.max(dim=1, keepdim=True).values)


@torch.no_grad()
def _unmask(model: Pixel24Model, conditions: torch.Tensor, generators: list[torch.Generator], steps: int, guidance: float, temperature: float, *,
            refine_rounds: int, refine_share: float, refine_steps: int, refine_temperature: float, refine_components: int = 0,
            refine_rare_colours: int = 0, background: torch.Tensor | None = None, guided_steps: int = 0, refine_guidance: bool = True,
            fast_draw: bool = False) -> torch.Tensor:
    """(B, 24, 24) palette indices for one batch: MaskGIT, then ``refine_rounds`` rounds of re-drawing the least likely pixels.

    ``background`` (B,): each image's background repainted in that colour after MaskGIT, before refinement. ``guided_steps``:
    see :func:`_fill`; ``refine_guidance`` False: refinement scores and re-draws with the captioned pass alone. ``fast_draw``:
    every pass scores only the pixels it draws or scores (:func:`_draw`).
    """
    k, b = len(model.palette), len(generators)
    x = _fill(model, torch.full((b, ART, ART), k, dtype=torch.long), conditions, generators, steps, guidance, temperature, CHOICE_NOISE,
              guided_steps=guided_steps, fast=fast_draw)
    if background is not None:
        x = repaint_backgrounds(model, x, background)
    if not refine_guidance:
        conditions, guidance = _unguided(conditions, b), 1.0
    redraw = int(round(refine_share * PIXELS))
    for _ in range(refine_rounds if redraw and refine_steps else 0):
        # The least likely `redraw` pixels of each image (ties by position: exactly that many) are masked and drawn again.
        least = _scores(model, x, conditions, generators, guidance, refine_components, fast_draw).view(b, -1).argsort(dim=1, stable=True)[:, :redraw]
        again = torch.zeros(b, PIXELS, dtype=torch.bool).scatter_(1, least, True)
        allowed = None
        if refine_rare_colours:  # colours on at most that many pixels of an image are re-drawn too, from the image's other colours only
            allowed = _allowed_colours(x, k, refine_rare_colours)
            again |= ~allowed.gather(1, x.view(b, -1))
        x = _fill(model, torch.where(again.view(b, ART, ART), torch.full_like(x, k), x), conditions, generators, refine_steps, guidance,
                  refine_temperature, 0.0, allowed, fast=fast_draw)
    return x


def named_backgrounds(model: Pixel24Model, prompt: str) -> torch.Tensor | None:
    """(K,) bool: the palette colours answering to the background colour ``prompt`` names ("deep purple background" ->
    the purples, by :mod:`bespoke_kohya.metrics`' colour-name table), or None when it names none or no palette colour
    answers to it (the head then chooses from all)."""
    from ...metrics import background_colour_names, colour_names

    wanted = background_colour_names(prompt)
    if wanted is None:
        return None
    if model._names is None:  # once per model: the names each palette colour answers to
        model._names = [colour_names(colour) for colour in model.palette]
    allowed = torch.tensor([bool(wanted & names) for names in model._names])
    return allowed if bool(allowed.any()) else None


def _backgrounds(model: Pixel24Model, text: torch.Tensor, generators: list[torch.Generator], guidance: float, temperature: float,
                 allowed: list[torch.Tensor | None] | None = None) -> torch.Tensor:
    """(B,) palette indices: each image's background colour drawn from the background head, guided like the pixels.

    ``text`` holds the captioned vectors, then (when guided) the empty-caption ones; ``allowed[i]`` (K,) bool, when
    given, restricts image i's draw to those colours (the caption's named colour).
    """
    logits = model.net.background_logits(text, model.lab).float().cpu()
    if guidance != 1.0:
        cond, uncond = logits.chunk(2)
        logits = uncond + guidance * (cond - uncond)
    logp = logits.log_softmax(dim=-1)
    for i, colours in enumerate(allowed or []):
        if colours is not None:
            logp[i] = torch.where(colours, logp[i], torch.full_like(logp[i], -math.inf))
    noise = _gumbel((len(model.palette),), generators)
    return (logp / max(temperature, 1e-4) + noise).argmax(dim=-1)


def _conditions(model: Pixel24Model, conds: list[Phrases], generators: list[torch.Generator], guidance: float, background_temperature: float,
                allowed: list[torch.Tensor | None] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the U-Net's conditioning for one batch, captioned then empty-caption when guided; each image's background colour
    (B,) or None): a model with a background head draws each image's background colour first (from ``allowed`` where
    given), the same for both halves."""
    text = model.net.text(conds)
    if not model.net.has_background:
        return text, None
    drawn = _backgrounds(model, text, generators, guidance, background_temperature, allowed)
    background = drawn.to(model.device)
    if guidance != 1.0:
        background = torch.cat([background, background])
    return model.net.condition(text, background, model.lab), drawn


def repaint_backgrounds(model: Pixel24Model, x: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """``x`` with each image's background (its outer ring's commonest colour and the pixels of it touching the ring, as
    training finds it) in the colour ``background`` the head drew, where the U-Net drew another."""
    from .training import background_indices

    _, region = background_indices(x.numpy(), model.palette)
    return torch.where(torch.from_numpy(region), background[:, None, None], x)


def flatten_backgrounds(model: Pixel24Model, x: torch.Tensor, background: torch.Tensor, tolerance: float) -> torch.Tensor:
    """``x`` with every pixel within ``tolerance`` ΔE76 of its image's ``background`` colour, and reached from the outer
    ring through such pixels, painted that exact colour: a background drawn as a grain of near shades becomes flat."""
    from ...metrics import ring_connected

    lab = model.lab.cpu()
    close = (lab[x] - lab[background][:, None, None]).norm(dim=-1) <= tolerance
    region = torch.from_numpy(np.stack([ring_connected(image) for image in close.numpy()]))
    return torch.where(region, background[:, None, None], x)


def sample(model: Pixel24Model, prompts: list[str], seeds: list[int], **options: float) -> list[list[np.ndarray]]:
    """``images[prompt][seed]`` as (24, 24, 3) uint8 palette colours; a (prompt, seed) pair always gives the same image.

    ``options`` are :func:`sample_pairs`'s.
    """
    flat = sample_pairs(model, [(p, s) for p in prompts for s in seeds], **options)
    return [flat[i * len(seeds) : (i + 1) * len(seeds)] for i in range(len(prompts))]


@torch.no_grad()
def sample_pairs(model: Pixel24Model, pairs: list[tuple[str, int]], *, steps: int, guidance_scale: float, temperature: float,
                 refine_rounds: int = 0, refine_share: float = 0.1, refine_steps: int = 4, refine_temperature: float = 0.3, refine_components: int = 0,
                 refine_rare_colours: int = 0, background_temperature: float = 1.0, background_from_caption: bool = False,
                 background_repaint: bool = False, background_flatten: float = 0.0, batch: int = SAMPLE_BATCH, compile: bool = False,
                 guided_steps: int = 0, refine_guidance: bool = True, fast_draw: bool = False) -> list[np.ndarray]:
    """The image of each (prompt, seed) pair, in order, drawn ``batch`` at a time whatever their prompts.

    ``refine_rounds`` rounds each re-draw the ``refine_share`` least likely pixels (0: plain MaskGIT); ``refine_components``
    > 0 scores and re-draws one-colour areas up to that size whole; ``refine_rare_colours`` > 0 also re-draws the pixels of
    colours that cover at most that many pixels of an image, from the image's other colours. A model with a background head
    first draws each image's background colour (at ``background_temperature``; with ``background_from_caption``, among the
    palette colours answering to the colour the prompt names for its background, where it names one; with
    ``background_repaint``, the background MaskGIT drew is repainted in that colour before refinement; with
    ``background_flatten`` > 0, the finished image's background pixels within that ΔE76 of it are painted it). ``guided_steps`` > 0 guides only
    the first that many MaskGIT steps and ``refine_guidance`` False none of refinement's passes (the captioned pass alone: half the
    images per pass, as guidance interval methods do). ``fast_draw`` scores only the pixels each pass draws or scores and
    draws each by inverse CDF (one random number a pixel, not Gumbel noise over the palette): the same distribution, other
    pixels for a seed than without it. Every batch is padded to ``batch`` images
    (fixed, so an image never depends on its batch-mates, and a compiled network, ``compile``, compiles once).
    """
    if steps < 1:
        raise UserError(f"sample: steps must be at least 1, got {steps}")
    if batch < 1:
        raise UserError(f"sample: batch must be at least 1, got {batch}")
    if not pairs:
        return []
    model.eval()
    if compile:
        model.compile()
    encoded = {prompt: encode_prompt(model, prompt)[0] for prompt in dict.fromkeys(p for p, _ in pairs)}
    named = {prompt: named_backgrounds(model, prompt) for prompt in encoded} if background_from_caption and model.net.has_background else {}
    out: list[np.ndarray] = []
    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        padded = chunk + [chunk[0]] * (batch - len(chunk))
        generators = [torch.Generator().manual_seed(int(seed)) for _, seed in padded]
        conds = [encoded[prompt] for prompt, _ in padded]
        if guidance_scale != 1.0:
            conds = conds + [[] for _ in padded]
        allowed = [named.get(prompt) for prompt, _ in padded] if named else None
        conditions, background = _conditions(model, conds, generators, guidance_scale, background_temperature, allowed)
        indices = _unmask(model, conditions, generators, steps, guidance_scale, temperature, refine_rounds=refine_rounds, refine_share=refine_share,
                          refine_steps=refine_steps, refine_temperature=refine_temperature, refine_components=refine_components,
                          refine_rare_colours=refine_rare_colours, background=background if background_repaint else None,
                          guided_steps=guided_steps, refine_guidance=refine_guidance, fast_draw=fast_draw)
        if background is not None and background_flatten > 0:
            indices = flatten_backgrounds(model, indices, background, background_flatten)
        out += [model.palette[idx.numpy()] for idx in indices[: len(chunk)]]
    return out
