#!/usr/bin/env python3
"""Generate the support_replies preference task (standard library only).

Task: answer a customer-support request in the house style: two or three short, polite
sentences that name the request's order id or product, ending on the line
`— The Acme Support Team`. Each row is a DPO pair: `chosen` keeps the style, `rejected` answers
the same request but breaks it in one labelled way (`flaw`).

    python examples/support_replies/generate.py            # writes next to this file
    python examples/support_replies/generate.py --out DIR  # writes DIR/train.jsonl, eval.jsonl, golden.jsonl

One random.Random(0) drives everything, so a re-run writes byte-identical files. Train, eval
and golden requests use disjoint customer names, order ids that never repeat, and disjoint
phrasings of each request (train, eval and golden phrasings are separate lists), and any
held-out request whose word 5-gram Jaccard against a train request reaches MAX_HELDOUT_JACCARD
is drawn again. Golden rows carry four regex checks (signed off, names the order id or product,
at most CONCISE_MAX_WORDS words, polite); each flaw kind fails exactly one of them. After
writing, a summary is printed (counts, flaw balance, word counts, the largest
held-out-vs-train Jaccard).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SEED = 0
N_TRAIN = 600  # 100 pairs per flaw kind
N_EVAL = 120  # 20 per flaw kind
N_GOLDEN = 60
GOLDEN_SLICE = "style"
MAX_HELDOUT_JACCARD = 0.6  # held-out requests this close to a train request are redrawn
MAX_TRAIN_JACCARD = 0.85  # train requests this close to an earlier one are redrawn (the data stage's dedup level)
MAX_CHOSEN_WORDS = 60  # whitespace tokens, sign-off included
CONCISE_MAX_WORDS = 70  # the golden length check: room above the chosen replies, far below a ramble
MIN_RAMBLE_WORDS = 90

SIGN_OFF = "— The Acme Support Team"
SYSTEM = (
    "You are the Acme support assistant. Reply in two or three short, polite sentences that "
    "address the customer's order or product by name, then end with the line: " + SIGN_OFF
)
FLAWS = ["rambling", "rude", "generic", "no_signoff", "mangled_signoff", "wrong_signoff"]
SIGNOFF_FLAWS = ("no_signoff", "mangled_signoff", "wrong_signoff")

# What the golden checks (and the tests) call polite: the chosen replies always hold one of these
# words, the rude ones never do.
POLITE_PATTERN = r"(?i)\b(?:thank|sorry|apologi|happy to|glad)"
SIGN_OFF_PATTERN = r"\n" + SIGN_OFF + r"\s*$"  # the sign-off holds no regex metacharacter
CONCISE_PATTERN = rf"(?:\S+\s+){{0,{CONCISE_MAX_WORDS - 1}}}\S+"

PRODUCTS = (
    "wireless earbuds|bluetooth speaker|smart watch|fitness tracker|robot vacuum|espresso machine|"
    "air fryer|electric kettle|coffee grinder|stand mixer|gaming mouse|mechanical keyboard|usb-c hub|"
    "portable charger|e-reader|smart thermostat|video doorbell|electric toothbrush|hair dryer|"
    "air purifier|baby monitor|dash cam|wifi router|office chair|cast iron skillet|yoga mat|"
    "hiking backpack|memory foam pillow|winter jacket|camping tent|desk lamp|blender"
).split("|")

# Disjoint name pools: no customer name is shared between train, eval and golden.
TRAIN_NAMES = (
    "Anna Ben Carla David Elena Frank Grace Hugo Irene Jamal Karen Liam Maria Nate Olivia Pedro Quinn "
    "Rosa Sam Tara Umar Vera Will Yuki Zoe Aisha Brian Chloe Derek Emma Felix Hannah Ivan Julia Kevin "
    "Lena Marco Nina Oscar Priya"
).split()
EVAL_NAMES = "Rahul Sofia Tom Ursula Victor Wendy Xavier Yasmin Amir Bianca Colin Dana Eli Fiona Gus".split()
GOLDEN_NAMES = (
    "Adele Bruno Celine Dmitri Esther Farid Gemma Hector Ingrid Joaquin Keiko Lorenzo Mireille Odette".split()
)


@dataclass(frozen=True)
class Intent:
    """One kind of request: its phrasings per split, and the replies in and out of the house style.
    Placeholders: {p} product, {o} order id (intents with has_order), {n} the customer's name."""

    name: str
    has_order: bool
    train: tuple[str, ...]
    eval: tuple[str, ...]
    golden: tuple[str, ...]
    chosen: tuple[tuple[str, str], ...]  # the body's opening sentence and the rest; the sign-off is added
    rude: tuple[str, ...]  # curt, no POLITE_PATTERN word, still names the order or product


