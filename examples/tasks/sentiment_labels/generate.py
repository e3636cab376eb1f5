#!/usr/bin/env python3
"""Generate the sentiment_labels task: a short product review -> one of pos, neg, mixed.

    python examples/tasks/sentiment_labels/generate.py            # writes next to this file
    python examples/tasks/sentiment_labels/generate.py --out DIR  # writes DIR/train.jsonl, DIR/golden.jsonl

The label set is never named in the prompt, so a base model cannot guess it: it has to learn
that a review with only praise is `pos`, only complaints `neg`, and one of each `mixed`.
Connectors ("but", "and", "Sadly,") occur with every label, so none of them gives it away.
Golden reviews are about products train never mentions; half of them (slice `new_words`) also
use opinion phrases train never uses. One random.Random(0) drives everything.
"""

from __future__ import annotations

import random
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # taskgen.py, shared by the tasks
from taskgen import EXACT, GOLDEN_PER_SLICE, Row, assemble, balanced, main  # noqa: E402

SEED = 0
N_TRAIN = 480
SYSTEM = "Label the review."
LABELS = ["pos", "neg", "mixed"]

# Singular nouns only: every template says "The {product} is/works ...".
TRAIN_PRODUCTS = (
    "desk lamp|water bottle|rain jacket|yoga mat|coffee maker|phone case|backpack|blender|rice cooker|"
    "office chair|toaster|electric kettle|wireless mouse|keyboard|headset|bike light|umbrella|wall clock|"
    "travel mug|frying pan|garden hose|air fryer|space heater|tent|sleeping bag|lunch box|hair dryer|"
    "bath towel|doormat|laptop stand|webcam|night light|cutting board|kitchen scale|picture frame|"
    "shower head|ceiling fan|tool kit|pet bed|smart plug"
).split("|")
GOLDEN_PRODUCTS = (
    "espresso grinder|rowing machine|label printer|camping stove|baby stroller|paddle board|soldering iron|"
    "dehumidifier|telescope|record player|sewing machine|snow shovel|drone|massage gun|ukulele|projector"
).split("|")

# Predicates that follow "The {product}" or "it".
POSITIVE = (
    "works perfectly|is worth every penny|feels really solid|exceeded my expectations|does exactly what it "
    "promises|is easy to set up|holds up well after daily use|is very well made|is a joy to use|performs "
    "better than I hoped|is sturdy and reliable|was a great purchase|works like a charm|is excellent value|"
    "feels premium|is surprisingly quiet|cleans up easily|is comfortable to use|arrived in perfect condition|"
    "is beautifully designed|has been flawless so far|is really impressive|does the job brilliantly|makes my "
    "mornings easier|has not let me down once|is the best I have owned|is simple and effective|is light and "
    "handy|is a real time saver|keeps working day after day"
).split("|")
NEGATIVE = (
    "stopped working after two days|feels cheap and flimsy|is a waste of money|broke the first time I used "
    "it|is hard to set up|arrived scratched|is far too loud|does not do what it promises|fell apart within a "
    "week|is uncomfortable to use|overheats quickly|is poorly made|keeps failing|was a disappointment|is "
    "impossible to clean|feels fragile|leaks all the time|is missing basic features|is much smaller than "
    "advertised|has a terrible smell|scratches easily|is too heavy to carry|wobbles constantly|is clumsy to "
    "use|gave up after a month|is not worth the price|makes a rattling noise|is badly designed|is a real "
    "letdown|died on the second day"
).split("|")
GOLDEN_POSITIVE = (
    "is superb|is delightful to use|has been rock solid|is top notch|is fantastic|works wonderfully|is a "
    "pleasure to own|is outstanding|is terrific value|shines in every way"
).split("|")
GOLDEN_NEGATIVE = (
    "is dreadful|is shoddy|is awful|is a total dud|is useless|is horrible to use|falls short in every way|"
    "is a rip-off|is abysmal|is junk"
).split("|")
GOLDEN_ONLY = (*GOLDEN_PRODUCTS, *GOLDEN_POSITIVE, *GOLDEN_NEGATIVE)

