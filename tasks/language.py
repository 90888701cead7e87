"""The toy language: a deterministic, word-level, English-like language for the embedded model.

Every sentence is a list of words (one word = one token). Five sentence families are mixed
into training documents:

* ``ioi``       — "When Mary and John went to the store , John gave a book to Mary ."
* ``sva``       — "the dog near the cats runs ." / "the dogs that the cat sees run ."
* ``years``     — "the war lasted from the year 17 32 to the year 17 58 ."
* ``induction`` — "list : Ann Bob Cal list : Ann Bob Cal ."
* ``narrative`` — filler such as "Mary walked to the park ." so the model is a language model.

Held-out material (never generated with ``split="train"``): a few IOI templates (the
combinations in ``IOI_HELDOUT_TEMPLATES``) and the IOI roles of ``HELDOUT_NAMES`` (these
names still occur in narrative and induction sentences, so their embeddings are trained).
All randomness comes from a ``random.Random`` passed in, so a seed fixes every sentence.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import product

NAMES: tuple[str, ...] = (
    "Mary",
    "John",
    "Alice",
    "Bob",
    "Carol",
    "David",
    "Emma",
    "Frank",
    "Grace",
    "Henry",
    "Irene",
    "Jack",
    "Karen",
    "Leo",
    "Laura",
    "Mike",
    "Nina",
    "Oscar",
    "Paula",
    "Quinn",
    "Rachel",
    "Sam",
    "Tina",
    "Victor",
    "Wendy",
    "Xavier",
    "Yara",
    "Zack",
    "Anna",
    "Ben",
    "Clara",
    "Dan",
    "Ella",
    "Fred",
    "Gina",
    "Hugo",
    "Ivy",
    "James",
    "Kate",
    "Luke",
    "Maria",
    "Noah",
    "Olivia",
    "Peter",
    "Rose",
    "Steve",
    "Sarah",
    "Tom",
    "Uma",
    "Vera",
    "Will",
    "Zoe",
    "Adam",
    "Beth",
    "Chris",
    "Diana",
    "Eric",
    "Fiona",
    "George",
    "Helen",
    "Ian",
    "Julia",
    "Kevin",
    "Lily",
    "Mark",
    "Nora",
    "Owen",
    "Pam",
    "Ruth",
    "Simon",
    "Tara",
    "Ugo",
    "Vince",
    "Walt",
    "Amy",
    "Bella",
    "Carl",
    "Dora",
    "Eli",
    "Faye",
)
N_HELDOUT_NAMES = 16
TRAIN_NAMES: tuple[str, ...] = NAMES[:-N_HELDOUT_NAMES]
HELDOUT_NAMES: tuple[str, ...] = NAMES[-N_HELDOUT_NAMES:]

PLACES = (
    "store",
    "park",
    "school",
    "market",
    "garden",
    "station",
    "library",
    "river",
    "beach",
    "office",
    "church",
    "museum",
    "hospital",
    "restaurant",
    "cafe",
    "farm",
    "bank",
    "theater",
    "zoo",
    "castle",
)
OBJECTS = (
    "book",
    "ring",
    "drink",
    "bone",
    "ball",
    "computer",
    "necklace",
    "flower",
    "letter",
    "gift",
    "key",
    "hat",
    "cake",
    "map",
    "coin",
    "pen",
    "lamp",
    "shoe",
    "basket",
    "kite",
)

# IOI templates share one skeleton so every prompt has the same length and role positions:
# <intro> A and B <motion: 3 words> <place> , S <give> a <object> to -> IO
IOI_INTROS = ("When", "While", "After", "Once", "Before")
IOI_MOTIONS = (
    ("went", "to", "the"),
    ("arrived", "at", "the"),
    ("were", "at", "the"),
    ("walked", "into", "the"),
    ("came", "to", "the"),
    ("stayed", "at", "the"),
)
IOI_GIVES = ("gave", "handed", "passed", "threw", "sent", "showed")
IOI_TEMPLATES: tuple[tuple[str, tuple[str, str, str], str], ...] = tuple(product(IOI_INTROS, IOI_MOTIONS, IOI_GIVES))
# Every word of these templates is seen in training, but never in this combination.
IOI_HELDOUT_TEMPLATES = (
    ("Before", ("walked", "into", "the"), "threw"),
    ("Once", ("stayed", "at", "the"), "showed"),
    ("While", ("came", "to", "the"), "sent"),
    ("After", ("arrived", "at", "the"), "passed"),
)
IOI_TRAIN_TEMPLATES = tuple(t for t in IOI_TEMPLATES if t not in IOI_HELDOUT_TEMPLATES)
# Position labels of the IOI skeleton (index 0 is BOS, added by the tokenizer).
IOI_POSITION_LABELS = (
    "BOS",
    "intro",
    "A",
    "and",
    "B",
    "motion1",
    "motion2",
    "the",
    "PLACE",
    ",",
    "S2",
    "give",
    "a",
    "OBJECT",
    "END",
)

NOUNS_SG = (
    "dog",
    "cat",
    "boy",
    "girl",
    "teacher",
    "doctor",
    "farmer",
    "king",
    "queen",
    "bird",
    "horse",
    "child",
    "man",
    "woman",
    "student",
    "baker",
    "pilot",
    "singer",
    "nurse",
    "lawyer",
)
NOUNS_PL = (
    "dogs",
    "cats",
    "boys",
    "girls",
    "teachers",
    "doctors",
    "farmers",
    "kings",
    "queens",
    "birds",
    "horses",
    "children",
    "men",
    "women",
    "students",
    "bakers",
    "pilots",
    "singers",
    "nurses",
    "lawyers",
)
VERBS_SG = ("runs", "sleeps", "sings", "jumps", "waits", "smiles", "walks", "eats", "laughs", "works")
VERBS_PL = ("run", "sleep", "sing", "jump", "wait", "smile", "walk", "eat", "laugh", "work")
TVERBS_SG = ("sees", "likes", "helps", "knows", "follows", "calls")
TVERBS_PL = ("see", "like", "help", "know", "follow", "call")
PREPOSITIONS = ("near", "behind", "beside", "with", "above", "under")

EVENTS = (
    "war",
    "trip",
    "project",
    "reign",
    "drought",
    "festival",
    "expedition",
    "strike",
    "siege",
    "journey",
    "voyage",
    "treaty",
    "famine",
    "contest",
    "campaign",
)
CENTURIES = tuple(str(c) for c in range(11, 20))
TWO_DIGITS = tuple(f"{i:02d}" for i in range(100))

NARRATIVE_VERBS = ("walked", "ran", "drove", "went", "came")
FUNCTION_WORDS = (
    "When",
    "While",
    "After",
    "Once",
    "Before",
    "The",
    "the",
    "a",
    "and",
    "to",
    "at",
    "into",
    "of",
    "from",
    "year",
    "lasted",
    "that",
    "list",
    "it",
    "his",
    "her",
    "saw",
    "has",
    "liked",
    "found",
    "lost",
    "said",
    "hello",
    "then",
    "home",
    "is",
    "happy",
    "tired",
    "very",
)
PUNCTUATION = (",", ".", ":")


@dataclass(frozen=True)
class Mixture:
    """Fractions of each sentence family in training documents (normalised on use)."""

    ioi: float = 0.30
    sva: float = 0.20
    years: float = 0.15
    induction: float = 0.15
    narrative: float = 0.20

    def families(self) -> tuple[list[str], list[float]]:
        names = ["ioi", "sva", "years", "induction", "narrative"]
        return names, [getattr(self, n) for n in names]


def vocabulary() -> list[str]:
    """Every word the language can produce, in a fixed order (ids follow this order)."""
    groups = (
        NAMES,
        PLACES,
        OBJECTS,
        IOI_INTROS,
        tuple(w for m in IOI_MOTIONS for w in m),
        IOI_GIVES,
        NOUNS_SG,
        NOUNS_PL,
        VERBS_SG,
        VERBS_PL,
        TVERBS_SG,
        TVERBS_PL,
        PREPOSITIONS,
        EVENTS,
        CENTURIES,
        TWO_DIGITS,
        NARRATIVE_VERBS,
        FUNCTION_WORDS,
        PUNCTUATION,
    )
    seen: dict[str, None] = {}
    for group in groups:
        for word in group:
            seen.setdefault(word, None)
    return list(seen)


# ---------------------------------------------------------------------------- IOI
def ioi_prompt(template, io: str, s: str, place: str, obj: str, order: str) -> list[str]:
    """IOI prompt words up to (not including) the answer. ``order`` is "ABBA" or "BABA"."""
    intro, motion, give = template
    first, second = (io, s) if order == "ABBA" else (s, io)
    return [intro, first, "and", second, *motion, place, ",", s, give, "a", obj, "to"]


def sample_ioi(rng: random.Random, split: str = "train") -> dict:
    """One IOI example: template, names, place, object and order, from ``split``'s material."""
    templates = IOI_TRAIN_TEMPLATES if split == "train" else IOI_HELDOUT_TEMPLATES
    names = TRAIN_NAMES if split == "train" else NAMES
    io, s = rng.sample(names, 2)
    return {
        "template": rng.choice(templates),
        "io": io,
        "s": s,
        "place": rng.choice(PLACES),
        "obj": rng.choice(OBJECTS),
        "order": rng.choice(("ABBA", "BABA")),
    }


