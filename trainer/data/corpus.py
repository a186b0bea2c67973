"""The built-in corpus: English movie reviews generated from a seed, no download.

Every review holds exactly one verdict about the film itself ("the film was not really great"),
among sentences about aspects of it (acting, score, ...) whose sentiment is drawn independently
of the label (agreeing with it only slightly more often than not) and neutral plot sentences.
The label is the polarity of the verdict, which takes word order to find:

- negation flips it ("the movie is not good", "far from boring", "anything but clever");
- "but" / "although" contrast: the verdict is the clause about the film, often after a clause
  of the opposite polarity ("the acting is superb, but the movie is a mess");
- intensifiers ("very", "truly", "a bit") sit between the negation and the adjective;
- the verdict is often the first sentence, far from the end of the review.

Every sentiment word and every negation appears about equally often in both classes, so a
bag-of-words classifier stays far below what a sequence model reaches.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from trainer.errors import MAX_SEED, check_range

# Bump when the generator changes: it is part of the cache keys of generated data.
CORPUS_VERSION = 1

# fmt: off
# The generator's vocabulary: lists read as paragraphs, not as one phrase per line.
FILM = ["the film", "the movie", "this film", "this movie", "the picture", "this picture", "the whole thing"]
ASPECTS = [
    "the acting", "the plot", "the script", "the soundtrack", "the cinematography", "the dialogue",
    "the pacing", "the ending", "the cast", "the lead actor", "the villain", "the special effects",
    "the editing", "the direction", "the score", "the costumes", "the humor", "the opening scene",
    "the supporting cast", "the final act", "the camera work", "the set design",
]
POSITIVE = [
    "great", "wonderful", "brilliant", "excellent", "superb", "charming", "moving", "gripping",
    "delightful", "stunning", "clever", "engaging", "beautiful", "fantastic", "memorable", "solid",
    "enjoyable", "impressive", "touching", "fresh", "smart", "powerful", "lovely", "gorgeous",
]
NEGATIVE = [
    "terrible", "awful", "boring", "dull", "clumsy", "tedious", "weak", "bland", "painful",
    "forgettable", "lifeless", "messy", "predictable", "disappointing", "lazy", "poor", "dreadful",
    "flat", "annoying", "silly", "shallow", "sloppy", "tiresome", "ugly",
]
COPULAS = ["is", "was", "feels", "felt", "seems", "seemed", "turned out to be", "ended up", "comes across as"]
NEGATED_COPULAS = [
    "is not", "was not", "isn't", "wasn't", "never feels", "is hardly", "is far from", "was far from",
    "is anything but", "was anything but", "is by no means", "is never", "did not feel", "does not seem",
]
INTENSIFIERS = ["", "", "", "very", "really", "truly", "quite", "extremely", "incredibly", "rather",
                "pretty", "somewhat", "a bit", "so", "genuinely", "downright"]
HEDGES = ["", "", "", "", "in my opinion, ", "honestly, ", "to be fair, ", "frankly, ", "i think ", "sadly, ",
          "thankfully, ", "surprisingly, "]
CHARACTERS = ["a young detective", "a retired boxer", "a small-town teacher",
              "a lonely astronaut", "an ambitious chef", "a former soldier",
              "a struggling musician", "a stubborn farmer", "a newspaper reporter", "a young widow"]
ACTIONS = ["tries to start over", "searches for a missing brother", "plans one last job",
           "returns home after years away", "prepares for a big competition", "uncovers an old secret",
           "falls in love", "fights to save the family business", "goes on a long road trip"]
PLACES = ["in a quiet coastal town", "in new york", "during a long winter", "in the nineteen seventies",
          "on a remote island", "in a crowded city", "somewhere in the desert", "in post-war london"]
NEUTRAL = [
    "i watched it on a rainy sunday afternoon.", "it runs a little over two hours.",
    "i saw it with my brother.", "it was released last year.", "the trailer gives away a lot.",
    "it is based on a novel i have not read.", "my friend recommended it to me.",
    "i went in knowing almost nothing about it.", "it is the director's third feature.",
    "there is a short scene after the credits.",
]
# fmt: on


@dataclass
class CorpusConfig:
    num_examples: int = field(default=30000, metadata={"help": "reviews to generate (train + validation)"})
    seed: int = field(default=0, metadata={"help": "generator seed; the same seed gives the same corpus"})
    aspect_agreement: float = field(
        default=0.6, metadata={"help": "probability that an aspect sentence shares the verdict's polarity"}
    )

    def __post_init__(self) -> None:
        check_range("data.builtin.num_examples", self.num_examples, 2, 100_000_000)
        check_range("data.builtin.seed", self.seed, 0, MAX_SEED)
        check_range("data.builtin.aspect_agreement", self.aspect_agreement, 0.0, 1.0)


def _clause(rng: random.Random, subject: str, positive: bool, negation_rate: float) -> str:
    """A clause about ``subject`` whose sentiment is ``positive`` once negation is applied."""
    negated = rng.random() < negation_rate
    adjective_positive = positive != negated
    adjective = rng.choice(POSITIVE if adjective_positive else NEGATIVE)
    intensifier = rng.choice(INTENSIFIERS)
    phrase = f"{intensifier} {adjective}".strip()
    form = rng.random()
    if form < 0.7:
        verb = rng.choice(NEGATED_COPULAS if negated else COPULAS)
        return f"{subject} {verb} {phrase}"
    if form < 0.85:
        verb = "did not find" if negated else rng.choice(["found", "thought", "considered"])
        return f"i {verb} {subject} {phrase}"
    verb = rng.choice(["would not call", "could never call", "would hardly call"]) if negated else "would call"
    return f"i {verb} {subject} {phrase}"


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def generate_review(rng: random.Random, positive: bool, aspect_agreement: float) -> str:
    verdict_positive = positive
    film = rng.choice(FILM)
    kind = rng.random()
    if kind < 0.5:
        verdict = rng.choice(HEDGES) + _clause(rng, film, verdict_positive, 0.45)
    elif kind < 0.8:
        aspect = _clause(rng, rng.choice(ASPECTS), not verdict_positive, 0.3)
        verdict = f"{aspect}, but {_clause(rng, film, verdict_positive, 0.45)}"
    else:
        aspect = _clause(rng, rng.choice(ASPECTS), not verdict_positive, 0.3)
        verdict = f"although {aspect}, {_clause(rng, film, verdict_positive, 0.45)}"

    others = []
    for aspect in rng.sample(ASPECTS, rng.randint(1, 4)):
        agrees = rng.random() < aspect_agreement
        clause = _clause(rng, aspect, positive if agrees else not positive, 0.3)
        if rng.random() < 0.2:  # a contrast between two aspects: not a verdict about the film
            second = rng.choice([a for a in ASPECTS if a != aspect])
            clause = f"{clause}, but {_clause(rng, second, not (positive if agrees else not positive), 0.3)}"
        others.append(_sentence(rng.choice(HEDGES) + clause))
    if rng.random() < 0.7:
        plot = f"the story follows {rng.choice(CHARACTERS)} who {rng.choice(ACTIONS)} {rng.choice(PLACES)}"
        others.append(_sentence(plot))
    if rng.random() < 0.4:
        others.append(rng.choice(NEUTRAL).capitalize())
    rng.shuffle(others)
    # The verdict opens the review 40% of the time: far from the end, where it is hardest to keep.
    position = 0 if rng.random() < 0.4 else rng.randint(0, len(others))
    others.insert(position, _sentence(verdict))
    return " ".join(others)


def generate_corpus(config: CorpusConfig) -> dict[str, list]:
    """Balanced reviews with labels 0 (negative) and 1 (positive); deterministic in ``config``."""
    rng = random.Random(config.seed)
    texts, labels = [], []
    for i in range(config.num_examples):
        positive = i % 2 == 1
        texts.append(generate_review(rng, positive, config.aspect_agreement))
        labels.append(int(positive))
    order = list(range(config.num_examples))
    rng.shuffle(order)
    return {"text": [texts[i] for i in order], "label": [labels[i] for i in order]}
