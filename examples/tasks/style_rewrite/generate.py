#!/usr/bin/env python3
"""Generate the style_rewrite task: a casual one-line request -> "Ticket: <system>. Action: <verb>."

    python examples/tasks/style_rewrite/generate.py            # writes next to this file
    python examples/tasks/style_rewrite/generate.py --out DIR  # writes DIR/train.jsonl, DIR/golden.jsonl

The request names one system and one thing to do to it, phrased many ways: as a question or an
order (slice `direct`: the verb stands in its base form, "Could you restart the build server?")
or through a gerund or participle (slice `inflected`: "The build server needs restarting.",
"We need the build server restarted."), where the rewrite has to turn the verb back into its
base form. The answer is always `Ticket: build server. Action: restart.`, which an `exact` check
verifies. Golden requests are about systems train never mentions. One random.Random(0) drives
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
N_TRAIN = 400
SYSTEM = "Rewrite the request as a ticket."
SLICES = ["direct", "inflected"]

# Singular nouns only: templates say "The {s} needs ...".
TRAIN_SYSTEMS = (
    "staging database|build server|print queue|vpn gateway|payroll job|backup drive|wiki site|test cluster|"
    "ci runner|license server|badge reader|lobby display|file share|dns cache|load balancer|search index|"
    "shared calendar|guest wifi|sales dashboard|customer portal|inventory app|log archive|ticket tracker|"
    "office printer|conference speaker|lab workstation|release branch|metrics pipeline|billing service|"
    "help desk bot|design laptop|kiosk tablet|parking gate|time clock|door controller|cache cluster|"
    "report generator|video wall|intranet homepage|expense tool|sensor hub|cold storage bucket|"
    "training server|web proxy|code mirror|asset database|chat server|label maker|warehouse scanner|"
    "password vault"
).split("|")
GOLDEN_SYSTEMS = (
    "telemetry collector|loyalty app|survey platform|fax gateway|signage player|event queue|"
    "scheduling service|translation engine|thermostat panel|forklift terminal|audio mixer|map tile server|"
    "donation portal|recipe database|kiln controller|greenhouse monitor|shuttle tracker|archive robot|"
    "orchestra tuner|planetarium projector"
).split("|")
GOLDEN_ONLY = tuple(GOLDEN_SYSTEMS)

# (base form, gerund, past participle); the answer's Action is the base form.
VERBS = [
    ("restart", "restarting", "restarted"),
    ("reboot", "rebooting", "rebooted"),
    ("patch", "patching", "patched"),
    ("update", "updating", "updated"),
    ("upgrade", "upgrading", "upgraded"),
    ("reset", "resetting", "reset"),
    ("archive", "archiving", "archived"),
    ("migrate", "migrating", "migrated"),
    ("rebuild", "rebuilding", "rebuilt"),
    ("redeploy", "redeploying", "redeployed"),
    ("audit", "auditing", "audited"),
    ("back up", "backing up", "backed up"),
    ("clean up", "cleaning up", "cleaned up"),
    ("replace", "replacing", "replaced"),
    ("repair", "repairing", "repaired"),
    ("inspect", "inspecting", "inspected"),
    ("reconfigure", "reconfiguring", "reconfigured"),
    ("rename", "renaming", "renamed"),
    ("shut down", "shutting down", "shut down"),
    ("roll back", "rolling back", "rolled back"),
    ("unlock", "unlocking", "unlocked"),
    ("relocate", "relocating", "relocated"),
    ("test", "testing", "tested"),
    ("monitor", "monitoring", "monitored"),
    ("decommission", "decommissioning", "decommissioned"),
    ("reinstall", "reinstalling", "reinstalled"),
    ("scale up", "scaling up", "scaled up"),
    ("document", "documenting", "documented"),
]

DIRECT = [  # {v}: the base form
    "Could you {v} the {s}?",
    "Please {v} the {s} when you have a minute.",
    "Can someone {v} the {s}? It has been acting up.",
    "Is anyone able to {v} the {s} this week?",
    "hey, can you {v} the {s} pls",
    "I need you to {v} the {s} before the review.",
    "Someone should {v} the {s}.",
    "Would it be possible to {v} the {s}?",
    "Quick one: {v} the {s}, please.",
    "can u {v} the {s}",
]
INFLECTED = [  # {g}: the gerund, {pp}: the past participle
    "The {s} needs {g}.",
    "The {s} has to be {pp}.",
    "We need the {s} {pp} before Friday.",
    "I think the {s} should be {pp}.",
    "Requesting that the {s} be {pp}, thanks.",
    "the {s} needs {g} again",
    "Any chance of {g} the {s} soon?",
    "Our team would like the {s} {pp}.",
    "{G} the {s} would help a lot.",
    "Could the {s} be {pp} today?",
]
CONTEXT = [  # no verb from VERBS, no system name
    "It has been slow all morning.",
    "Thanks in advance.",
    "This came up in the standup.",
    "No rush.",
    "The on-call person asked me to file this.",
    "Marketing noticed it first.",
    "It is blocking two people.",
    "Same as last month.",
]


def request(rng: random.Random, system: str, slice_name: str) -> tuple[str, str]:
    base, gerund, participle = rng.choice(VERBS)
    if slice_name == "direct":
        text = rng.choice(DIRECT).format(v=base, s=system)
    else:
        text = rng.choice(INFLECTED).format(g=gerund, G=gerund.capitalize(), pp=participle, s=system)
    roll = rng.random()
    if roll < 0.3:
        text = f"{rng.choice(CONTEXT)} {text}"
    elif roll < 0.6:
        text = f"{text} {rng.choice(CONTEXT)}"
    return text, f"Ticket: {system}. Action: {base}."


def draw(rng: random.Random, systems: list[str], slice_name: str) -> tuple[str, str]:
    return request(rng, rng.choice(systems), slice_name)


def build(rng: random.Random) -> tuple[list[Row], list[Row]]:
    train_draws = [partial(draw, systems=TRAIN_SYSTEMS, slice_name=s) for s in balanced(rng, SLICES, N_TRAIN)]
    golden_draws = [(s, partial(draw, systems=GOLDEN_SYSTEMS, slice_name=s))
                    for s in SLICES for _ in range(GOLDEN_PER_SLICE)]  # fmt: skip
    return assemble(rng, SYSTEM, train_draws, golden_draws, EXACT)


if __name__ == "__main__":
    main(build, SEED, Path(__file__).resolve().parent, "Generate the style_rewrite task.")
