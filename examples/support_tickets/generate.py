#!/usr/bin/env python3
"""Generate the bundled support-ticket demo dataset (standard library only).

Task: a customer-support email -> a compact JSON object with the keys
order_id, product, issue_type, urgency (always in that order).

    python examples/support_tickets/generate.py            # writes next to this file
    python examples/support_tickets/generate.py --out DIR  # writes DIR/train.jsonl, DIR/golden.jsonl

Everything is driven by one ``random.Random(0)``, so re-running reproduces
byte-identical files. After writing, a short summary is printed (row counts,
label balance, email length percentiles, and the maximum golden-vs-train
Jaccard similarity on word 5-grams).

Label rules that keep the task learnable for a very small model:
  * order_id is copied verbatim from the email (ORD-12345, A1B2-3344 or an
    8-digit number), or null when the email has none;
  * product is one of PRODUCTS and appears verbatim, lowercase, exactly once;
  * each email states exactly one issue and carries at most one urgency cue
    (no cue -> "medium");
  * noise (lowercasing, dropped punctuation, extra whitespace, typos, a quoted
    previous message) never touches the order id or the product name, and
    typos only hit filler (greeting, context, closing, sign-off).
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

N_TRAIN = 800
N_TRAIN_NOISY = 240  # ~30 %
N_GOLDEN_PER_SLICE = 60
MIN_WORDS, MAX_WORDS = 40, 90
MAX_GOLDEN_JACCARD = 0.6  # golden candidates closer than this to any train email are redrawn

ISSUE_TYPES = ["damaged", "missing_item", "wrong_item", "refund", "late_delivery", "billing", "technical"]
URGENCIES = ["low", "medium", "high"]
FIELDS = ["order_id", "product", "issue_type", "urgency"]

SYSTEM = (
    "Extract the support ticket as JSON with keys order_id (or null), product, "
    "issue_type (damaged, missing_item, wrong_item, refund, late_delivery, billing, technical), "
    "urgency (low, medium, high). Reply with JSON only."
)

# name -> (kind, plural). kind: "tech" (can have a technical fault), "hard", "soft".
# No name is a substring of another, and no product word is used in the filler text.
PRODUCTS: dict[str, tuple[str, bool]] = {
    "wireless earbuds": ("tech", True),
    "bluetooth speaker": ("tech", False),
    "smart watch": ("tech", False),
    "fitness tracker": ("tech", False),
    "robot vacuum": ("tech", False),
    "espresso machine": ("tech", False),
    "air fryer": ("tech", False),
    "electric kettle": ("tech", False),
    "coffee grinder": ("tech", False),
    "stand mixer": ("tech", False),
    "noise-cancelling headphones": ("tech", True),
    "gaming mouse": ("tech", False),
    "mechanical keyboard": ("tech", False),
    "usb-c hub": ("tech", False),
    "portable charger": ("tech", False),
    "e-reader": ("tech", False),
    "smart thermostat": ("tech", False),
    "video doorbell": ("tech", False),
    "electric toothbrush": ("tech", False),
    "hair dryer": ("tech", False),
    "air purifier": ("tech", False),
    "baby monitor": ("tech", False),
    "dash cam": ("tech", False),
    "wifi router": ("tech", False),
    "standing desk": ("tech", False),
    "office chair": ("hard", False),
    "cast iron skillet": ("hard", False),
    "ceramic dinnerware set": ("hard", False),
    "bookshelf": ("hard", False),
    "carry-on suitcase": ("hard", False),
    "bike helmet": ("hard", False),
    "monitor arm": ("hard", False),
    "insulated water bottle": ("hard", False),
    "knife set": ("hard", False),
    "yoga mat": ("soft", False),
    "hiking backpack": ("soft", False),
    "duvet cover": ("soft", False),
    "memory foam pillow": ("soft", False),
    "running shoes": ("soft", True),
    "winter jacket": ("soft", False),
    "camping tent": ("soft", False),
    "throw blanket": ("soft", False),
}

# Disjoint name pools: train and golden never share a customer name.
TRAIN_FIRST = (
    "Anna Ben Carla David Elena Frank Grace Hugo Irene Jamal Karen Liam Maria Nate Olivia Pedro Quinn Rosa "
    "Sam Tara Umar Vera Will Yuki Zoe Aisha Brian Chloe Derek Emma Felix Hannah Ivan Julia Kevin Lena Marco "
    "Nina Oscar Priya Rahul Sofia Tom Ursula Victor Wendy Xavier Yasmin"
).split()
TRAIN_LAST = (
    "Smith Garcia Chen Miller Okafor Novak Rossi Kim Schmidt Patel Lopez Nguyen Brown Silva Kowalski Murphy "
    "Dubois Tanaka Evans Haddad Jensen Moreau"
).split()
GOLDEN_FIRST = (
    "Adele Bruno Celine Dmitri Esther Farid Gemma Hector Ingrid Joaquin Keiko Lorenzo Mireille Nikolai "
    "Odette Pablo Rhea Stellan Thea Ugo"
).split()
GOLDEN_LAST = "Abara Bjork Castellano Duarte Eriksen Fontaine Grieco Halvorsen Iwata Lindqvist".split()

GREETINGS = [
    "Hi,",
    "Hello,",
    "Hi there,",
    "Hello support team,",
    "Dear Customer Service,",
    "Hey,",
    "Good morning,",
    "Good afternoon,",
    "To whom it may concern,",
    "Dear support,",
    "Hi team,",
    "Hello there,",
]
SIGNOFFS = [
    "Thanks,",
    "Thank you,",
    "Best regards,",
    "Kind regards,",
    "Regards,",
    "Cheers,",
    "Best,",
    "Many thanks,",
    "Thanks in advance,",
    "Sincerely,",
]

# Opening sentences with no label content.
OPENERS = [
    "I hope you can help me with something.",
    "I'm writing about a recent purchase from your store.",
    "I have a problem with something I bought from you.",
    "I need some help with one of my orders.",
    "I'm reaching out about an order I placed on your website.",
    "Sorry to bother you, but something went wrong with my order.",
    "I have a question about a recent order.",
    "Just a note about something I ordered recently.",
]

# Neutral context sentences (no urgency cue, no other issue); pronouns agree with the product.
CONTEXT_GENERIC = [
    "I've been a customer for a few years and this is the first problem I've had.",
    "I bought {them} through your website using my usual account.",
    "This was meant to be a gift for my sister.",
    "I usually have a great experience with your shop.",
    "I ordered {them} together with a few other things.",
    "My partner recommended your store to me.",
    "I paid with my credit card at checkout.",
    "I chose standard shipping when I ordered.",
    "I checked your help pages first but couldn't find an answer.",
    "This was my first order from your store.",
]
CONTEXT_BY_TYPE = {
    "damaged": [
        "I have photos of {them} if you need any.",
        "The outer box was also crushed on one side.",
        "There was hardly any padding in the parcel.",
        "I kept all the packaging in case you need it back.",
    ],
    "missing_item": [
        "I checked the packaging twice to be sure.",
        "The packing slip is still in the box.",
        "The parcel weighed a lot less than I expected.",
        "My neighbour was home when it came and nothing was left outside.",
    ],
    "wrong_item": [
        "I double-checked my order confirmation.",
        "The item I got is still in its packaging.",
        "The label on the box has my name and address on it.",
        "I have not opened the item I was sent.",
    ],
    "refund": [
        "I still have the original packaging.",
        "I have not used {them} at all.",
        "I ordered {them} last month.",
        "I read that your return window is thirty days.",
    ],
    "late_delivery": [
        "The tracking page just says {it} {is} in transit.",
        "Nobody left a delivery notice either.",
        "I have been home every day so I would not have missed it.",
        "The courier website shows no new updates.",
    ],
    "billing": [
        "I can send a screenshot of my bank statement.",
        "I only placed the order once.",
        "The order confirmation email shows the correct price.",
        "I use the same card for all my orders with you.",
    ],
    "technical": [
        "I already tried unplugging {them} and starting again.",
        "I followed the steps in the manual.",
        "I also tried a different cable and socket.",
        "I did a factory reset but nothing changed.",
    ],
}

# Neutral closing requests.
CLOSINGS = [
    "Could you look into this?",
    "Please let me know what the next steps are.",
    "What are my options?",
    "Can you help me with this?",
    "I'd appreciate your help.",
    "Let me know if you need anything else from me.",
    "Could you tell me how to proceed?",
    "Thanks for looking into it.",
]

# Issue sentences. {p} is the product (verbatim, lowercase); {it}/{is}/{was}/{s}/... (see _agree)
# agree with a plural product; {dmg} is a damage word that fits the product's material.
ISSUE_TEMPLATES: dict[str, list[str]] = {
    "damaged": [
        "The {p} arrived {dmg}.",
        "When I opened the box, the {p} {was} {dmg}.",
        "My {p} showed up {dmg} and I can't use {them}.",
        "The {p} I received {is} {dmg} on one side.",
        "Unfortunately the {p} came {dmg}, probably from the shipping.",
        "I just unpacked the {p} and {it} {is} {dmg}.",
        "The {p} {was} {dmg} when the courier handed me the parcel.",
        "The box looked fine but the {p} inside {was} {dmg}.",
        "I received my {p} this morning and {it} {was} already {dmg}.",
        "Sadly the {p} got {dmg} somewhere in transit.",
    ],
    "missing_item": [
        "The package arrived, but the {p} {wasnt} inside.",
        "I got the box with the rest of my order, but the {p} {wasnt} in it.",
        "The {p} {is} listed on the packing slip but {it} {wasnt} in the parcel.",
        "Only part of my order came and the {p} {is} missing from it.",
        "Everything else was in the parcel except the {p}.",
        "My delivery came without the {p} that I paid for.",
        "The parcel was delivered but the {p} {was} not included.",
        "I opened the package and the {p} simply {wasnt} there.",
        "The {p} should have been in my delivery, but {it} {wasnt}.",
        "Two of the three items were in the box, but not the {p}.",
    ],
    "wrong_item": [
        "Instead of the {p} I ordered, the box had a completely different item in it.",
        "I ordered the {p} but received something else entirely.",
        "The {p} that arrived {is} a different model from the one I picked.",
        "I got the {p} in the wrong colour.",
        "The {p} you sent {is} not the version I ordered.",
        "I was sent the wrong version of the {p}.",
        "The parcel was labelled as my {p}, but the item inside was something else.",
        "You shipped me a different item in place of the {p} on my order.",
        "The {p} I received {doesnt} match the listing I ordered from.",
        "I received someone else's item instead of my {p}.",
    ],
    "refund": [
        "I'd like to return the {p} and get my money back.",
        "I changed my mind about the {p} and would like a refund.",
        "The {p} {isnt} what I expected, so I want to send {them} back for a refund.",
        "Please refund the {p}, I no longer need {them}.",
        "I sent the {p} back two weeks ago and haven't received my refund yet.",
        "Can I return the {p} for a full refund?",
        "I would like my money back for the {p}.",
        "I decided to keep using my old one, so I'd like to return the {p} for a refund.",
        "The {p} {doesnt} suit me and I'd like to be refunded.",
        "How do I get a refund for the {p}?",
    ],
    "late_delivery": [
        "My {p} {was} supposed to arrive last week and still {hasnt} shown up.",
        "The tracking for my {p} hasn't updated in eight days.",
        "It has been three weeks since I ordered the {p} and {it} {isnt} here yet.",
        "The estimated delivery date for the {p} passed on Monday.",
        "My {p} still {hasnt} been delivered even though the order shipped ages ago.",
        "I'm still waiting for the {p}, which {was} due last Friday.",
        "The {p} seem{s} to be stuck at the local depot.",
        "The delivery of my {p} is two weeks behind schedule.",
        "I was told the {p} would arrive in five days, but that was over two weeks ago.",
        "The {p} {has} been marked as out for delivery for four days.",
    ],
    "billing": [
        "I was charged twice for the {p}.",
        "My card was billed for the {p} two times.",
        "The amount I was charged for the {p} is higher than the price at checkout.",
        "My discount code wasn't applied when I paid for the {p}.",
        "The invoice for the {p} shows the wrong amount.",
        "I was billed for express shipping on the {p} but I chose standard.",
        "My bank statement shows an extra charge for the {p}.",
        "I paid for the {p} with a gift card, but my credit card was charged as well.",
        "The {p} {was} on sale, but I was charged the full price.",
        "There is a duplicate payment for the {p} on my account.",
    ],
    "technical": [
        "The {p} won't turn on at all.",
        "My {p} stop{s} working after a few minutes.",
        "The {p} keep{s} showing an error light and won't start.",
        "The {p} worked for two days and then stopped responding.",
        "The buttons on the {p} don't do anything.",
        "My {p} keep{s} restarting on {its} own.",
        "After the last update the {p} {is} stuck on the start screen.",
        "The {p} make{s} a loud buzzing noise and then shut{s} off.",
        "I can't get the {p} to connect to the app.",
        "The {p} {doesnt} charge no matter which cable I use.",
    ],
}
DAMAGE_WORDS = {
    "tech": ["cracked", "broken", "dented", "scratched", "smashed"],
    "hard": ["cracked", "broken", "dented", "scratched", "chipped"],
    "soft": ["torn", "ripped", "stained", "damaged"],
}

URGENCY_CUES = {
    "low": [
        "No rush on this, whenever you get a chance.",
        "It's not urgent, so take your time.",
        "Whenever you have a moment is fine.",
        "There's no hurry at all.",
        "Just get back to me when you can, no rush.",
        "This isn't time-sensitive.",
        "Whenever it's convenient for you is fine.",
        "It can wait, I'm in no hurry.",
    ],
    "high": [
        "Please sort this out ASAP.",
        "I need this resolved today.",
        "This is the third time I'm writing about this.",
        "This is urgent.",
        "I need an answer as soon as possible.",
        "Please escalate this immediately.",
        "URGENT: please reply today.",
        "I've contacted you three times already, please fix this now.",
        "I need this sorted by tomorrow at the latest.",
        "Please treat this as urgent.",
    ],
}

ORDER_REFS = [
    "My order number is {o}.",
    "The order number is {o}.",
    "This is for order {o}.",
    "Order: {o}",
    "Order number {o}.",
    "It was order {o}.",
    "The order is {o}.",
    "For reference, my order is {o}.",
]
ORDER_OPENERS = [
    "I'm writing about order {o}.",
    "This is about my order {o}.",
    "Re: order {o}.",
    "Regarding order {o}:",
]
NO_ORDER_REFS = [
    "I can't find my order number, sorry.",
    "I checked out as a guest so I don't have an order number.",
    "I deleted the confirmation email, so I don't have the order number.",
]

QUOTES = [
    "> On Monday, Support wrote:\n> Thanks for contacting us. Could you tell us more about the problem?",
    "> Support Team wrote:\n> Hello, we received your message and will get back to you.",
    "-----Original Message-----\n> Thank you for reaching out. Please reply with the details of your issue.",
    "> On Tue, Customer Care wrote:\n> Hi, can you describe what happened so we can help?",
]

OID = "\ue000"  # sentinels: protected from every kind of noise, restored last
PROD = "\ue001"
TYPO_SUBS = {"please": "pls", "thanks": "thx", "you": "u", "your": "ur", "because": "bc", "with": "w/"}


def _agree(text: str, plural: bool) -> str:
    forms = {
        "{it}": ("they", "it"),
        "{them}": ("them", "it"),
        "{is}": ("are", "is"),
        "{was}": ("were", "was"),
        "{has}": ("have", "has"),
        "{doesnt}": ("don't", "doesn't"),
        "{isnt}": ("aren't", "isn't"),
        "{wasnt}": ("weren't", "wasn't"),
        "{hasnt}": ("haven't", "hasn't"),
        "{its}": ("their", "its"),
        "{s}": ("", "s"),
    }
    for key, (pl, sg) in forms.items():
        text = text.replace(key, pl if plural else sg)
    return text


def _capitalise(s: str) -> str:
    return s[:1].upper() + s[1:] if s and s[0].isalpha() else s


class IdMaker:
    """Order ids in three formats, never reused across the whole dataset."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def make(self) -> str:
        r = self.rng
        while True:
            fmt = r.random()
            if fmt < 0.4:
                oid = f"ORD-{r.randint(10000, 99999)}"
            elif fmt < 0.7:
                chars = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
                oid = "".join(r.choice(chars) for _ in range(4)) + f"-{r.randint(1000, 9999)}"
            else:
                oid = str(r.randint(10_000_000, 99_999_999))
            if oid not in self.used:
                self.used.add(oid)
                return oid


