#!/usr/bin/env python3
"""Generate the field_extract task: one sentence -> "name=<name>; city=<city>; date=YYYY-MM-DD".

    python examples/tasks/field_extract/generate.py            # writes next to this file
    python examples/tasks/field_extract/generate.py --out DIR  # writes DIR/train.jsonl, DIR/golden.jsonl

Each sentence names one person, one city and one date, in varying order. The date is written in
words ("March 3, 2027", "the 3rd of March 2027", "3 Mar 2027"; never as dotted or slashed
numbers) and the answer normalises it to ISO form, with the month as a number and the day
zero-padded. Golden slices: `month_first` and `day_first`, by how the date is written. Golden
rows use first names, surnames, cities and years train never uses. One random.Random(0) drives
everything.
"""

from __future__ import annotations

import random
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # taskgen.py, shared by the tasks
from taskgen import EXACT, GOLDEN_PER_SLICE, Row, assemble, balanced, main  # noqa: E402

SEED = 0
N_TRAIN = 600
SYSTEM = "Extract name, city and date."
SLICES = ["month_first", "day_first"]

TRAIN_FIRST = (
    "Anna Ben Carla David Elena Frank Grace Hugo Irene Jamal Karen Liam Maria Nate Olivia Pedro Quinn Rosa "
    "Sam Tara Umar Vera Will Yuki Zoe Aisha Brian Chloe Derek Emma Felix Hannah Ivan Julia Kevin Lena"
).split()
TRAIN_LAST = (
    "Smith Garcia Chen Miller Okafor Novak Rossi Kim Schmidt Patel Lopez Nguyen Brown Silva Kowalski Murphy "
    "Dubois Tanaka Evans Haddad Jensen Moreau Larsen Costa Weber Ali Fischer Romero"
).split()
TRAIN_CITIES = (
    "Lisbon|Osaka|Toronto|Nairobi|Madrid|Chicago|Prague|Melbourne|Lagos|Dublin|Seoul|Oslo|Denver|Lyon|"
    "Porto|Hamburg|Krakow|Cairo|Manila|Lima|Vienna|Boston|Seville|Glasgow|Zurich|Accra|Bogota|Helsinki|"
    "Buenos Aires|San Diego|Cape Town|New Delhi|Kyoto|Munich|Athens|Quito|Perth|Antwerp|Tallinn|Montreal"
).split("|")
# Golden years sit inside the training range (every decade digit is seen in training), so the
# golden split asks the model to copy an unseen year, not to write a digit it never saw: with train
# 2018-2027 and golden 2029-2032, both loraforge and a plain PEFT loop wrote "202" for every golden year.
GOLDEN_YEARS = [2014, 2023, 2031, 2036]
TRAIN_YEARS = [y for y in range(2010, 2040) if y not in GOLDEN_YEARS]

GOLDEN_FIRST = "Adele Bruno Celine Dmitri Esther Farid Gemma Hector Ingrid Joaquin Keiko Lorenzo Mireille".split()
GOLDEN_LAST = "Abara Bjork Castellano Duarte Eriksen Fontaine Grieco Halvorsen Iwata Lindqvist".split()
GOLDEN_CITIES = (
    "Valparaiso|Tbilisi|Reykjavik|Ljubljana|Marrakesh|Hobart|Winnipeg|Cordoba|Bergen|Da Nang|Salzburg|"
    "Santa Fe|Trieste|Windhoek|Galway"
).split("|")
GOLDEN_ONLY = (*GOLDEN_FIRST, *GOLDEN_LAST, *GOLDEN_CITIES, *(str(y) for y in GOLDEN_YEARS))

MONTHS = "January February March April May June July August September October November December".split()


def ordinal(day: int) -> str:
    suffix = "th" if 11 <= day <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


DATE_STYLES = {  # slice -> ways to write (day, month name, year)
    "month_first": [
        lambda d, m, y: f"{m} {d}, {y}",
        lambda d, m, y: f"{m} {ordinal(d)}, {y}",
        lambda d, m, y: f"{m[:3]} {d}, {y}",
        lambda d, m, y: f"{m} {ordinal(d)} {y}",
    ],
    "day_first": [
        lambda d, m, y: f"{d} {m} {y}",
        lambda d, m, y: f"the {ordinal(d)} of {m} {y}",
        lambda d, m, y: f"{ordinal(d)} {m} {y}",
        lambda d, m, y: f"{d} {m[:3]} {y}",
    ],
}
SENTENCES = [  # {n} name, {c} city, {d} date
    "{n} is flying to {c} on {d}.",
    "On {d}, {n} will arrive in {c}.",
    "{n} moved to {c} on {d}.",
    "{n} signed the lease for a flat in {c} on {d}.",
    "The conference in {c} on {d} will be opened by {n}.",
    "{n} gave a talk in {c} on {d}.",
    "Booked for {n}: a hotel room in {c} on {d}.",
    "{c} will host {n} on {d}.",
    "{n} plans to visit {c} on {d}, weather permitting.",
    "On {d} {n} opened a small bakery in {c}.",
    "Reminder: {n} starts the new job in {c} on {d}.",
    "We met {n} at the market in {c} on {d}.",
]


def sentence(
    rng: random.Random, slice_name: str, first: list[str], last: list[str], cities: list[str], years: list[int]
) -> tuple[str, str]:
    name, city = f"{rng.choice(first)} {rng.choice(last)}", rng.choice(cities)
    year, month, day = rng.choice(years), rng.randrange(1, 13), rng.randrange(1, 29)
    written = rng.choice(DATE_STYLES[slice_name])(day, MONTHS[month - 1], year)
    text = rng.choice(SENTENCES).format(n=name, c=city, d=written)
    return text, f"name={name}; city={city}; date={year:04d}-{month:02d}-{day:02d}"


def build(rng: random.Random) -> tuple[list[Row], list[Row]]:
    train_pools = {"first": TRAIN_FIRST, "last": TRAIN_LAST, "cities": TRAIN_CITIES, "years": TRAIN_YEARS}
    golden_pools = {"first": GOLDEN_FIRST, "last": GOLDEN_LAST, "cities": GOLDEN_CITIES, "years": GOLDEN_YEARS}
    train_draws = [partial(sentence, slice_name=s, **train_pools) for s in balanced(rng, SLICES, N_TRAIN)]
    golden_draws = [(s, partial(sentence, slice_name=s, **golden_pools))
                    for s in SLICES for _ in range(GOLDEN_PER_SLICE)]  # fmt: skip
    return assemble(rng, SYSTEM, train_draws, golden_draws, EXACT)


if __name__ == "__main__":
    main(build, SEED, Path(__file__).resolve().parent, "Generate the field_extract task.")