INTENTS = [
    Intent(
        "order_change",
        True,
        train=(
            "I placed order {o} for the {p} an hour ago and want to cancel it.",
            "Can I still cancel order {o}? I ordered the {p} by mistake.",
            "I'd like to change the colour on order {o}, the {p}.",
            "Please cancel my order {o} for a {p}, I found one locally.",
            "Is it too late to add a second {p} to order {o}?",
            "I want to swap the {p} in order {o} for a different model.",
            "Order {o} has the wrong quantity, I only wanted one {p}.",
        ),
        eval=(
            "Quick question about {o}: could the {p} on it be removed before it ships?",
            "Having second thoughts on the {p}. Any way to stop {o} from going out?",
            "Ordered a {p} earlier today ({o}) and now need it pulled from the order.",
        ),
        golden=(
            "My partner already bought a {p}, so {o} is not needed anymore. Can it be stopped?",
            "Before {o} leaves the warehouse, could you take the {p} off it?",
            "Need to back out of {o}. The {p} is no longer required.",
        ),
        chosen=(
            (
                "Hi {n}, thanks for letting us know about order {o}.",
                "I've cancelled the {p} and you'll see the refund within five business days.",
            ),
            (
                "Hi {n}, happy to help with order {o}.",
                "The {p} hadn't shipped yet, so I've updated the order and sent you a new confirmation.",
            ),
            (
                "Hello {n}, thank you for catching this early.",
                "Order {o} is now changed as you asked, and the {p} will not be charged.",
            ),
        ),
        rude=(
            "Order {o} is changed. Next time check your cart before you pay.",
            "Fine, order {o} no longer has the {p}. Don't make us do this again.",
        ),
    ),
    Intent(
        "refund",
        True,
        train=(
            "I returned the {p} from order {o} two weeks ago and still have no refund.",
            "I want a refund for the {p} on order {o}, it stopped working.",
            "Where is my refund for order {o}? The {p} went back last month.",
            "The {p} from order {o} is not what I expected, can I get my money back?",
            "Please refund order {o}. The {p} arrived broken.",
            "How long does a refund take? I sent back the {p} from order {o}.",
            "I was promised a refund for the {p} on order {o} but nothing came.",
        ),
        eval=(
            "Still waiting on money for the {p} I shipped back, order {o}. What is the status?",
            "The courier confirmed you received the {p} (ref {o}), yet my card shows nothing.",
            "Could the {p} be refunded instead of replaced? That was order {o}.",
        ),
        golden=(
            "Three weeks since your warehouse got the {p} back and my bank shows no credit for {o}.",
            "Rather than a repair I would prefer the cost of the {p} returned to me, order {o}.",
            "Your site says the {p} return for {o} is complete, but where did the money go?",
        ),
        chosen=(
            (
                "Hi {n}, sorry for the wait on order {o}.",
                "I've issued the refund for the {p} today, and it should reach your card within five business days.",
            ),
            (
                "Hi {n}, thank you for your patience with order {o}.",
                "Your refund for the {p} is approved and will show on your statement within a week.",
            ),
            (
                "Hello {n}, I'm sorry the {p} didn't work out.",
                "I've refunded order {o} in full to your original payment method.",
            ),
        ),
        rude=(
            "Refunds for order {o} take as long as they take. Stop emailing about it.",
            "The {p} refund on order {o} is in the queue. Wait like everyone else.",
        ),
    ),
    Intent(
        "password",
        True,
        train=(
            "I forgot my password and can't see order {o} for the {p}.",
            "My password reset email never arrives, and I need to check order {o} for my {p}.",
            "I'm locked out of my account after too many tries, I need the invoice for the {p} on order {o}.",
            "The reset link says it expired. I just want to track my {p}, order {o}.",
            "I can't log in anymore and my {p} order {o} is in that account.",
            "Your site keeps rejecting my password, so I can't review order {o} for my {p}.",
            "How do I reset my password? I need to see when the {p} from order {o} arrives.",
        ),
        eval=(
            "Login fails every time now, which is a problem because {o} with my {p} is under that profile.",
            "Got no email after pressing forgot password. Need access to look at {o}, the {p}.",
            "Account says too many attempts. Trying to download the receipt for the {p}, {o}.",
        ),
        golden=(
            "Every sign-in attempt bounces me back to the start page, and {o} for the {p} sits in there.",
            "Whatever I type, the password is wrong. I have to check on the {p} in {o} today.",
            "Been trying to get back into my profile for days to follow the {p} on {o}.",
        ),
        chosen=(
            (
                "Hi {n}, sorry you're locked out.",
                "I've sent a fresh reset link to your email, and once you're in, order {o} will be under My Orders.",
            ),
            (
                "Hi {n}, thanks for reaching out.",
                "I've unlocked your account and sent a new reset link so you can see order {o} for the {p}.",
            ),
            (
                "Hello {n}, I'm sorry about the trouble signing in.",
                "A new password link is on its way, and order {o} is safe in your account.",
            ),
        ),
        rude=(
            "Use the reset link like it says. Order {o} is in your account.",
            "Reset your password yourself. Order {o} isn't going anywhere.",
        ),
    ),
    Intent(
        "shipping",
        True,
        train=(
            "Where is my order {o}? The {p} was supposed to arrive on Monday.",
            "Tracking for order {o} hasn't updated in a week, I'm waiting for a {p}.",
            "My {p} from order {o} says delivered but it isn't here.",
            "I'm still waiting on order {o}, a {p}. Any update?",
            "Order {o} is late. When will the {p} get here?",
            "The courier left a note for order {o} but I missed the {p} delivery.",
            "Has order {o} shipped yet? I need the {p} by the weekend.",
        ),
        eval=(
            "No sign of the {p} yet. Tracking page for {o} shows the same status since last Tuesday.",
            "My doorstep was empty even though {o} was marked as dropped off. Expecting a {p}.",
            "Any news on when {o} will turn up? It contains a {p} I need for a trip.",
        ),
        golden=(
            "Ten days and counting with no {p}. What happened to {o}?",
            "The carrier app claims {o} reached me, but no {p} anywhere in the building.",
            "Is {o} lost? The {p} still hasn't come and I need it before the holidays.",
        ),
        chosen=(
            (
                "Hi {n}, sorry the {p} is taking so long.",
                "Order {o} is with the courier and due in two days, and I've emailed you the tracking link.",
            ),
            (
                "Hi {n}, thank you for checking in about order {o}.",
                "I've asked the courier to trace the {p} and will update you within 24 hours.",
            ),
            (
                "Hello {n}, I'm sorry about the delay with order {o}.",
                "I've upgraded it to express shipping, so the {p} should arrive this week.",
            ),
        ),
        rude=(
            "Order {o} is with the courier. Check the tracking link yourself.",
            "The {p} in order {o} ships when it ships. Nothing to do on our end.",
        ),
    ),
    Intent(
        "billing",
        True,
        train=(
            "I was charged twice for order {o}, one {p}.",
            "My card shows an extra charge on order {o} for the {p}.",
            "The discount code didn't apply to order {o}, the {p} was full price.",
            "Why was I billed for express shipping on order {o}? I chose standard for the {p}.",
            "The invoice for order {o} shows the wrong amount for the {p}.",
            "I paid for the {p} with a gift card but order {o} also hit my credit card.",
            "There is a charge for order {o} that I don't recognise, I never ordered a {p}.",
        ),
        eval=(
            "Two identical payments left my account for {o}. Only one {p} was bought.",
            "Price at checkout for the {p} was lower than what the statement says for {o}.",
            "Promo should have taken 20 percent off {o}, but the {p} cost the same.",
        ),
        golden=(
            "Looking at my bank app, {o} appears to have been paid for twice. It was a single {p}.",
            "Somehow express delivery ended up on the bill for {o} when the {p} went standard.",
            "The total on the receipt for {o} does not match the listed price of the {p}.",
        ),
        chosen=(
            (
                "Hi {n}, sorry about the billing mix-up on order {o}.",
                "I've refunded the extra charge for the {p}, and it will clear within five business days.",
            ),
            (
                "Hi {n}, thank you for spotting this on order {o}.",
                "I've corrected the amount for the {p} and emailed you a new invoice.",
            ),
            (
                "Hello {n}, I apologise for the wrong charge on order {o}.",
                "The difference for the {p} is on its way back to your card.",
            ),
        ),
        rude=(
            "Order {o} was billed correctly as far as we can see. Read your statement again.",
            "The charge for order {o} stands. Call your bank if you don't like it.",
        ),
    ),
    Intent(
        "account",
        True,
        train=(
            "I need to change the delivery address on order {o} for the {p}.",
            "Can you update the email on my account? Order {o} for the {p} went to my old one.",
            "Please put order {o} under my new phone number, the courier can't reach me about the {p}.",
            "I moved house, can order {o} with the {p} go to the new address?",
            "Can you fix the postcode on order {o}? The {p} will never find me otherwise.",
            "My name is misspelled on order {o}, the {p} might not be handed over.",
            "I'd like to merge my two accounts, order {o} for the {p} is on the old one.",
        ),
        eval=(
            "The address saved for {o} is from before my move. The {p} needs to reach the new flat.",
            "Confirmations for {o} keep going to an inbox I lost access to. It was a {p}.",
            "Could my surname on {o} be fixed? The parcel with the {p} needs ID to collect.",
        ),
        golden=(
            "Recently relocated, so {o} and the {p} on it should head to my current place instead.",
            "An outdated phone number is on {o}, meaning the courier for the {p} cannot call me.",
            "The flat number is missing from {o}. Please add it before the {p} is dispatched.",
        ),
        chosen=(
            (
                "Hi {n}, thanks for the update.",
                "I've changed the details on order {o}, so the {p} will go out with the new information.",
            ),
            (
                "Hi {n}, happy to sort this out.",
                "Order {o} now has your updated details, and the courier will use them for the {p}.",
            ),
            (
                "Hello {n}, thank you for letting us know.",
                "Your account and order {o} are updated, and I've emailed you a confirmation.",
            ),
        ),
        rude=(
            "Update your own details in settings. Order {o} uses whatever you typed.",
            "Order {o} is changed. Keep your account current next time.",
        ),
    ),
    Intent(
        "warranty",
        False,
        train=(
            "What warranty comes with the {p}?",
            "My {p} broke after eight months, is it still under warranty?",
            "Does the {p} have a warranty if I bought it on sale?",
            "How do I make a warranty claim for my {p}?",
            "Can I extend the warranty on the {p} I bought last year?",
            "Is accidental damage covered for the {p}?",
            "Do I need the receipt to use the warranty on my {p}?",
        ),
        eval=(
            "If the {p} fails next year, will you repair it for free?",
            "Mine is a {p} from about ten months back and it just died. Covered?",
            "Which problems with the {p} does your guarantee actually include?",
        ),
        golden=(
            "How many years of cover does a {p} come with from you?",
            "Our {p} quit working shortly before its first birthday. Is that something you fix?",
            "Looking to register the {p} for protection. Where does one do that?",
        ),
        chosen=(
            (
                "Hi {n}, thanks for asking about the {p}.",
                "It has a two-year warranty against faults, and you can start a claim from your order page.",
            ),
            (
                "Hi {n}, sorry to hear the {p} is giving you trouble.",
                "It is still covered by our two-year warranty, so I've emailed you a free return label.",
            ),
            (
                "Hello {n}, happy to help with the {p}.",
                "Our warranty covers manufacturing faults for two years, with or without the receipt.",
            ),
        ),
        rude=(
            "The {p} warranty is on the product page. Look it up.",
            "The {p} has the standard warranty. It's all in the manual you threw away.",
        ),
    ),
    Intent(
        "product_info",
        False,
        train=(
            "Is the {p} in stock? I want to buy one this week.",
            "How do I clean the {p}?",
            "Does the {p} come with a charger or do I buy it separately?",
            "Is the {p} available in other colours?",
            "What is the difference between the {p} and the older model?",
            "Can the {p} be used outside the country?",
            "When will the {p} be back in stock?",
        ),
        eval=(
            "Thinking about getting the {p}. Is there stock right now?",
            "What is the right way to care for a {p} so it lasts?",
            "Does the {p} ship with everything in the box, or are extras needed?",
        ),
        golden=(
            "Are there any {p} units available to ship today?",
            "Planning to gift a {p}. Which finishes does it come in?",
            "Compared with last year's version, what changed on the {p}?",
        ),
        chosen=(
            (
                "Hi {n}, thanks for your question about the {p}.",
                "The answer is in the Details section of its product page, and I've emailed you the full guide too.",
            ),
            (
                "Hi {n}, glad you asked about the {p}.",
                "I've sent you its specifications, stock dates and care guide by email, so everything is in one place.",
            ),
            (
                "Hello {n}, thank you for your interest in the {p}.",
                "Our product team has answered this on its page under Questions, and I'm happy to help further.",
            ),
        ),
        rude=(
            "The {p} details are on the product page. Read it before writing in.",
            "Everything about the {p} is on the website. We don't answer this by email.",
        ),
    ),
]