def _typo(word: str, r: random.Random) -> str:
    core = word.strip(".,!?:;")
    if core.lower() in TYPO_SUBS and r.random() < 0.5:
        sub = TYPO_SUBS[core.lower()]
        return word.replace(core, sub)
    if len(core) < 4 or not core.isalpha():
        return word
    i = r.randint(1, len(core) - 2)
    kind = r.random()
    if kind < 0.4:  # swap two neighbours
        new = core[:i] + core[i + 1] + core[i] + core[i + 2 :]
    elif kind < 0.7:  # drop a letter
        new = core[:i] + core[i + 1 :]
    else:  # double a letter
        new = core[:i] + core[i] + core[i:]
    return word.replace(core, new)


def _typo_segment(text: str, r: random.Random, rate: float) -> str:
    words = text.split(" ")
    return " ".join(_typo(w, r) if OID not in w and PROD not in w and r.random() < rate else w for w in words)


def make_email(
    r: random.Random, ids: IdMaker, issue: str, urgency: str, noisy: bool, firsts: list[str], lasts: list[str]
) -> tuple[str, dict]:
    """One email and its label. Text is assembled from tagged segments so noise can target filler only."""
    candidates = [p for p, (kind, _) in PRODUCTS.items() if issue != "technical" or kind == "tech"]
    product = r.choice(candidates)
    kind, plural = PRODUCTS[product]
    has_oid = r.random() < 0.85
    oid = ids.make() if has_oid else None
    first = r.choice(firsts)
    name = first if r.random() < 0.6 else f"{first} {r.choice(lasts)}"

    issue_s = _agree(r.choice(ISSUE_TEMPLATES[issue]), plural)
    issue_s = issue_s.replace("{dmg}", r.choice(DAMAGE_WORDS[kind])).replace("{p}", PROD)
    issue_s = _capitalise(issue_s)

    # body: list of (text, is_filler)
    opener: tuple[str, bool] | None = None
    order_seg: tuple[str, bool] | None = None
    if oid is not None:
        if r.random() < 0.3:
            opener = (r.choice(ORDER_OPENERS).replace("{o}", OID), False)
        else:
            order_seg = (r.choice(ORDER_REFS).replace("{o}", OID), False)
    else:
        if r.random() < 0.5:
            order_seg = (r.choice(NO_ORDER_REFS), True)
    if opener is None and r.random() < 0.55:
        opener = (r.choice(OPENERS), True)

    n_ctx = r.choices([0, 1, 2, 3], weights=[2, 5, 4, 1])[0]
    pool = CONTEXT_GENERIC + CONTEXT_BY_TYPE[issue] * 2
    ctx = []
    for s in r.sample(pool, n_ctx + 2):
        s = _agree(s, plural)
        if s not in ctx:
            ctx.append(s)
        if len(ctx) == n_ctx:
            break
    middle: list[tuple[str, bool]] = [(issue_s, False)]
    if order_seg is not None:
        # order reference right after the issue, or after the context
        middle.append(order_seg)
    for c in ctx:
        middle.insert(r.randint(1, len(middle)), (c, True))
    if order_seg is not None and r.random() < 0.25:
        middle.remove(order_seg)
        middle.insert(0, order_seg)

    body: list[tuple[str, bool]] = ([opener] if opener else []) + middle
    if urgency != "medium":
        cue = (r.choice(URGENCY_CUES[urgency]), False)
        if r.random() < 0.3:
            body.insert(1 if opener else 0, cue)  # never before the opening line
        else:
            body.append(cue)
    if r.random() < 0.75:
        body.append((r.choice(CLOSINGS), True))

    greeting = r.choice(GREETINGS) if r.random() < 0.85 else None
    signoff = r.choice(SIGNOFFS) if r.random() < 0.85 else None
    sign_name = name if r.random() < 0.9 else None

    # ---- noise plan -------------------------------------------------------
    ops: set[str] = set()
    if noisy:
        opts = ["lower", "punct", "space", "quote", "typo"]
        weights = [0.7, 0.5, 0.5, 0.35, 0.6]
        for o, w in zip(opts, weights, strict=True):
            if r.random() < w:
                ops.add(o)
        while len(ops) < 2:
            ops.add(r.choice(opts))
    if "typo" in ops:
        rate = 0.25
        body = [(_typo_segment(t, r, rate), f) if f else (t, f) for t, f in body]
        if greeting:
            greeting = _typo_segment(greeting, r, rate)
        if signoff:
            signoff = _typo_segment(signoff, r, rate)

    # ---- layout -----------------------------------------------------------
    layout = r.random()
    texts = [t for t, _ in body]
    if layout < 0.45:
        body_text = " ".join(texts)
    else:  # split into two paragraphs
        cut = r.randint(1, max(1, len(texts) - 1))
        body_text = " ".join(texts[:cut])
        if cut < len(texts):
            body_text += "\n\n" + " ".join(texts[cut:])
    parts: list[str] = []
    if greeting:
        parts.append(greeting)
    parts.append(body_text)
    if signoff and sign_name:
        parts.append(f"{signoff}\n{sign_name}" if r.random() < 0.7 else f"{signoff} {sign_name}")
    elif signoff:
        parts.append(signoff)
    elif sign_name:
        parts.append(f"- {sign_name}")
    sep = "\n\n" if not noisy or r.random() < 0.6 else " "
    email = sep.join(parts)

    if "quote" in ops:
        email = email + "\n\n" + r.choice(QUOTES)
    if "lower" in ops:
        email = email.lower()
    if "punct" in ops:
        email = re.sub(r"[.,!?;:'’]", lambda m: "" if r.random() < 0.8 else m.group(0), email)
    if "space" in ops:
        email = re.sub(r" ", lambda m: "  " if r.random() < 0.12 else " ", email)
        email = re.sub(r"\n", lambda m: " \n" if r.random() < 0.4 else "\n", email)
        if r.random() < 0.5:
            email = "  " + email
        if r.random() < 0.5:
            email = email + "\n "
    assert email.count(PROD) == 1 and email.count(OID) == (1 if oid else 0)
    email = email.replace(PROD, product)
    if oid:
        email = email.replace(OID, oid)
    label = {"order_id": oid, "product": product, "issue_type": issue, "urgency": urgency}
    return email, label


