"""Prompts of prose-like random words, so that the demo generator's answers (which quote the
prompt) compress like real text and not like one sentence repeated: a fixed word list, a seeded
generator, a different prompt per answer, sized to give deltas of the wanted length."""

from __future__ import annotations

import random
from collections.abc import Callable

_COMMON_WORDS = (
    "the of and to a in is that it for was on are as with his they at be this from have or by "
    "one had not but what all were when we there can an your which their said if do will each "
    "about how up out them then she many some so these would other into has more her two like "
    "him see time could no make than first been its who now people my made over did down only "
    "way find use may water long little very after words called just where most know get "
    "through back much before go good new write our used me man too any day same right look "
    "think also around another came come work three word must because does part even place well "
    "such here take why things help put years different away again off went old number great "
    "tell men say small every found still between name should home big give air line set own "
    "under read last never us left end along while might next sound below saw something thought "
    "both few those always looked show large often together asked house world going want school "
    "important until form food keep children feet land side without boy once animals life enough "
    "took sometimes four head above kind began almost live page got earth need far hand high "
    "year mother light parts country father let night following picture being study second eyes "
    "soon times story boys since white days ever paper hard near sentence better best across "
    "during today others however sure means knew try told young miles sun ways thing whole hear "
    "example heard several change answer room sea against top turned learn point city play "
    "toward five using himself usually money seen car morning river database stream answer "
    "model token order message project worker sequence"
)
WORDS = tuple(_COMMON_WORDS.split())


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(6, 16))]
    if len(words) > 9 and rng.random() < 0.4:
        words[rng.randint(3, len(words) - 4)] += ","
    return " ".join(words).capitalize() + rng.choice((".", ".", ".", "?", "!"))


def prompt_for(answer: Callable[[str], str], chars: int, seed: int) -> str:
    """Prose whose answer (``answer(prompt)``, the demo generator's) is about ``chars`` characters
    long: sentences are added while it is short, then the prompt is cut to fit."""
    rng = random.Random(seed)
    text = ""
    while len(text) + 300 < chars:  # the answer adds a couple of hundred characters
        text = f"{text} {sentence(rng)}".strip()
    while len(answer(text)) < chars:
        text = f"{text} {sentence(rng)}".strip()
    overshoot = len(answer(text)) - chars
    text = text[: len(text) - overshoot].rstrip() if overshoot > 0 else text
    while len(answer(text)) < chars:  # the counts quoted in the answer may have got shorter
        text += "."
    return text