GREETINGS = ["", "", "Hi,", "Hello,", "Hi there,", "Hello support,", "Good morning,", "Hey,", "Dear Acme,"]
CONTEXT = [
    "",
    "",
    "",
    "I've shopped with you for years.",
    "This is my first time contacting support.",
    "I checked the help pages already.",
    "It's a gift for my brother.",
    "I paid by credit card.",
]
CLOSINGS = ["Thanks, {n}", "Thank you, {n}", "Regards, {n}", "Cheers, {n}", "Best, {n}", "{n}", "- {n}"]
INTROS = ["", "", "", "", "This is {n}. "]

GENERIC = [
    (
        "Hi {n}, thank you for contacting Acme.",
        "We've received your message and a member of our team will look into it shortly.",
    ),
    (
        "Hi {n}, thanks for getting in touch.",
        "We're sorry for any trouble, and we'll reply with an update as soon as we can.",
    ),
    (
        "Hello {n}, thank you for reaching out to us.",
        "Your request has been logged, and we'll be glad to help once it's reviewed.",
    ),
    (
        "Hi {n}, thanks for your message.",
        "Please check our help centre for common questions, and we'll follow up if anything else is needed.",
    ),
    (
        "Hello {n}, we appreciate your patience and thank you for writing in.",
        "Our team is working through requests and will get back to you soon.",
    ),
]
# Rambling replies: an on-topic first sentence, then these, then the chosen reply's last sentence.
FILLER = [
    "Acme was founded in a small garage over thirty years ago, and we still remember our very first customer fondly.",
    "The weather here at our headquarters has been lovely this week, which always puts the whole team in a good mood.",
    "If you haven't yet, you might enjoy our monthly newsletter, with staff picks, recipes and seasonal tips.",
    "Our loyalty programme gives you points on every purchase, and the points can be swapped for all sorts of rewards.",
    "We recently opened a new store downtown with a café inside, so do stop by for a coffee if you are ever nearby.",
    "Many customers tell us they like to read our blog, where we post long articles on how our products are designed.",
    "Our support team has grown a lot this year, and we have even started a book club that meets every other Friday.",
    "As a side note, our spring catalogue is out now and contains hundreds of items you may not have seen before.",
    "We also believe in giving back, and every year we plant trees and sponsor a local youth football team.",
    "Some people ask us about our office dog, Biscuit, who sleeps under the reception desk most afternoons.",
]
MANGLED = [
    "- The Acme Support Team",
    "— The Acme Support",
    "— the acme support team",
    "— The Acme Suport Team",
    "The Acme Support Team",
    "— The Acme Support Team.",
    "-- Acme Support Team",
    "— Acme Support Team",
]
WRONG = [
    "— The Globex Help Desk",
    "Best regards,\nJordan from Customer Care",
    "Cheers,\nThe Support Bot",
    "— Initech Customer Service",
    "Warm wishes,\nThe Team",
    "Sincerely,\nAcme Billing Department",
]