def ioi_sentence(rng: random.Random) -> list[str]:
    ex = sample_ioi(rng, "train")
    return ioi_prompt(ex["template"], ex["io"], ex["s"], ex["place"], ex["obj"], ex["order"]) + [ex["io"], "."]


# ---------------------------------------------------------------------------- SVA
def sva_subject(
    rng: random.Random, structure: str, plural: bool, plural2: bool, noun: int | None = None, noun2: int | None = None
) -> list[str]:
    """Subject phrase of an agreement sentence: "the dog near the cats" ("pp") or
    "the dog that the cats see" ("rc"). The main verb must agree with the first noun."""
    noun = rng.randrange(len(NOUNS_SG)) if noun is None else noun
    noun2 = rng.randrange(len(NOUNS_SG)) if noun2 is None else noun2
    n1 = (NOUNS_PL if plural else NOUNS_SG)[noun]
    n2 = (NOUNS_PL if plural2 else NOUNS_SG)[noun2]
    if structure == "pp":
        return ["the", n1, rng.choice(PREPOSITIONS), "the", n2]
    if structure == "rc":
        tverb = (TVERBS_PL if plural2 else TVERBS_SG)[rng.randrange(len(TVERBS_SG))]
        return ["the", n1, "that", "the", n2, tverb]
    if structure == "simple":
        return ["the", n1]
    raise ValueError(f"unknown agreement structure {structure!r}: use pp, rc or simple")