def word_count(text: str) -> int:
    return len(text.split())


def five_grams(text: str) -> set[tuple[str, ...]]:
    w = re.findall(r"\w+", text.lower())
    return {tuple(w[i : i + 5]) for i in range(len(w) - 4)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def _balanced(r: random.Random, values: list[str], n: int) -> list[str]:
    out = (values * (n // len(values) + 1))[:n]
    r.shuffle(out)
    return out


def _draw(r, ids, issue, urgency, noisy, firsts, lasts, seen_emails, accept=None) -> tuple[str, dict]:
    while True:
        snapshot = set(ids.used)
        email, label = make_email(r, ids, issue, urgency, noisy, firsts, lasts)
        ok = MIN_WORDS <= word_count(email) <= MAX_WORDS and email not in seen_emails
        if ok and accept is not None:
            ok = accept(email)
        if ok:
            seen_emails.add(email)
            return email, label
        ids.used = snapshot  # give the id back


def row(rid: str, email: str, label: dict) -> dict:
    return {
        "id": rid,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": email},
            {"role": "assistant", "content": json.dumps({k: label[k] for k in FIELDS}, ensure_ascii=False)},
        ],
    }


def build() -> tuple[list[dict], list[dict]]:
    r = random.Random(0)
    ids = IdMaker(r)
    seen: set[str] = set()

    train: list[dict] = []
    issues = _balanced(r, ISSUE_TYPES, N_TRAIN)
    urgs = _balanced(r, URGENCIES, N_TRAIN)
    noisy_flags = [True] * N_TRAIN_NOISY + [False] * (N_TRAIN - N_TRAIN_NOISY)
    r.shuffle(noisy_flags)
    for i in range(N_TRAIN):
        email, label = _draw(r, ids, issues[i], urgs[i], noisy_flags[i], TRAIN_FIRST, TRAIN_LAST, seen)
        train.append(row(f"t-{i + 1:04d}", email, label))

    train_grams = [five_grams(t["messages"][1]["content"]) for t in train]

    def far_from_train(email: str) -> bool:
        g = five_grams(email)
        return all(jaccard(g, t) <= MAX_GOLDEN_JACCARD for t in train_grams)

    golden: list[dict] = []
    checks = [{"type": "json_valid"}, {"type": "json_fields", "fields": FIELDS}]
    n = 0
    for slice_name in ("clean", "noisy"):
        g_issues = _balanced(r, ISSUE_TYPES, N_GOLDEN_PER_SLICE)
        g_urgs = _balanced(r, URGENCIES, N_GOLDEN_PER_SLICE)
        for i in range(N_GOLDEN_PER_SLICE):
            email, label = _draw(
                r,
                ids,
                g_issues[i],
                g_urgs[i],
                slice_name == "noisy",
                GOLDEN_FIRST,
                GOLDEN_LAST,
                seen,
                accept=far_from_train,
            )
            n += 1
            rec = row(f"g-{n:04d}", email, label)
            rec["slice"] = slice_name
            rec["checks"] = checks
            golden.append(rec)
    return train, golden


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for rec in rows:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def _pct(values: list[int], q: float) -> int:
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


def summary(train: list[dict], golden: list[dict]) -> str:
    lines = [f"train: {len(train)} rows, golden: {len(golden)} rows"]
    for name, rows in (("train", train), ("golden", golden)):
        emails = [x["messages"][1]["content"] for x in rows]
        words = [word_count(e) for e in emails]
        chars = [len(e) for e in emails]
        pw = " ".join(f"p{q}={_pct(words, q)}" for q in (5, 50, 95))
        pc = " ".join(f"p{q}={_pct(chars, q)}" for q in (5, 50, 95))
        lines.append(f"  {name} email words: min={min(words)} {pw} max={max(words)}")
        lines.append(f"  {name} email chars: min={min(chars)} {pc} max={max(chars)}")
        labels = [json.loads(x["messages"][2]["content"]) for x in rows]
        for key in ("issue_type", "urgency"):
            counts: dict[str, int] = {}
            for lab in labels:
                counts[lab[key]] = counts.get(lab[key], 0) + 1
            lines.append(f"  {name} {key}: " + ", ".join(f"{k}={counts[k]}" for k in sorted(counts)))
        lines.append(f"  {name} order_id null: {sum(lab['order_id'] is None for lab in labels)}")
    train_grams = [five_grams(t["messages"][1]["content"]) for t in train]
    worst = max(max(jaccard(five_grams(g["messages"][1]["content"]), t) for t in train_grams) for g in golden)
    lines.append(f"  max golden-vs-train Jaccard (word 5-grams): {worst:.3f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output folder")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    train, golden = build()
    write_jsonl(args.out / "train.jsonl", train)
    write_jsonl(args.out / "golden.jsonl", golden)
    print(f"wrote {args.out / 'train.jsonl'} and {args.out / 'golden.jsonl'}")
    print(summary(train, golden))


if __name__ == "__main__":
    main()