Row = dict[str, Any]
_WORD = re.compile(r"\w+")


def shingles(text: str) -> set[str]:
    """Word 5-grams of lowercased \\w+ tokens (a row under 5 words: its words), as the data stage's
    near-duplicate check (loraforge.data.hygiene) builds them."""
    words = _WORD.findall(text.casefold())
    if len(words) < 5:
        return set(words)
    return {" ".join(words[i : i + 5]) for i in range(len(words) - 4)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class OrderIds:
    """Order ids in two formats, never reused anywhere in the dataset."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def make(self) -> str:
        while True:
            if self.rng.random() < 0.6:
                oid = f"ORD-{self.rng.randint(10000, 99999)}"
            else:
                oid = f"AC{self.rng.randint(100000, 999999)}"
            if oid not in self.used:
                self.used.add(oid)
                return oid


@dataclass(frozen=True)
class Request:
    intent: Intent
    user: str
    fill: dict[str, str]  # n, p and (when the intent has an order) o

    @property
    def refs(self) -> list[str]:
        """What a reply may name to address the request: whichever of its order id and product the
        request itself mentions (every phrasing names the product, the order kinds the order id too)."""
        return [self.fill[key] for key in ("o", "p") if key in self.fill and self.fill[key] in self.user]


def user_message(rng: random.Random, core: str) -> str:
    """A request assembled around its core sentence; only the core carries the order or product."""
    parts = [rng.choice(INTROS) + core, rng.choice(CONTEXT)]
    if rng.random() < 0.5:
        parts.reverse()
    body = " ".join(p for p in parts if p)
    greeting = rng.choice(GREETINGS)
    text = f"{greeting}\n\n{body}" if greeting else body
    return f"{text}\n\n{rng.choice(CLOSINGS)}"


def draw_request(rng: random.Random, intent: Intent, split: str, names: Sequence[str], ids: OrderIds) -> Request:
    fill = {"n": rng.choice(names), "p": rng.choice(PRODUCTS)}
    if intent.has_order:
        fill["o"] = ids.make()
    core = rng.choice(getattr(intent, split)).format(**fill)
    return Request(intent, user_message(rng, core).format(**fill), fill)


def signed(body: str) -> str:
    return f"{body}\n\n{SIGN_OFF}"


def reply(sentences: Sequence[str], fill: dict[str, str]) -> str:
    return " ".join(sentences).format(**fill)


def rejected_reply(rng: random.Random, request: Request, flaw: str, chosen: tuple[str, str]) -> str:
    """A reply to `request` that breaks the house style in the way `flaw` names, and in no other."""
    fill = request.fill
    chosen_body = reply(chosen, fill)
    if flaw == "rambling":  # polite, on topic and signed, but four off-topic sentences long
        return signed(reply([chosen[0], *rng.sample(FILLER, 4), chosen[1]], fill))
    if flaw == "rude":
        return signed(rng.choice(request.intent.rude).format(**fill))
    if flaw == "generic":
        return signed(reply(rng.choice(GENERIC), fill))
    if flaw == "no_signoff":
        return chosen_body
    if flaw == "mangled_signoff":
        return f"{chosen_body}\n\n{rng.choice(MANGLED)}"
    if flaw == "wrong_signoff":
        return f"{chosen_body}\n\n{rng.choice(WRONG)}"
    raise ValueError(f"unknown flaw {flaw!r}; use one of {', '.join(FLAWS)}")


def literal(text: str) -> str:
    """`text` as a regex; spaces and hyphens stay as they are, to keep the pattern readable in the file."""
    return re.escape(text).replace("\\ ", " ").replace("\\-", "-")


def style_checks(refs: Sequence[str]) -> list[Row]:
    """The golden checks: signed off, names one of `refs` (the order id or product), concise, polite."""
    mention = "|".join(literal(ref) for ref in refs)
    return [
        {"type": "regex", "pattern": SIGN_OFF_PATTERN},
        {"type": "regex", "pattern": f"(?i)(?:{mention})"},
        {"type": "regex", "pattern": CONCISE_PATTERN, "full_match": True},
        {"type": "regex", "pattern": POLITE_PATTERN},
    ]


def prompt(request: Request) -> list[Row]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": request.user}]


def balanced(rng: random.Random, values: Sequence[Any], n: int) -> list[Any]:
    """n values, as even across `values` as n allows, in a seeded random order."""
    out = [values[i % len(values)] for i in range(n)]
    rng.shuffle(out)
    return out


class Drawer:
    """Draws requests no earlier row has, each far enough from train (by word 5-gram Jaccard)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.ids = OrderIds(rng)
        self.seen: set[str] = set()
        self.train_grams: list[set[str]] = []

    def draw(self, intent: Intent, split: str, names: Sequence[str]) -> Request:
        limit = MAX_TRAIN_JACCARD if split == "train" else MAX_HELDOUT_JACCARD
        for _ in range(1000):
            request = draw_request(self.rng, intent, split, names, self.ids)
            grams = shingles(request.user)
            if request.user in self.seen or any(jaccard(grams, t) >= limit for t in self.train_grams):
                continue
            self.seen.add(request.user)
            if split == "train":
                self.train_grams.append(grams)
            return request
        raise RuntimeError(f"1000 draws in a row for {intent.name}/{split} were too close to earlier rows")


def pair_rows(drawer: Drawer, split: str, names: Sequence[str], n: int, prefix: str) -> list[Row]:
    rng = drawer.rng
    rows = []
    for i, (flaw, intent) in enumerate(zip(balanced(rng, FLAWS, n), balanced(rng, INTENTS, n), strict=True), 1):
        request = drawer.draw(intent, split, names)
        chosen = rng.choice(intent.chosen)
        rows.append({
            "id": f"{prefix}-{i:04d}",
            "flaw": flaw,
            "intent": intent.name,
            "prompt": prompt(request),
            "chosen": signed(reply(chosen, request.fill)),
            "rejected": rejected_reply(rng, request, flaw, chosen),
        })  # fmt: skip
    return rows


def golden_rows(drawer: Drawer, n: int) -> list[Row]:
    rows = []
    for i, intent in enumerate(balanced(drawer.rng, INTENTS, n), 1):
        request = drawer.draw(intent, "golden", GOLDEN_NAMES)
        reference = signed(reply(drawer.rng.choice(intent.chosen), request.fill))
        messages = [*prompt(request), {"role": "assistant", "content": reference}]
        rows.append(
            {"id": f"g-{i:04d}", "slice": GOLDEN_SLICE, "messages": messages, "checks": style_checks(request.refs)}
        )
    return rows


def build(rng: random.Random) -> tuple[list[Row], list[Row], list[Row]]:
    drawer = Drawer(rng)
    train = pair_rows(drawer, "train", TRAIN_NAMES, N_TRAIN, "t")
    eval_rows = pair_rows(drawer, "eval", EVAL_NAMES, N_EVAL, "e")
    golden = golden_rows(drawer, N_GOLDEN)
    check_rows(train + eval_rows)
    return train, eval_rows, golden


def check_rows(rows: list[Row]) -> None:
    """The house-style promises the README makes, checked on every pair before anything is written."""
    problems = []
    for item in rows:
        chosen, rejected, flaw = item["chosen"], item["rejected"], item["flaw"]
        if len(chosen.split()) > MAX_CHOSEN_WORDS or not chosen.endswith("\n" + SIGN_OFF):
            problems.append(f"{item['id']}: chosen is long or unsigned")
        if not 2 <= len(re.findall(r"[.!?](?:\s|$)", chosen.removesuffix(SIGN_OFF))) <= 3:
            problems.append(f"{item['id']}: chosen is not two or three sentences")
        if chosen == rejected:
            problems.append(f"{item['id']}: chosen equals rejected")
        if flaw in SIGNOFF_FLAWS and rejected.rstrip().endswith("\n" + SIGN_OFF):
            problems.append(f"{item['id']}: {flaw} rejected ends with the sign-off")
        if flaw == "rambling" and len(rejected.split()) < MIN_RAMBLE_WORDS:
            problems.append(f"{item['id']}: rambling rejected has under {MIN_RAMBLE_WORDS} words")
        if flaw == "rude" and re.search(POLITE_PATTERN, rejected):
            problems.append(f"{item['id']}: rude rejected holds a polite word")
    if problems:
        raise RuntimeError("generated rows break the task's rules:\n" + "\n".join(problems))


def write_jsonl(path: Path, rows: list[Row]) -> None:
    """One JSON object a line, UTF-8, written to a temporary name and renamed."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as handle:
        for item in rows:
            handle.write(json.dumps(item, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def summary(train: list[Row], eval_rows: list[Row], golden: list[Row]) -> str:
    lines = [f"train: {len(train)} pairs, eval: {len(eval_rows)} pairs, golden: {len(golden)} rows"]
    for name, rows in (("train", train), ("eval", eval_rows)):
        flaws = Counter(r["flaw"] for r in rows)
        lines.append(f"  {name} flaws: " + ", ".join(f"{k}={flaws[k]}" for k in FLAWS))
        for side in ("chosen", "rejected"):
            words = sorted(len(r[side].split()) for r in rows)
            lines.append(f"  {name} {side} words: min={words[0]} p50={words[len(words) // 2]} max={words[-1]}")
    train_grams = [shingles(r["prompt"][1]["content"]) for r in train]
    for name, users in (
        ("eval", [r["prompt"][1]["content"] for r in eval_rows]),
        ("golden", [r["messages"][1]["content"] for r in golden]),
    ):
        worst = max(jaccard(shingles(u), t) for u in users for t in train_grams)
        lines.append(f"  max {name}-vs-train Jaccard (word 5-grams): {worst:.3f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Generate the support_replies preference task.")
    here = Path(__file__).resolve().parent
    parser.add_argument("--out", type=Path, default=here, help="output folder (default: next to the script)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    train, eval_rows, golden = build(random.Random(SEED))
    for name, rows in (("train.jsonl", train), ("eval.jsonl", eval_rows), ("golden.jsonl", golden)):
        write_jsonl(args.out / name, rows)
    print(f"wrote train.jsonl, eval.jsonl and golden.jsonl in {args.out}")
    print(summary(train, eval_rows, golden))


if __name__ == "__main__":
    main()