def sva_sentence(rng: random.Random) -> list[str]:
    structure = rng.choice(("pp", "pp", "rc", "simple"))
    plural = rng.random() < 0.5
    words = sva_subject(rng, structure, plural, rng.random() < 0.5)
    verb = (VERBS_PL if plural else VERBS_SG)[rng.randrange(len(VERBS_SG))]
    return words + [verb, "."]


# ---------------------------------------------------------------------------- years
def years_prompt(event: str, century: str, yy: int) -> list[str]:
    """Greater-than prompt: "the war lasted from the year 17 32 to the year 17"."""
    return ["the", event, "lasted", "from", "the", "year", century, TWO_DIGITS[yy], "to", "the", "year", century]


def years_sentence(rng: random.Random) -> list[str]:
    yy = rng.randint(1, 98)
    end = rng.randint(yy + 1, 99)
    return years_prompt(rng.choice(EVENTS), rng.choice(CENTURIES), yy) + [TWO_DIGITS[end], "."]


# ---------------------------------------------------------------------------- induction
def induction_sentence(rng: random.Random, length: int | None = None) -> list[str]:
    """A random list of distinct names, repeated: "list : A B C list : A B C ."."""
    length = rng.randint(4, 10) if length is None else length
    names = rng.sample(NAMES, length)
    return ["list", ":", *names, "list", ":", *names, "."]


# ---------------------------------------------------------------------------- narrative
def narrative_sentence(rng: random.Random) -> list[str]:
    a, b = rng.sample(NAMES, 2)
    place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
    noun = rng.choice(NOUNS_SG)
    kind = rng.randrange(8)
    if kind == 0:
        return [a, rng.choice(NARRATIVE_VERBS), "to", "the", place, "."]
    if kind == 1:
        return [a, "saw", "the", noun, "at", "the", place, "."]
    if kind == 2:
        return [a, "has", "a", obj, "."]
    if kind == 3:
        return [a, "and", b, "liked", "the", place, "."]
    if kind == 4:
        return [a, rng.choice(("found", "lost")), "a", obj, "at", "the", place, "."]
    if kind == 5:
        return [a, "said", "hello", "to", b, "."]
    if kind == 6:
        adjective = [rng.choice(("happy", "tired"))]
        return [a, "is", *(["very"] if rng.random() < 0.5 else []), *adjective, "."]
    return [a, "went", "home", "then", b, "went", "home", "."]


GENERATORS = {
    "ioi": ioi_sentence,
    "sva": sva_sentence,
    "years": years_sentence,
    "induction": induction_sentence,
    "narrative": narrative_sentence,
}


def sentences(rng: random.Random, n_words: int, mixture: Mixture = Mixture()) -> Iterator[tuple[str, list[str]]]:
    """Sentences drawn from ``mixture`` as (family, words), until ``n_words`` words are reached."""
    families, weights = mixture.families()
    total = 0
    while total < n_words:
        family = rng.choices(families, weights)[0]
        words = GENERATORS[family](rng)
        total += len(words)
        yield family, words


def document(rng: random.Random, n_words: int, mixture: Mixture = Mixture()) -> list[str]:
    """Sentences drawn from ``mixture`` and concatenated until ``n_words`` words are reached
    (the last sentence is cut)."""
    return [w for _, words in sentences(rng, n_words, mixture) for w in words][:n_words]