# Neutral sentences: no opinion in them.
OPENERS = (
    "Bought this last month.|Got it as a gift from my brother.|I ordered the {p} for my new flat.|I have used "
    "it for three weeks now.|Picked it up on sale.|This is my second order from this shop.|I use it every "
    "day.|My partner chose this one.|It replaced an older model.|I bought it after reading a few reviews."
).split("|")
CLOSERS = (
    "Delivery took four days.|It came in a plain box.|I paid with a gift card.|That is all for now.|Just "
    "sharing my experience.|I bought the grey one.|I use it mostly at weekends."
).split("|")

# {a} and {b} are predicates; which polarity each has is up to the label.
SAME = [
    "The {p} {a}, and it {b}.",
    "The {p} {a}. It {b} too.",
    "The {p} {a}. On top of that, it {b}.",
    "The {p} {a}.",
    "Honestly, the {p} {a}.",
]
EXPECTATION = {  # "but" after a neutral expectation: pos and neg use it as often as mixed does
    "pos": ["I had my doubts, but the {p} {a}.", "I expected little, but the {p} {a}."],
    "neg": ["I had high hopes, but the {p} {a}.", "I trusted the reviews, but the {p} {a}."],
}
SADLY = {"pos": "The {p} {a}. Happily, it {b} as well.", "neg": "The {p} {a}. Sadly, it {b} as well."}
CONTRAST = [  # {a} positive, {b} negative
    "The {p} {a}, but it {b}.",
    "The {p} {b}, but it {a}.",
    "The {p} {a}. Sadly, it {b}.",
    "The {p} {b}. On the plus side, it {a}.",
    "Although the {p} {a}, it {b}.",
    "The {p} {b}, though it {a}.",
]


def review(rng: random.Random, product: str, label: str, pos: list[str], neg: list[str]) -> str:
    if label == "mixed":
        body = rng.choice(CONTRAST).format(p=product, a=rng.choice(pos), b=rng.choice(neg))
    else:
        pool = pos if label == "pos" else neg
        a, b = rng.sample(pool, 2)
        template = rng.choice([*SAME, *SAME, *EXPECTATION[label], SADLY[label]])
        body = template.format(p=product, a=a, b=b)
    parts = [body]
    if rng.random() < 0.7:
        parts.insert(0, rng.choice(OPENERS).format(p=product))
    if rng.random() < 0.5:
        parts.append(rng.choice(CLOSERS))
    return " ".join(parts)


def phrase_pools(new_words: bool) -> tuple[list[str], list[str]]:
    """Golden `new_words` rows take their opinions from the golden-only phrases alone, so every
    opinion in them is one train never showed."""
    if new_words:
        return GOLDEN_POSITIVE, GOLDEN_NEGATIVE
    return POSITIVE, NEGATIVE


def draw(rng: random.Random, products: list[str], label: str, pos: list[str], neg: list[str]) -> tuple[str, str]:
    return review(rng, rng.choice(products), label, pos, neg), label


def build(rng: random.Random) -> tuple[list[Row], list[Row]]:
    train_draws = [partial(draw, products=TRAIN_PRODUCTS, label=label, pos=POSITIVE, neg=NEGATIVE)
                   for label in balanced(rng, LABELS, N_TRAIN)]  # fmt: skip
    golden_draws = []
    for slice_name in ("known_words", "new_words"):
        pos, neg = phrase_pools(slice_name == "new_words")
        golden_draws += [(slice_name, partial(draw, products=GOLDEN_PRODUCTS, label=label, pos=pos, neg=neg))
                         for label in balanced(rng, LABELS, GOLDEN_PER_SLICE)]  # fmt: skip
    return assemble(rng, SYSTEM, train_draws, golden_draws, EXACT)


if __name__ == "__main__":
    main(build, SEED, Path(__file__).resolve().parent, "Generate the sentiment_labels task.")
