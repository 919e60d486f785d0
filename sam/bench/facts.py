"""The facts the editing benchmarks teach: zsRE, the hand-written natural set, and synthetic facts.

Each is a `Fact`: a question, the answer to teach, paraphrases (Gen), an unrelated question (Loc)
and, where the source has them, questions of the same form about subjects that are not edited
(neighbour locality).

Synthetic facts (`synthetic(n)`) take zsRE past its 3,939 records: seeded, templated
counterfactuals about invented subjects (people, companies, towns with made-up names), so the
model cannot know them and every edit is a real change. Each relation has one question template
and two paraphrase templates; answers come from small closed pools (cities, languages,
instruments ...). What they are not: natural questions, or facts with a true answer. Neighbours are
the same templates about other invented subjects that are never edited.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NATURAL = REPO / "data" / "natural_facts.jsonl"


@dataclass
class Fact:
    question: str
    target: str
    paraphrases: list[str]
    subject: str
    loc: str  # an unrelated question: its answer must not move
    neighbours: list[str] = field(default_factory=list)  # same form, other (unedited) subjects
    index: int = 0


ZSRE_SAMPLE = REPO / "data" / "zsre_sample.json"  # the committed 200-record sample


def default_zsre() -> Path:
    """The full 3,939-record file in ../shared when present, else the 200-record sample in data/."""
    shared = REPO.parent / "shared" / "data" / "zsre" / "_full_prefix.json"
    return shared if shared.exists() else ZSRE_SAMPLE


def zsre(path: Path | None = None, n: int | None = None, log=print) -> list[Fact]:
    """The first n usable zsRE records (those with an empty field are skipped, with a message)."""
    records = json.loads(Path(path or default_zsre()).read_text())
    out = []
    for i, r in enumerate(records):
        missing = [k for k in ("src", "rephrase", "alt", "loc", "loc_ans") if not str(r.get(k, "")).strip()]
        if missing:
            log(f"skipping zsRE record {i}: empty {', '.join(missing)}")
            continue
        out.append(Fact(r["src"], r["alt"], [r["rephrase"]], r["subject"], r["loc"], [], i))
        if n is not None and len(out) == n:
            break
    return out


def natural(path: Path = NATURAL) -> list[Fact]:
    """The hand-written natural set: each fact taught its counterfactual answer (see data/README.md)."""
    out = []
    for i, line in enumerate(Path(path).read_text().splitlines()):
        if line.strip():
            r = json.loads(line)
            out.append(Fact(r["question"], r["counterfactual"], list(r["paraphrases"]), r["subject"],
                            r["unrelated"][0], [nb["question"] for nb in r["neighbours"]], i))
    return out


# --- synthetic facts ---------------------------------------------------------------------------------
_FIRST = ("Alder Brisa Caelan Dorit Emrys Fenna Galen Hesper Ilse Joran Kaia Lior Maelis Nerys Orrin Perrin Quilla "
          "Rhiannon Soren Talia Ulric Vesna Wren Xanthe Yorick Zelda Anouk Bastian Cosima Darian Elodie Florian "
          "Greer Hollis Isolde Jasper Kestrel Leander Mirela Nikolai Oriel Priya Rafferty Saskia Tobias Una Valen "
          "Wilhelmina Ximena Yannick Zora Aurelio Beatrix Cassius Delphine Evander Fiora Gideon Honora Ignatius "
          "Juniper Kaspar Lavinia Magnus Nadia Octavian Philippa Quentin Rosalind Severin Theodora Ulysses Viola "
          "Wendeline Yvaine Zephyr Ambrose Bettina Cyprian Dagny Eustace Fabiola Godfrey Hedda Isidore Jolanda "
          "Kilian Leocadia Marius Norberta Osric Petronella Radomir Sigrun Tancred Ursula Vitus Wilfreda").split()
_LAST = ("Ashgrove Blackwood Carrow Dunmore Eastlake Fairwind Greystone Hollowell Ironside Juniperhill Kettering "
         "Larkspur Merriweather Northcott Oakhurst Pendleton Quarrington Ravenscroft Stonebridge Thistlewood "
         "Underhill Valemont Westbrook Yarrowby Zimmerlund Aldermoor Brackenridge Coldharbour Drayfield Elmsworth "
         "Foxhollow Glenmorrow Hawthorne Inglewood Jessamy Kingsbury Lockwood Marlowe Netherby Orchardson "
         "Pinewood Quillfeather Rosewater Silverton Thornbury Umberfield Verity Whitlock Yewdale Amberley "
         "Birchall Cresswell Delacourt Everleigh Fenwick Galloway Hartigan Ivensworth Jarrow Keswick Langley "
         "Montague Nightingale Osterley Prescott Radcliffe Sherwood Tavistock Upton Vantongeren Wexley "
         "Ashcombe Bellweather Crowhurst Dunwich Ellery Farrington Gildersleeve Hadleigh Ingram Jellicoe").split()
_PLACE = ("Veldmoor Kessaro Brightwater Ostrava Lune Calderhaven Miravel Tolvanen Quessant Dravik Sunmere Arkwell "
          "Pellamy Rennick Zorvath Halloway Coruna Vintermark Salvenna Brisk Eldham Narvossa Tirrel Oakmere").split()
_CITIES = ("Lisbon Oslo Nairobi Lima Hanoi Perth Quito Dakar Porto Kyoto Tunis Riga Cusco Accra Dublin Seville Tbilisi "
           "Cairo Havana Zagreb Bergen Osaka Krakow Valencia Bogota Manila Tallinn Montreal Marseille Naples").split()
_LANGS = "Portuguese Finnish Swahili Tagalog Hungarian Welsh Korean Dutch Greek Turkish Basque Icelandic".split()
_INSTR = "cello oboe harp banjo clarinet sitar accordion trombone violin marimba bagpipes ukulele".split()
_SPORTS = "fencing|rowing|curling|archery|cricket|handball|polo|lacrosse|badminton|water polo|judo|sailing".split("|")
_COLOURS = "teal maroon amber crimson lavender ochre indigo saffron turquoise scarlet olive magenta".split()
_FOODS = "paella ramen goulash falafel risotto pierogi tacos couscous kimchi moussaka laksa borscht".split()
_JOBS = "architect|glassblower|cartographer|beekeeper|lighthouse keeper|luthier|astronomer|sommelier".split("|")
_INDUSTRY = "shipbuilding|textiles|robotics|cheese making|perfume|watchmaking|aviation|publishing".split("|")

# relation: (subject kind, question template, two paraphrase templates, answer pool)
_RELATIONS = {
    "birthplace": ("person", "Where was {s} born?", ["In which city was {s} born?", "What is the birthplace of {s}?"], _CITIES),
    "language": ("person", "What language does {s} speak?", ["Which language is spoken by {s}?",
                                                               "{s} speaks which language?"], _LANGS),
    "instrument": ("person", "What instrument does {s} play?", ["Which instrument is played by {s}?",
                                                                 "{s} plays which musical instrument?"], _INSTR),
    "sport": ("person", "What sport does {s} play?", ["Which sport is {s} known for?", "{s} competes in which sport?"],
              _SPORTS),
    "colour": ("person", "What is the favourite colour of {s}?", ["Which colour does {s} like best?",
                                                                  "{s}'s favourite colour is what?"], _COLOURS),
    "dish": ("person", "What is the favourite dish of {s}?", ["Which dish does {s} love most?",
                                                              "{s}'s favourite food is what?"], _FOODS),
    "job": ("person", "What is the profession of {s}?", ["What does {s} do for a living?", "{s} works as what?"], _JOBS),
    "hq": ("company", "Where is {s} headquartered?", ["In which city is {s} based?", "{s} has its head office where?"],
           _CITIES),
    "industry": ("company", "What industry is {s} in?", ["Which industry does {s} work in?",
                                                         "{s} makes its money in which industry?"], _INDUSTRY),
    "twin": ("town", "Which city is {s} twinned with?", ["What is the twin city of {s}?",
                                                         "{s} has which city as its twin?"], _CITIES),
    "town_language": ("town", "What language is spoken in {s}?", ["Which language do people in {s} speak?",
                                                                   "In {s}, which language is spoken?"], _LANGS),
}
_UNRELATED = ["How many legs does a spider have?", "What is the boiling point of water in Celsius?",
              "Who wrote Romeo and Juliet?", "What is the largest ocean on Earth?", "How many continents are there?",
              "What gas do plants absorb from the air?", "What is the square root of 81?",
              "Which planet is closest to the Sun?", "What is the chemical symbol for gold?",
              "How many minutes are there in an hour?", "What is the tallest animal in the world?",
              "Who painted the Mona Lisa?", "What is the freezing point of water in Fahrenheit?",
              "How many sides does a triangle have?", "What is the capital of Japan?",
              "Which organ pumps blood through the body?"]


def _subjects(kind: str, rng: random.Random) -> list[str]:
    if kind == "person":
        names = [f"{f} {last}" for f in _FIRST for last in _LAST]
    elif kind == "company":
        names = [f"{a} {b} {suffix}" for a in _LAST[:40] for b in _PLACE for suffix in ("Holdings", "Works")]
    else:
        names = [f"{p}-on-{q}" if i % 2 else f"Port {p}{q.lower()}" for i, (p, q) in
                 enumerate((p, q) for p in _PLACE for q in _LAST[:60])]
    rng.shuffle(names)
    return names


def synthetic(n: int, seed: int = 0, n_neighbours: int = 2) -> list[Fact]:
    """n seeded counterfactual facts; every (subject, relation) pair at most once, neighbours never edited."""
    rng = random.Random(seed)
    pools = {kind: _subjects(kind, rng) for kind in ("person", "company", "town")}
    relations = list(_RELATIONS)
    by_kind = {kind: [r for r in relations if _RELATIONS[r][0] == kind] for kind in pools}
    # how many facts each subject kind can hold, keeping a reserve of never-edited subjects for neighbours
    reserve = {kind: max(64, len(pools[kind]) // 20) for kind in pools}
    capacity = sum((len(pools[k]) - reserve[k]) * len(by_kind[k]) for k in pools)
    if n > capacity:
        raise ValueError(f"at most {capacity} synthetic facts with these pools, asked for {n}")
    used_pairs: dict[str, int] = {}
    facts = []
    while len(facts) < n:
        rel = relations[len(facts) % len(relations)]
        kind, template, paras, answers = _RELATIONS[rel]
        editable = pools[kind][reserve[kind]:]
        # each subject takes every relation of its kind before the next subject is used
        slot = used_pairs.get(rel, 0)
        if slot >= len(editable):
            relations.remove(rel)
            continue
        subject = editable[slot]
        used_pairs[rel] = slot + 1
        nbrs = [template.format(s=pools[kind][rng.randrange(reserve[kind])]) for _ in range(n_neighbours)]
        facts.append(Fact(template.format(s=subject), rng.choice(answers), [p.format(s=subject) for p in paras],
                          subject, rng.choice(_UNRELATED), nbrs, len(facts)))
    return facts
