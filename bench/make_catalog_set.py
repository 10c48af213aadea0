"""Make the ``catalog`` labelled retrieval set (``tests/data/retrieval/catalog/``): an ERP item master,
error codes, a ticket archive, supplier invoices, release notes, settings and written procedures of
one made-up manufacturer, with the near-identical siblings real item masters have (``HX-4473-B`` and
``HX-4473-C`` differ by a length; ``ERP-2212`` and ``ERP-2213`` by a word).

    .venv/bin/python bench/make_catalog_set.py          # writes docs.jsonl and the two query files
    .venv/bin/python bench/make_catalog_set.py --check  # fails if the files differ from what it makes

Seeded: the same files every run. The facts (families, attributes, error texts, procedures, the
plain-language queries) are written by hand below; the generator fills the item master's variants
(stock, bins, prices, suppliers, which machine uses which part), the tickets and the invoices from
them, and the identifier and attribute queries from templates, with each label computed from the
documents themselves (a query names one variant's attributes only where no other variant has them).
``queries_holdout.jsonl`` was written after the first results of ``queries.jsonl`` had been seen (its
own templates, items and hand-written queries; the first set's draws do not change with it).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "retrieval" / "catalog"
SEED = 20261201
KINDS = ("keyword", "paraphrase", "natural")


@dataclass
class Doc:
    id: str
    topic: str
    title: str
    text: str


@dataclass
class Part:
    """One item-master record, with what the query templates need to know about it."""

    doc: Doc
    pn: str
    family: str
    noun: str  # what a user calls it: "hydraulic hose"
    attrs: str  # a user's description of this variant: "1/2 inch hydraulic hose 1.5 m"
    used_on: list[str] = field(default_factory=list)
    supplier: str = ""
    legacy: str = ""  # the number before the 2024 renumbering, where the record gives one


@dataclass
class Query:
    kind: str
    query: str
    relevant: list[str]


WAREHOUSES = ["Lyon", "Porto", "Gdansk", "Brno"]
MACHINES = {
    "press": ["press brake PB-2", "press brake PB-3", "hydraulic press HP-5", "hydraulic press HP-6"],
    "cnc": ["CNC lathe CL-07", "CNC lathe CL-08", "CNC mill CM-04", "CNC mill CM-05"],
    "moulding": ["injection moulding machine IM-11", "injection moulding machine IM-12"],
    "conveyor": ["conveyor line 1", "conveyor line 2", "conveyor line 3", "palletiser PZ-1"],
    "packing": ["packing line PK-1", "packing line PK-2", "shrink wrapper SW-1"],
    "air": ["compressor C-1", "compressor C-2", "dryer AD-1"],
    "misc": ["paint booth PT-1", "mixer MX-2", "mixer MX-3", "extraction fan EF-4"],
}


def money(x: float) -> str:
    return f"{x:,.2f}"


# -- the item master --------------------------------------------------------------------------------


# (pn, title, body, user's description); the common tail (price, stock, supplier, usage) is added after.
def bolts() -> list[tuple[str, str, str, str]]:
    finishes = {
        "Z": ("zinc-plated", "zinc-plated steel, grade 8.8"),
        "S": ("stainless", "stainless steel A2-70"),
        "G": ("galvanised", "hot-dip galvanised steel, grade 8.8"),
    }
    boxes = {6: 200, 8: 100, 10: 50, 12: 25}
    rows = [
        (6, 20, "Z"),
        (6, 30, "Z"),
        (6, 30, "S"),
        (8, 30, "Z"),
        (8, 40, "Z"),
        (8, 40, "S"),
        (8, 60, "Z"),
        (10, 40, "Z"),
        (10, 50, "Z"),
        (10, 50, "S"),
        (10, 50, "G"),
        (12, 60, "Z"),
        (12, 60, "G"),
        (12, 80, "Z"),
    ]
    out = []
    for d, length, f in rows:
        word, material = finishes[f]
        pn = f"BLT-{d:02d}{length:02d}-{f}"
        body = (
            f"Part {pn}: hex head bolt M{d} x {length} mm, {material}, DIN 933 fully threaded, "
            f"box of {boxes[d]}."
        )
        out.append((pn, f"Hex bolt M{d}x{length} {word}", body, f"M{d} x {length} {word} hex bolts"))
    return out


def hoses() -> list[tuple[str, str, str, str]]:
    bores = {
        1: ("1/4 inch", "DN6", 400),
        2: ("3/8 inch", "DN10", 330),
        3: ("1/2 inch", "DN12", 275),
        4: ("3/4 inch", "DN19", 215),
    }
    lengths = {"A": "0.5", "B": "1.0", "C": "1.5", "D": "2.0", "E": "3.0"}
    rows = ["1A", "1B", "1C", "2B", "2C", "2D", "3A", "3B", "3C", "3D", "3E", "4C", "4D", "4E"]
    out = []
    for r in rows:
        b, letter = int(r[0]), r[1]
        inch, dn, bar = bores[b]
        pn = f"HX-447{b}-{letter}"
        m = lengths[letter]
        body = (
            f"Part {pn}: hydraulic hose assembly, {inch} ({dn}) two-wire steel braid, {m} m long, "
            f"JIC 37 degree female swivel fitting at both ends, working pressure {bar} bar."
        )
        out.append((pn, f"Hydraulic hose {inch} {m} m", body, f"{inch} hydraulic hose {m} m"))
    return out


def bearings() -> list[tuple[str, str, str, str]]:
    dims = {
        "6203": "17 x 40 x 12",
        "6204": "20 x 47 x 14",
        "6205": "25 x 52 x 15",
        "6206": "30 x 62 x 16",
        "6207": "35 x 72 x 17",
        "6304": "20 x 52 x 15",
        "6305": "25 x 62 x 17",
    }
    seals = {"2RS": ("two rubber seals", "sealed"), "ZZ": ("two metal shields", "shielded")}
    out = []
    for n, dim in dims.items():
        for s, (what, word) in seals.items():
            pn = f"BRG-{n}-{s}"
            body = f"Part {pn}: deep groove ball bearing {n}, {dim} mm, {what}, pre-greased for life."
            out.append((pn, f"Ball bearing {n} {s}", body, f"{n} bearing {word}"))
    return out


def filters() -> list[tuple[str, str, str, str]]:
    rows = [
        (
            "FLT-3310-10",
            "Return filter element 10 micron",
            "return-line filter element for the hydraulic "
            "power unit, glass fibre, 10 micron, bypass valve 3.5 bar",
            "10 micron return filter element",
        ),
        (
            "FLT-3310-25",
            "Return filter element 25 micron",
            "return-line filter element for the hydraulic "
            "power unit, glass fibre, 25 micron, bypass valve 3.5 bar",
            "25 micron return filter element",
        ),
        (
            "FLT-3320-03",
            "Pressure filter element 3 micron",
            "pressure-line filter element, glass fibre, "
            "3 micron, for servo valves, collapse pressure 210 bar",
            "3 micron pressure filter element",
        ),
        (
            "FLT-3320-10",
            "Pressure filter element 10 micron",
            "pressure-line filter element, glass fibre, 10 micron, collapse pressure 210 bar",
            "10 micron pressure filter element",
        ),
        (
            "FLT-3330-125",
            "Suction strainer 125 micron",
            "suction strainer for the hydraulic tank, stainless mesh, 125 micron, 1 1/4 inch thread",
            "125 micron suction strainer",
        ),
        (
            "FLT-3340-05",
            "Compressor air intake filter",
            "air intake filter cartridge for the screw compressors, paper, 5 micron",
            "compressor air intake filter",
        ),
        (
            "FLT-3341-01",
            "Compressed air line filter 1 micron",
            "compressed air line filter element, coalescing, 1 micron, removes oil mist",
            "1 micron coalescing air line filter",
        ),
        (
            "FLT-3350-10",
            "Spin-on oil filter 10 micron",
            "spin-on oil filter cartridge, 10 micron, for the lathes' spindle lubrication",
            "spin-on oil filter",
        ),
    ]
    return [(pn, title, f"Part {pn}: {body}.", desc) for pn, title, body, desc in rows]


def belts() -> list[tuple[str, str, str, str]]:
    rows = [
        ("SPZ", 1000, "wrapped"),
        ("SPZ", 1120, "wrapped"),
        ("XPZ", 1000, "cogged"),
        ("SPA", 1250, "wrapped"),
        ("SPA", 1400, "wrapped"),
        ("SPA", 1600, "wrapped"),
        ("SPB", 1800, "wrapped"),
        ("SPB", 2000, "wrapped"),
    ]
    widths = {"SPZ": 10, "XPZ": 10, "SPA": 13, "SPB": 16}
    out = []
    for prof, length, kind in rows:
        pn = f"VB-{prof}-{length}"
        body = (
            f"Part {pn}: {kind} narrow V-belt, profile {prof} ({widths[prof]} mm top width), datum "
            f"length {length} mm. Replace belts on a multi-groove drive as a matched set."
        )
        out.append((pn, f"V-belt {prof} {length}", body, f"{prof} V-belt {length} mm"))
    return out


def sensors() -> list[tuple[str, str, str, str]]:
    rows = [
        ("M8", 2, "PNP", "flush", "cable 2 m"),
        ("M12", 4, "PNP", "flush", "M12 connector"),
        ("M12", 4, "NPN", "flush", "M12 connector"),
        ("M12", 8, "PNP", "non-flush", "M12 connector"),
        ("M18", 8, "PNP", "flush", "M12 connector"),
        ("M18", 8, "NPN", "flush", "M12 connector"),
        ("M18", 12, "PNP", "non-flush", "cable 2 m"),
        ("M30", 15, "PNP", "flush", "M12 connector"),
    ]
    out = []
    for size, rng_mm, out_type, mount, conn in rows:
        pn = f"PXS-{size}-{rng_mm:02d}-{out_type}"
        body = (
            f"Part {pn}: inductive proximity sensor {size}, sensing range {rng_mm} mm, {mount} mounting, "
            f"{out_type} normally open output, 10-30 V DC, {conn}."
        )
        desc = f"{size} inductive sensor {out_type} {rng_mm} mm"
        out.append((pn, f"Inductive sensor {size} {rng_mm} mm {out_type}", body, desc))
    return out


def valves() -> list[tuple[str, str, str, str]]:
    rows = [
        ("5/2", "G1/8", "24 V DC", "SVL-5218-24D"),
        ("5/2", "G1/4", "24 V DC", "SVL-5214-24D"),
        ("5/2", "G1/4", "230 V AC", "SVL-5214-230A"),
        ("3/2", "G1/8", "24 V DC", "SVL-3218-24D"),
        ("3/2", "G1/4", "24 V DC", "SVL-3214-24D"),
        ("5/3", "G1/4", "24 V DC", "SVL-5314-24D"),
    ]
    out = []
    for ways, port, volt, pn in rows:
        extra = ", closed centre" if ways == "5/3" else ", spring return"
        body = f"Part {pn}: pneumatic solenoid valve {ways}{extra}, ports {port}, coil {volt}, DIN connector."
        out.append((pn, f"Solenoid valve {ways} {port} {volt}", body, f"{ways} solenoid valve {port} {volt}"))
    return out


def motors() -> list[tuple[str, str, str, str]]:
    rows = [
        (0.37, 4, 71),
        (0.55, 4, 80),
        (0.75, 4, 80),
        (0.75, 2, 80),
        (1.1, 4, 90),
        (1.5, 4, 90),
        (2.2, 4, 100),
        (2.2, 2, 90),
    ]
    out = []
    for kw, poles, frame in rows:
        pn = f"MTR-{round(kw * 100):04d}-{poles}P"
        rpm = 1400 if poles == 4 else 2850
        body = (
            f"Part {pn}: three-phase induction motor {kw} kW, {poles}-pole ({rpm} rpm), IEC frame {frame}, "
            f"foot mounted B3, 400 V, efficiency class IE3."
        )
        out.append((pn, f"Motor {kw} kW {poles}-pole", body, f"{kw} kW {poles} pole motor"))
    return out


def cables() -> list[tuple[str, str, str, str]]:
    rows = [
        ("3G0.75", "PVC", "3G075"),
        ("3G1.5", "PVC", "3G15"),
        ("4G1.5", "PVC", "4G15"),
        ("4G1.5", "PUR", "4G15"),
        ("4G2.5", "PVC", "4G25"),
        ("5G1.5", "PVC", "5G15"),
        ("7G1.5", "PUR", "7G15"),
    ]
    out = []
    for cores, jacket, code in rows:
        pn = f"CBL-{code}-{jacket}"
        use = "drag chain rated, oil resistant" if jacket == "PUR" else "for fixed installation"
        body = (
            f"Part {pn}: control cable {cores} mm2, {jacket} jacket, {use}, sold by the metre from "
            "100 m drums."
        )
        out.append((pn, f"Control cable {cores} {jacket}", body, f"{cores} {jacket} control cable"))
    return out


def seal_kits() -> list[tuple[str, str, str, str]]:
    rows = [(40, "F"), (50, "R"), (50, "F"), (63, "F"), (80, "R"), (80, "F")]
    out = []
    for bore, k in rows:
        pn = f"SK-CY{bore}-{k}"
        what = "rod seal and wiper only" if k == "R" else "full kit: piston, rod, wiper seals and O-rings"
        body = f"Part {pn}: seal kit for hydraulic cylinders with {bore} mm bore, {what}."
        word = "rod seal kit" if k == "R" else "full seal kit"
        out.append(
            (
                pn,
                f"Cylinder seal kit {bore} mm {'rod' if k == 'R' else 'full'}",
                body,
                f"{word} for {bore} mm cylinder",
            )
        )
    return out


def consumables() -> list[tuple[str, str, str, str]]:
    rows = [
        (
            "LBL-100150-TT",
            "Labels 100x150 thermal transfer",
            "labels 100 x 150 mm, thermal transfer paper, 1,000 per roll, 76 mm core; the pallet label",
            "100 x 150 thermal transfer labels",
        ),
        (
            "LBL-100150-DT",
            "Labels 100x150 direct thermal",
            "labels 100 x 150 mm, direct thermal paper (no ribbon), 1,000 per roll, 76 mm core",
            "100 x 150 direct thermal labels",
        ),
        (
            "LBL-10050-TT",
            "Labels 100x50 thermal transfer",
            "labels 100 x 50 mm, thermal transfer paper, 2,500 per roll; the carton label",
            "100 x 50 thermal transfer labels",
        ),
        (
            "LBL-5732-DT",
            "Labels 57x32 direct thermal",
            "labels 57 x 32 mm, direct thermal, 3,000 per roll; bin and shelf labels",
            "57 x 32 direct thermal labels",
        ),
        (
            "LBL-148210-TT",
            "Labels A5 thermal transfer",
            "labels 148 x 210 mm (A5), thermal transfer paper, 500 per roll; dangerous goods documents",
            "A5 thermal transfer labels",
        ),
        (
            "RBN-110-WAX",
            "Ribbon 110 mm wax",
            "thermal transfer ribbon 110 mm x 450 m, wax, ink side out; for paper labels",
            "110 mm wax ribbon",
        ),
        (
            "RBN-110-RES",
            "Ribbon 110 mm resin",
            "thermal transfer ribbon 110 mm x 450 m, resin, ink side out; "
            "for synthetic labels that must resist oil",
            "110 mm resin ribbon",
        ),
        (
            "RBN-060-WAX",
            "Ribbon 60 mm wax",
            "thermal transfer ribbon 60 mm x 450 m, wax, ink side out; for the small bin label printers",
            "60 mm wax ribbon",
        ),
    ]
    return [(pn, title, f"Part {pn}: {body}.", desc) for pn, title, body, desc in rows]


def io_modules() -> list[tuple[str, str, str, str]]:
    rows = [
        (
            "IO-DI16-24",
            "PLC input module 16 DI",
            "PLC digital input module, 16 inputs 24 V DC, sinking",
            "16 channel digital input card",
        ),
        (
            "IO-DO16-24",
            "PLC output module 16 DO",
            "PLC digital output module, 16 transistor outputs 24 V DC 0.5 A",
            "16 channel digital output card",
        ),
        (
            "IO-DO08-RL",
            "PLC relay output module 8",
            "PLC relay output module, 8 relays 230 V AC 2 A",
            "8 channel relay output card",
        ),
        (
            "IO-AI08-V",
            "PLC analog input module 0-10 V",
            "PLC analog input module, 8 inputs 0-10 V, 16 bit",
            "0-10 V analog input card",
        ),
        (
            "IO-AI08-C",
            "PLC analog input module 4-20 mA",
            "PLC analog input module, 8 inputs 4-20 mA, 16 bit",
            "4-20 mA analog input card",
        ),
        (
            "IO-AO04-V",
            "PLC analog output module 0-10 V",
            "PLC analog output module, 4 outputs 0-10 V",
            "0-10 V analog output card",
        ),
    ]
    return [(pn, title, f"Part {pn}: {body}.", desc) for pn, title, body, desc in rows]


def rollers() -> list[tuple[str, str, str, str]]:
    rows = [(50, 400), (50, 600), (50, 800), (60, 600), (60, 800), (60, 1000)]
    out = []
    for d, length in rows:
        pn = f"ROL-{d}-{length}"
        body = (
            f"Part {pn}: gravity conveyor roller, steel tube {d} mm diameter, {length} mm between frames, "
            f"spring-loaded hex shaft, sealed bearings."
        )
        out.append((pn, f"Conveyor roller {d} x {length}", body, f"{d} mm conveyor roller {length} mm"))
    return out


def gloves() -> list[tuple[str, str, str, str]]:
    out = []
    for size in (7, 8, 9, 10, 11):
        pn = f"PPE-GLV-C5-{size:02d}"
        body = (
            f"Part {pn}: cut-resistant work gloves, cut level C (EN 388), nitrile palm, size {size}, "
            "pack of 12 pairs."
        )
        out.append((pn, f"Cut-resistant gloves size {size}", body, f"cut resistant gloves size {size}"))
    return out


def fuses() -> list[tuple[str, str, str, str]]:
    out = []
    for amps in (2, 4, 6, 10, 16, 25):
        pn = f"FUS-1038-{amps:02d}"
        body = f"Part {pn}: cylindrical fuse 10 x 38 mm, {amps} A, gG, 500 V AC, box of 10."
        out.append((pn, f"Fuse 10x38 {amps} A", body, f"10x38 fuse {amps} A"))
    return out


# family, noun, maker, suppliers, machine groups, unit, price range
FAMILIES = [
    ("bolts", "hex bolt", bolts, ["Boltex", "Fixmaster"], ["press", "conveyor", "misc"], "box", (6, 60)),
    ("hoses", "hydraulic hose", hoses, ["Hydralink"], ["press", "moulding"], "piece", (28, 140)),
    (
        "bearings",
        "ball bearing",
        bearings,
        ["Kugelwerk Nord", "Rotec Bearings"],
        ["conveyor", "misc", "air"],
        "piece",
        (4, 38),
    ),
    (
        "filters",
        "filter element",
        filters,
        ["FiltraPro"],
        ["press", "moulding", "air", "cnc"],
        "piece",
        (12, 95),
    ),
    ("belts", "V-belt", belts, ["Beltmax"], ["air", "misc", "conveyor"], "piece", (9, 45)),
    (
        "sensors",
        "proximity sensor",
        sensors,
        ["SensoTek"],
        ["cnc", "conveyor", "packing", "press"],
        "piece",
        (24, 80),
    ),
    (
        "valves",
        "solenoid valve",
        valves,
        ["Fluidal"],
        ["packing", "moulding", "conveyor"],
        "piece",
        (45, 160),
    ),
    ("motors", "electric motor", motors, ["Motorwerk"], ["conveyor", "misc", "packing"], "piece", (180, 620)),
    ("cables", "control cable", cables, ["Kabelhaus"], [], "metre", (0.8, 6)),
    ("seals", "seal kit", seal_kits, ["Sealtech"], ["press", "moulding"], "kit", (35, 190)),
    ("labels", "label roll", consumables, ["Labelcraft"], [], "roll", (9, 48)),
    (
        "io",
        "PLC module",
        io_modules,
        ["Ioline Automation"],
        ["cnc", "packing", "moulding"],
        "piece",
        (140, 420),
    ),
    ("rollers", "conveyor roller", rollers, ["Rollco"], ["conveyor"], "piece", (14, 36)),
    ("gloves", "work gloves", gloves, ["SafeHands"], [], "pack", (38, 52)),
    ("fuses", "fuse", fuses, ["Elektra Supply"], [], "box", (6, 14)),
]

NOTES = [
    "Critical spare: keep at least the reorder point on hand at all times.",
    "Counted in the last cycle count without difference.",
    "Minimum order quantity 10 from the supplier.",
    "Price fixed in the framework agreement until the end of the year.",
    "Consignment stock: the supplier owns it until it is issued.",
    "Check the batch on receipt; the supplier changed its factory this year.",
]


def item_master(rng: random.Random) -> list[Part]:
    parts: list[Part] = []
    for family, noun, make, suppliers, groups, unit, (lo, hi) in FAMILIES:
        rows = make()
        for pn, title, body, desc in rows:
            price = rng.uniform(lo, hi)
            wh = rng.choice(WAREHOUSES)
            bin_ = f"{rng.choice('ABCDEFGH')}-{rng.randint(1, 40):02d}"
            stock = rng.randint(0, 60)
            rop = rng.randint(2, 20)
            supplier = rng.choice(suppliers)
            weeks = rng.choice([1, 2, 2, 3, 4, 6])
            per = f"per {unit}" if unit != "metre" else "per metre"
            units = unit if stock == 1 else ("boxes" if unit == "box" else f"{unit}s")
            if unit == "metre":
                stock_txt = f"Stock: {stock * 10} m in the {wh} warehouse, bin {bin_}."
            else:
                stock_txt = f"Stock: {stock} {units} in the {wh} warehouse, bin {bin_}."
            used_on: list[str] = []
            if groups:
                pool = [m for g in groups for m in MACHINES[g]]
                used_on = sorted(rng.sample(pool, rng.choice([0, 1, 1, 2])))
            text = [
                body,
                f"Unit price {money(price)} EUR {per}.",
                stock_txt,
                f"Reorder point {rop}; supplier {supplier}, lead time {weeks} week{'s' * (weeks > 1)}.",
            ]
            if used_on:
                text.append("Used on " + " and ".join(used_on) + ".")
            if rng.random() < 0.3:
                text.append(rng.choice(NOTES))
            legacy = ""
            if rng.random() < 0.2:
                legacy = f"{rng.randint(10, 99)}-{rng.randint(10000, 99999)}"
                text.append(f"Old item number {legacy} (before the 2024 renumbering).")
            doc = Doc(f"part-{pn.lower()}", "parts", title, " ".join(text))
            parts.append(Part(doc, pn, family, noun, desc, used_on, supplier, legacy))
    return parts


# -- error codes ------------------------------------------------------------------------------------

# (code, title, text): what the message means and what to do.
ERRORS = [
    (
        "ERP-1040",
        "posting date too far ahead",
        "The posting date is more than erp.posting_window_days days "
        "in the future. Post with today's date, or ask finance if a later date is really needed.",
    ),
    (
        "ERP-1041",
        "posting date missing",
        "The document has no posting date. Enter the date on which the "
        "goods moved or the service was delivered, then save again.",
    ),
    (
        "ERP-1042",
        "posting period closed",
        "The posting date falls in a fiscal period that finance has "
        "already closed. Change the posting date to the open period or ask finance to reopen it.",
    ),
    (
        "ERP-1043",
        "cost center blocked",
        "The cost center is blocked for postings; it was closed or "
        "merged in a reorganisation. Use the successor cost center shown in the message details.",
    ),
    (
        "ERP-1044",
        "cost center missing",
        "The expense account needs a cost center and none was entered. "
        "Add the cost center of the department that consumes the goods.",
    ),
    (
        "ERP-1045",
        "profit center mismatch",
        "The cost center and the profit center on the line belong to "
        "different plants. Pick the cost center of the plant that receives the goods.",
    ),
    (
        "ERP-1046",
        "tax code not valid for country",
        "The tax code cannot be used for the supplier's "
        "country. Intra-EU purchases need a reverse-charge tax code; ask accounts payable which one.",
    ),
    (
        "ERP-1047",
        "exchange rate missing",
        "No exchange rate is stored for the document currency on the "
        "posting date. Rates are loaded each morning; wait for the load or ask treasury to enter the rate.",
    ),
    (
        "ERP-2210",
        "duplicate invoice",
        "An invoice with the same number, supplier and amount is already "
        "registered. Check whether the supplier sent it twice (often once by mail and once by post).",
    ),
    (
        "ERP-2211",
        "duplicate credit note",
        "A credit note with the same number and supplier is already "
        "registered. Do not post it again; match it to the open invoice instead.",
    ),
    (
        "ERP-2212",
        "quantity invoiced exceeds quantity received",
        "The invoice bills more units than the "
        "goods receipts of the purchase order. It is released by itself when the rest is received.",
    ),
    (
        "ERP-2213",
        "goods receipt missing",
        "The purchase order has no goods receipt, so the invoice "
        "cannot be matched. The warehouse must post the receipt from the delivery note first.",
    ),
    (
        "ERP-2214",
        "price variance above tolerance",
        "The invoiced unit price is higher than the purchase "
        "order's by more than the tolerance (erp.price_tolerance_pct, 5% by default). The buyer must "
        "confirm the new price or ask the supplier for a credit note.",
    ),
    (
        "ERP-2215",
        "supplier blocked for payment",
        "The supplier is blocked for payment, usually because of "
        "an open dispute or missing tax documents. Accounts payable lifts the block.",
    ),
    (
        "ERP-2216",
        "bank details awaiting verification",
        "The supplier's bank account was changed and "
        "payments wait until someone calls the supplier back on a known number to confirm it.",
    ),
    (
        "ERP-2217",
        "payment terms differ from the order",
        "The payment terms on the invoice differ from "
        "the purchase order's. The order's terms apply unless purchasing agreed other terms in writing.",
    ),
    (
        "ERP-3301",
        "customer over credit limit",
        "The order would take the customer over its credit "
        "limit. The order is held until the credit team releases it or the customer pays open invoices.",
    ),
    (
        "ERP-3302",
        "customer blocked for delivery",
        "The customer is blocked for deliveries, for example "
        "after unpaid reminders. Sales cannot ship until credit management lifts the block.",
    ),
    (
        "ERP-3303",
        "price missing in price list",
        "The item has no price in the customer's price list. "
        "Sales administration must add the price before the order line can be saved.",
    ),
    (
        "ERP-3304",
        "discount above the allowed maximum",
        "The line discount is higher than the sales "
        "rep may grant. Ask the sales manager to approve it in the order.",
    ),
    (
        "ERP-3305",
        "ship-to address incomplete",
        "The delivery address lacks a postcode or country. "
        "Complete the customer's ship-to address before releasing the delivery.",
    ),
    (
        "ERP-4401",
        "negative stock not allowed",
        "The goods issue would make the bin's stock negative. "
        "Usually a goods receipt was not posted yet; post it, or count the bin.",
    ),
    (
        "ERP-4402",
        "bin blocked for stock count",
        "The bin is blocked while a cycle count is open. "
        "Pick from another bin or wait until the count is posted.",
    ),
    (
        "ERP-4403",
        "batch expired",
        "The batch's shelf-life expiry date has passed and it cannot be "
        "issued. Move it to quality for a decision: extend, rework or scrap.",
    ),
    (
        "ERP-4404",
        "serial number already in stock",
        "The serial number being received is already in "
        "stock. Check for a double receipt or a mistyped serial number.",
    ),
    (
        "ERP-4405",
        "bin capacity exceeded",
        "The putaway would exceed the bin's maximum weight or volume. "
        "Choose another bin; the suggestion list shows free ones.",
    ),
    (
        "ERP-4406",
        "item blocked by quality hold",
        "The item or batch is on quality hold and cannot be issued or shipped until quality releases it.",
    ),
    (
        "E7001",
        "media out",
        "The label printer ran out of labels or the label sensor sees no paper. Load "
        "a new roll and press feed once.",
    ),
    (
        "E7002",
        "ribbon out",
        "The printer detects no ribbon movement. Fit a new ribbon, ink side out; a "
        "ribbon wound the wrong way round also gives this error.",
    ),
    (
        "E7003",
        "print head open",
        "The print head is not latched. Close it until both sides click; if "
        "the error stays, clean the head-open sensor.",
    ),
    (
        "E7004",
        "ribbon fitted in direct thermal mode",
        "A ribbon was found while the printer is set to "
        "direct thermal (printer.mode). Remove the ribbon for direct thermal labels, or switch the mode.",
    ),
    (
        "E7005",
        "print head too hot",
        "The print head is over temperature after long print runs. The "
        "printer pauses until it cools; lower printer.darkness or printer.speed_ips for big batches.",
    ),
    (
        "E7006",
        "media calibration failed",
        "The printer could not find the gap or black mark between "
        "labels. Check printer.media_type matches the labels and run a calibration.",
    ),
    (
        "E7007",
        "cutter jam",
        "A label is stuck in the cutter. Switch off, open the cutter cover and remove "
        "the label; never cut adhesive labels across the glue line.",
    ),
    (
        "E7008",
        "print head element failure",
        "Dots of the print head have failed, which shows as white "
        "lines through barcodes. Clean the head; if the lines stay, the head must be replaced.",
    ),
    (
        "E7009",
        "label template not found",
        "The print job names a template the printer does not have. "
        "Re-send the templates from Labelhub or fix label.template_default.",
    ),
    (
        "E7010",
        "print queue full",
        "The print queue holds queue.max_jobs jobs. Remove stuck jobs in "
        "Labelhub; the queue drains on its own once the printer is back.",
    ),
    (
        "ALM-101",
        "emergency stop pressed",
        "An emergency stop is pressed. Find and release it, then "
        "reset the safety relay with the blue button before restarting the machine.",
    ),
    (
        "ALM-102",
        "guard door open",
        "A guard door switch is open. Close the door; if it is closed, the "
        "switch's actuator is probably misaligned.",
    ),
    (
        "ALM-103",
        "light curtain interrupted",
        "Something breaks the light curtain's beams. Remove it and "
        "clean the lenses; dust and reflections can interrupt it too.",
    ),
    (
        "ALM-110",
        "hydraulic pressure low",
        "System pressure fell below the minimum. Check the oil level, "
        "the pump coupling and leaks; do not restart repeatedly with low pressure.",
    ),
    (
        "ALM-111",
        "hydraulic oil temperature high",
        "The oil is above 60 degrees C. Check the oil cooler and its fan; clean clogged cooler fins.",
    ),
    (
        "ALM-112",
        "hydraulic oil level low",
        "The tank level switch reports low oil. Top up with HLP 46 "
        "and look for the leak before running again.",
    ),
    (
        "ALM-113",
        "return filter clogged",
        "The return filter's differential pressure switch has tripped. "
        "Change the filter element (FLT-3310-10 on the presses) at the next stop.",
    ),
    (
        "ALM-120",
        "spindle overload",
        "The spindle drive is overloaded. Check the tool for wear and reduce feed or depth of cut.",
    ),
    (
        "ALM-121",
        "spindle temperature high",
        "The spindle bearings are too warm. Let it cool and check "
        "the spindle lubrication; repeated alarms mean the bearings need inspection.",
    ),
    (
        "ALM-122",
        "axis following error",
        "An axis lags too far behind its command. Check the way "
        "lubrication, the axis for collisions and the drive's belt or coupling.",
    ),
    (
        "ALM-130",
        "lubrication pressure low",
        "The central lubrication pump builds no pressure. Refill the way oil reservoir and bleed the pump.",
    ),
    (
        "ALM-131",
        "coolant level low",
        "The coolant tank is low. Top up with premixed coolant, not water: "
        "the concentration must stay at 6 to 8 percent.",
    ),
    (
        "ALM-140",
        "compressed air pressure low",
        "Air pressure at the machine is below 5 bar. Check the "
        "compressor and listen for leaks at couplings and hoses.",
    ),
    (
        "SCN-401",
        "session expired",
        "The scanner's login session ended after session.timeout_min minutes "
        "without use. Log in again; unsent scans are kept.",
    ),
    (
        "SCN-402",
        "device not registered",
        "The handheld is not registered for this site. IT registers "
        "devices; send them the serial number from the battery compartment.",
    ),
    (
        "SCN-403",
        "sync conflict",
        "The record was changed on the server since the device loaded it, for "
        "example a count entered on two devices. The server's version wins (sync.conflict_policy).",
    ),
    (
        "SCN-404",
        "item unknown",
        "The scanned barcode is not in the item master. Check the label; a new "
        "supplier barcode must be added to the item by the master data team.",
    ),
    (
        "SCN-405",
        "battery critical, uploads paused",
        "The battery is below battery.pause_upload_pct "
        "percent, so uploads are paused. Put the device in its cradle or swap the battery.",
    ),
    (
        "SCN-406",
        "offline queue full",
        "The device holds sync.offline_queue_max records that could not be "
        "sent. Go back into wireless coverage or dock the device so the queue can drain.",
    ),
    (
        "SCN-407",
        "clock out of sync",
        "The device clock differs from the server by more than "
        "device.clock_tolerance_s seconds, often after a battery swap. Dock it to set the time.",
    ),
    (
        "EDI-501",
        "unknown trading partner",
        "The EDI message comes from a sender that is not set up as a "
        "trading partner. Purchasing must create the partner before messages are accepted.",
    ),
    (
        "EDI-502",
        "message does not match the schema",
        "The EDI message is malformed or misses mandatory segments. The sender must correct and resend it.",
    ),
    (
        "EDI-503",
        "duplicate interchange number",
        "An interchange with this control number was already "
        "received from the partner. Usually the partner resent a file; nothing is posted twice.",
    ),
    (
        "EDI-504",
        "delivery location GLN not found",
        "The GLN of the delivery location is not known. The "
        "master data team adds the GLN to the site's address.",
    ),
]


def error_docs() -> list[Doc]:
    prefix = {
        "ERP": "ERP error",
        "E70": "Label printer error",
        "ALM": "Machine alarm",
        "SCN": "Stockpilot scanner error",
        "EDI": "EDI gateway error",
    }
    return [
        Doc(f"err-{code.lower()}", "errors", f"{code} {title}", f"{prefix[code[:3]]} {code}: {title}. {text}")
        for code, title, text in ERRORS
    ]


# -- the ticket archive -----------------------------------------------------------------------------

# (title, what happened and what fixed it, a user's short description, the part it is about or "").
# "{m}" is a machine that uses the part (from the item master) or the scenario's own place.
SCENARIOS = [
    (
        "E7002 after fitting a new ribbon",
        "The shipping desk printer showed E7002 ribbon out right after a "
        "new ribbon was fitted. The ribbon had been wound ink side in. Rewound it ink side out; printing "
        "fine.",
        "ribbon out right after putting in a new ribbon",
        "",
    ),
    (
        "E7003 head open after cleaning",
        "After cleaning the print head the printer kept showing E7003 "
        "although the head was closed. The latch was only closed on one side; closed both sides and the "
        "alarm cleared.",
        "printer says head open after cleaning",
        "",
    ),
    (
        "E7006 with black-mark labels",
        "Calibration failed (E7006) after the switch to the new labels "
        "with a black mark on the back. printer.media_type was still gap; set it to mark and recalibrated.",
        "calibration fails with the new black mark labels",
        "",
    ),
    (
        "E7004 on direct thermal labels",
        "The printer refused direct thermal labels with E7004. It was set "
        "to thermal transfer mode and a ribbon was still fitted. Ribbon removed, printer.mode set to "
        "direct_thermal.",
        "printer complains about ribbon on direct thermal labels",
        "",
    ),
    (
        "White lines through barcodes",
        "Barcodes printed with white vertical lines and scanners could not "
        "read them; the printer logged E7008. Cleaning did not help, print head replaced.",
        "white stripes through the barcodes",
        "",
    ),
    (
        "E7010 during peak shipping",
        "Labels stopped printing in the afternoon peak: E7010 print queue "
        "full. One job for a deleted printer blocked the queue; deleted it in Labelhub and raised "
        "queue.max_jobs to 1000.",
        "labels stopped printing, queue full",
        "",
    ),
    (
        "Invoice held for price variance",
        "Accounts payable asked why a supplier invoice was held with "
        "ERP-2214. The supplier had raised its prices by 8% without telling purchasing. The buyer "
        "updated the purchase order price and the invoice was released.",
        "invoice held because the supplier raised prices",
        "",
    ),
    (
        "Invoice held, no goods receipt",
        "An invoice stayed blocked with ERP-2213. The goods had arrived "
        "but the receipt was never posted. The warehouse posted it from the delivery note; invoice "
        "matched the same day.",
        "invoice stuck because the receipt was not booked",
        "",
    ),
    (
        "ERP-1042 at month end",
        "Goods receipts from the last evening of the month failed with ERP-1042 "
        "because finance had closed the period early. Posted them in the new period after checking "
        "with finance.",
        "receipts rejected at month end, period closed",
        "",
    ),
    (
        "Negative stock when picking",
        "Pickers got ERP-4401 negative stock for an item that was on the "
        "shelf. The morning's goods receipt had not been posted; posted it and picking continued.",
        "cannot pick, system says stock would go negative",
        "",
    ),
    (
        "Bin blocked during count",
        "Picking from a bin failed with ERP-4402 all morning. A cycle count had "
        "been started and not posted. Count posted, bin unblocked.",
        "bin blocked all morning by a count",
        "",
    ),
    (
        "Order held over credit limit",
        "A large customer order was held with ERP-3301. The credit team "
        "raised the customer's limit after the customer paid two overdue invoices.",
        "customer order held, over the credit limit",
        "",
    ),
    (
        "Supplier payment waiting for bank check",
        "A supplier complained about a late payment. It was held "
        "with ERP-2216 after a bank detail change. Called the supplier back on the number in the "
        "contract, confirmed and released.",
        "supplier not paid after changing bank account",
        "",
    ),
    (
        "ALM-110 on {m}",
        "{m} stopped with ALM-110 hydraulic pressure low. The pump coupling's rubber "
        "insert was worn through. Coupling replaced, pressure back to 180 bar.",
        "hydraulic pressure low, worn pump coupling",
        "",
    ),
    (
        "ALM-113 on {m}",
        "ALM-113 return filter clogged on {m}. Changed the element {pn}; the old one was "
        "dark with particles, oil sample sent to the lab.",
        "return filter clogged alarm",
        "FLT-3310-10",
    ),
    (
        "ALM-111 in hot weather",
        "ALM-111 oil temperature high on a hydraulic press every afternoon "
        "during the heat wave. The cooler fins were full of dust; cleaned them with compressed air.",
        "press overheating every afternoon in summer",
        "",
    ),
    (
        "ALM-102 with the door closed",
        "The machine kept stopping with ALM-102 guard door open while the "
        "door was shut. The actuator of the door switch was bent; realigned it.",
        "machine thinks the guard door is open when it is shut",
        "",
    ),
    (
        "ALM-122 on the CNC mill",
        "ALM-122 axis following error on the Y axis, together with ALM-130 "
        "lubrication pressure low. The way oil reservoir was empty; refilled and bled the pump.",
        "following error on the mill, lubrication empty",
        "",
    ),
    (
        "ALM-140, air leak",
        "Several machines showed ALM-140 air pressure low. A quick coupling on the "
        "main line behind the paint booth was leaking; replaced it.",
        "air pressure low on several machines",
        "",
    ),
    (
        "SCN-403 after stock count",
        "After the stock count many scanners showed SCN-403 sync conflicts. "
        "Two teams had counted the same aisle on different devices. The server values were kept and "
        "the aisle recounted.",
        "sync conflicts after counting",
        "",
    ),
    (
        "SCN-406 in the cold store",
        "Scanners used in the cold store filled their offline queue (SCN-406) "
        "because there is no wireless there. Staff now dock the devices at the door every hour.",
        "scanners full of unsent scans in the cold store",
        "",
    ),
    (
        "SCN-407 after battery swap",
        "A handheld showed SCN-407 clock out of sync after its battery was "
        "swapped. Docking it set the clock and the scans uploaded.",
        "scanner clock wrong after a new battery",
        "",
    ),
    (
        "SCN-404 for a new supplier barcode",
        "Receiving could not scan a new supplier's cartons: SCN-404 "
        "item unknown. The supplier's EAN was missing in the item master; master data added it.",
        "scanner does not know the barcode of a new supplier",
        "",
    ),
    (
        "EDI-503 duplicate file",
        "The EDI gateway reported EDI-503 for a batch of delivery advices. The "
        "supplier's system had resent yesterday's file. No action needed, nothing posted twice.",
        "EDI duplicate file from a supplier",
        "",
    ),
    (
        "EDI-504 for a new delivery address",
        "Orders to the new dock failed with EDI-504. The dock's "
        "GLN was not in the site address; master data added it and the orders were resent.",
        "EDI orders rejected for the new dock",
        "",
    ),
    (
        "Noisy bearing on {m}",
        "A roller bearing on {m} was noisy and hot. Replaced it with {pn}; the old one had lost its grease.",
        "noisy hot bearing replaced",
        "BRG-6205-2RS",
    ),
    (
        "Hose burst on {m}",
        "A hydraulic hose burst on {m} and sprayed oil on the floor. The hose was "
        "seven years old. Replaced with {pn}, floor cleaned, all hoses of the machine inspected.",
        "hydraulic hose burst",
        "HX-4473-C",
    ),
    (
        "Belt squeal on {m}",
        "{m} squealed at start-up. The V-belts were loose and glazed; fitted a new "
        "matched set of {pn} and tensioned them.",
        "belts squealing at start-up",
        "VB-SPA-1250",
    ),
    (
        "New sensor does not switch on {m}",
        "A proximity sensor replaced on {m} never switched. {pn} "
        "had been fitted, an NPN sensor, where the PLC input needs PNP. Swapped for the PNP type.",
        "replacement sensor does not switch",
        "PXS-M18-08-NPN",
    ),
    (
        "Motor trips on {m}",
        "The motor of {m} tripped its overload several times a day. A motor "
        "bearing was failing; motor replaced with {pn} from stock.",
        "motor keeps tripping",
        "MTR-0075-4P",
    ),
    (
        "Wrong bolts delivered",
        "The delivery for {pn} contained zinc-plated bolts instead of stainless "
        "ones. Goods sent back to the supplier with a return authorisation; replacement came in 3 days.",
        "supplier delivered the wrong bolts",
        "BLT-1050-S",
    ),
    (
        "Replaced solenoid valve does not switch on {m}",
        "A solenoid valve replaced on {m} never switched. "
        "{pn}, which has a 230 V AC coil, had been fitted on a 24 V DC circuit. Swapped for SVL-5214-24D.",
        "new solenoid valve does not switch, wrong coil voltage",
        "SVL-5214-230A",
    ),
    (
        "Pallet labels running out",
        "Shipping nearly ran out of pallet labels {pn}: the last two rolls "
        "were in use. Emergency order placed, delivery next morning; reorder point raised.",
        "almost out of pallet labels",
        "LBL-100150-TT",
    ),
    (
        "Gloves size 10 out of stock",
        "No cut-resistant gloves in size 10 ({pn}) for the new press team. "
        "Borrowed from the other plant and ordered two packs.",
        "no gloves in size 10",
        "PPE-GLV-C5-10",
    ),
    (
        "Seal leak on a press cylinder",
        "Oil was weeping from the rod of a cylinder on {m}. Fitted the seal "
        "kit {pn}; the rod had a small scratch that was polished out.",
        "cylinder rod leaking oil",
        "SK-CY63-F",
    ),
]
FALLBACK_PLACE = {
    "BRG-6205-2RS": "conveyor line 2",
    "HX-4473-C": "hydraulic press HP-5",
    "VB-SPA-1250": "compressor C-1",
    "PXS-M18-08-NPN": "packing line PK-1",
    "MTR-0075-4P": "mixer MX-2",
    "SVL-5214-230A": "packing line PK-2",
    "SK-CY63-F": "press brake PB-2",
    "FLT-3310-10": "press brake PB-3",
}
FIRST = [
    "Ana",
    "Marek",
    "Claire",
    "Joao",
    "Petra",
    "Luc",
    "Inês",
    "Tomasz",
    "Hana",
    "Julien",
    "Rita",
    "Pavel",
]
LAST = ["Novak", "Martin", "Silva", "Kowalski", "Dubois", "Svoboda", "Costa", "Wisniewska", "Bernard"]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]


@dataclass
class Ticket:
    doc: Doc
    number: str
    site: str
    scenario: int
    short: str
    pn: str
    machine: str


def tickets(rng: random.Random, parts: dict[str, Part]) -> list[Ticket]:
    numbers = sorted(rng.sample(range(20100, 21999), 2 * len(SCENARIOS)))
    slots = [(i, copy) for i in range(len(SCENARIOS)) for copy in (0, 1)]
    rng.shuffle(slots)
    out = []
    sites: dict[int, str] = {}
    for number, (i, _) in zip(numbers, slots, strict=True):
        title, text, short, pn = SCENARIOS[i]
        site = rng.choice([w for w in WAREHOUSES if w != sites.get(i)])
        sites[i] = site
        machine = ""  # only where the ticket names one
        if "{m}" in text and pn:
            used = parts[pn].used_on
            machine = rng.choice(used) if used else FALLBACK_PLACE[pn]
        elif "{m}" in text:
            machine = rng.choice(MACHINES["press"])
        month = MONTHS[(number * 7) % 12]
        day = 1 + number % 28
        who = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        prio = rng.choice(["P2", "P3", "P3", "P4"])
        inc = f"INC-{number}"
        body = text.replace("{m}", machine).replace("{pn}", pn)
        body = body[0].upper() + body[1:]
        head = f"Ticket {inc}, {day} {month} 2026, {site} plant, priority {prio}, reported by {who}."
        doc = Doc(
            f"ticket-{inc.lower()}",
            "tickets",
            f"{inc} {title.replace('{m}', machine)}",
            f"{head} {body} Status: closed.",
        )
        out.append(Ticket(doc, inc, site, i, short, pn, machine))
    return out


# -- supplier invoices ------------------------------------------------------------------------------

STATUSES = {
    "paid": "Paid on {date} in the regular payment run.",
    "scheduled": "Approved; scheduled for the payment run of {date}.",
    "price": "Blocked with ERP-2214: the unit price is {pct}% above the purchase order's, over the "
    "tolerance. Waiting for the buyer, {buyer}, to confirm the new price or ask for a credit note.",
    "quantity": "Blocked with ERP-2212: {q1} units invoiced, {q2} received so far. It is released when "
    "the rest of the order arrives.",
    "receipt": "Blocked with ERP-2213: no goods receipt posted for the order yet. The warehouse was asked "
    "to check the delivery note.",
    "bank": "Blocked with ERP-2216: the supplier's bank details changed on {date}; payment waits for the "
    "call-back check.",
    "duplicate": "Rejected with ERP-2210 as a duplicate of {other}, which the supplier had sent by e-mail.",
    "dispute": "Disputed: {reason}. A credit note was requested from the supplier.",
}
REASONS = [
    "two cartons arrived damaged",
    "freight was charged although the order was delivered free",
    "the goods were returned as the wrong type",
    "a discount of the framework agreement is missing",
]
STATUS_WORDS = {
    "paid": "paid",
    "scheduled": "scheduled for payment",
    "price": "blocked for a price difference",
    "quantity": "blocked for quantity",
    "receipt": "blocked for a missing goods receipt",
    "bank": "waiting for the bank details check",
    "duplicate": "rejected as a duplicate",
    "dispute": "disputed",
}
BUYERS = ["Claire Dubois", "Tomasz Kowalski", "Rita Costa", "Pavel Svoboda"]


@dataclass
class Invoice:
    doc: Doc
    number: str
    po: str
    supplier: str
    status: str
    month: str


def invoices(rng: random.Random, parts: list[Part], n: int = 40) -> list[Invoice]:
    out: list[Invoice] = []
    numbers = sorted(rng.sample(range(8000, 9999), n))
    kinds = list(STATUSES)
    for k, number in enumerate(numbers):
        status = kinds[k % len(kinds)] if k < 2 * len(kinds) else rng.choice(kinds)
        supplier = rng.choice(sorted({p.supplier for p in parts}))
        lines = rng.sample([p for p in parts if p.supplier == supplier], min(3, rng.randint(1, 3)))
        inv = f"INV-26-{number:05d}"
        po = f"PO-45{rng.randint(10000, 99999)}"
        amount = rng.uniform(150, 9000)
        month = rng.choice(MONTHS[:10])
        date = f"{rng.randint(1, 28)} {MONTHS[min(11, MONTHS.index(month) + 1)]}"
        q2 = rng.randint(2, 40)
        other = f"INV-26-{rng.choice([x for x in range(7000, 9999) if x not in numbers]):05d}"
        line = STATUSES[status].format(
            date=date,
            pct=rng.randint(6, 15),
            buyer=rng.choice(BUYERS),
            q1=q2 + rng.randint(1, 10),
            q2=q2,
            other=other,
            reason=rng.choice(REASONS),
        )
        items = ", ".join(p.pn for p in lines)
        text = (
            f"Supplier invoice {inv} from {supplier}, received {rng.randint(1, 28)} {month} 2026, "
            f"{money(amount)} EUR including VAT, for purchase order {po} ({items}). Status: {line}"
        )
        doc = Doc(f"invoice-{inv.lower()}", "invoices", f"Invoice {inv} {supplier}", text)
        out.append(Invoice(doc, inv, po, supplier, status, month))
    return out


# -- release notes ----------------------------------------------------------------------------------

RELEASES = [
    (
        "Stockpilot",
        "3.9.0",
        "Adds blind counting (count.blind): counters no longer see the expected "
        "quantity. Bin labels can be reprinted from the handheld.",
    ),
    (
        "Stockpilot",
        "3.9.1",
        "Fixes scans lost when the battery was swapped during an upload. The login "
        "screen shows the site name.",
    ),
    ("Stockpilot", "3.9.2", "Fixes the quantity keypad closing when the device is rotated."),
    (
        "Stockpilot",
        "4.0.0",
        "New sync engine: records are uploaded in batches (sync.batch_size) and kept "
        "offline up to sync.offline_queue_max. Android 9 devices are no longer supported.",
    ),
    (
        "Stockpilot",
        "4.0.1",
        "Fixes SCN-403 sync conflicts reported for records nobody else had changed. "
        "Retry waits grow after each failure (sync.retry_backoff_ms).",
    ),
    (
        "Stockpilot",
        "4.1.0",
        "Adds DataMatrix and QR codes to scan.symbologies. Picking can require "
        "scanning the bin and the item (pick.confirm_mode both).",
    ),
    (
        "Stockpilot",
        "4.1.1",
        "Fixes the same barcode being counted twice when the trigger bounced; a "
        "second scan inside scan.duplicate_window_ms is ignored.",
    ),
    ("Stockpilot", "4.1.2", "Fixes a crash when the item photo could not be loaded offline."),
    (
        "Stockpilot",
        "4.2.0",
        "Short picks can be allowed per site (pick.allow_short). Uploads pause on "
        "low battery (battery.pause_upload_pct) instead of failing halfway.",
    ),
    (
        "Stockpilot",
        "4.2.1",
        "Fixes SCN-407 clock errors after a battery swap: the device takes the "
        "server's time when docked. The session timeout is configurable (session.timeout_min).",
    ),
    ("Stockpilot", "4.2.2", "Fixes the beep volume setting being reset after an update."),
    (
        "Stockpilot",
        "4.3.0",
        "Adds goods receipt against advance shipping notices from EDI, and shows the "
        "batch expiry date when picking batch-managed items.",
    ),
    (
        "Labelhub",
        "2.4.0",
        "Printers can be grouped per dock; templates are sent to all printers of a group at once.",
    ),
    (
        "Labelhub",
        "2.4.1",
        "Fixes E7009 template not found after a printer restart: templates are sent "
        "again when a printer comes back online.",
    ),
    (
        "Labelhub",
        "2.5.0",
        "The print queue size is configurable (queue.max_jobs); jobs for deleted "
        "printers are dropped instead of blocking the queue.",
    ),
    (
        "Labelhub",
        "2.5.1",
        "Fixes darkness (printer.darkness) not being applied to printers added after start-up.",
    ),
    (
        "Labelhub",
        "2.6.0",
        "Supports black-mark label stock (printer.media_type mark) and the cutter "
        "option (printer.cutter_enabled).",
    ),
    (
        "Labelhub",
        "2.6.1",
        "Fixes failed jobs being retried forever; they are retried every "
        "queue.retry_s seconds for an hour, then marked failed.",
    ),
    (
        "ERP connector",
        "7.1.0",
        "Polls the ERP for new orders every connector.poll_interval_s seconds instead of once a minute.",
    ),
    ("ERP connector", "7.1.1", "Fixes orders being sent twice after a timeout (connector.timeout_s)."),
    (
        "ERP connector",
        "7.2.0",
        "Messages that fail connector.retry_limit times go to the dead letter "
        "queue, kept for connector.dead_letter_days days.",
    ),
    ("ERP connector", "7.2.1", "Fixes EDI-504 for delivery locations whose GLN had a leading zero."),
    (
        "ERP connector",
        "7.3.0",
        "Unknown trading partners can be accepted for review instead of being "
        "rejected (connector.edi_partner_check lenient).",
    ),
    ("ERP connector", "7.3.1", "Fixes a memory leak when the ERP was unreachable for hours."),
    (
        "ERP connector",
        "7.4.0",
        "GLNs are looked up in a local cache refreshed nightly (connector.gln_lookup).",
    ),
]


def release_docs() -> list[Doc]:
    return [
        Doc(
            f"rel-{product.split()[-1].lower()}-{version}",
            "releases",
            f"{product} {version} release notes",
            f"{product} {version} release notes. {text}",
        )
        for product, version, text in RELEASES
    ]


# -- settings ---------------------------------------------------------------------------------------

# (key, product, default, what it does)
SETTINGS = [
    (
        "sync.batch_size",
        "Stockpilot",
        "200",
        "Number of scan records the handheld uploads in one request. Lower it on weak wireless.",
    ),
    ("sync.interval_s", "Stockpilot", "60", "Seconds between background uploads when the device is idle."),
    (
        "sync.retry_limit",
        "Stockpilot",
        "5",
        "Upload attempts for a record before it moves to the device's error list.",
    ),
    (
        "sync.retry_backoff_ms",
        "Stockpilot",
        "2000",
        "Wait in milliseconds before the first retry of a failed upload; doubled after each further failure.",
    ),
    (
        "sync.offline_queue_max",
        "Stockpilot",
        "5000",
        "Records kept on the device while offline; when full, scanning stops with SCN-406.",
    ),
    (
        "sync.conflict_policy",
        "Stockpilot",
        "server_wins",
        "Which version wins when a record was changed "
        "on the server and the device (server_wins or device_wins).",
    ),
    ("scan.beep_volume", "Stockpilot", "70", "Volume of the scan confirmation beep, 0 to 100."),
    (
        "scan.duplicate_window_ms",
        "Stockpilot",
        "800",
        "A second scan of the same barcode within this many milliseconds is ignored.",
    ),
    ("scan.symbologies", "Stockpilot", "code128,ean13", "Barcode types the scanner decodes."),
    (
        "scan.confirm_quantity",
        "Stockpilot",
        "true",
        "Ask for the quantity after each scan instead of counting one per scan.",
    ),
    (
        "session.timeout_min",
        "Stockpilot",
        "30",
        "Minutes of inactivity before the user must log in again (SCN-401).",
    ),
    (
        "device.clock_tolerance_s",
        "Stockpilot",
        "120",
        "Allowed difference between device and server clocks before SCN-407.",
    ),
    (
        "battery.pause_upload_pct",
        "Stockpilot",
        "10",
        "Battery percentage below which uploads pause (SCN-405).",
    ),
    (
        "pick.confirm_mode",
        "Stockpilot",
        "scan_bin",
        "What the picker scans to confirm a pick: scan_bin, scan_item or both.",
    ),
    ("pick.allow_short", "Stockpilot", "false", "Whether a picker may confirm fewer units than requested."),
    ("count.blind", "Stockpilot", "true", "Counters do not see the expected quantity during a count."),
    (
        "printer.darkness",
        "Labelhub",
        "15",
        "Print darkness from 0 to 30. Higher values print darker but wear the print head faster.",
    ),
    (
        "printer.speed_ips",
        "Labelhub",
        "4",
        "Print speed in inches per second; slower prints sharper barcodes.",
    ),
    (
        "printer.media_type",
        "Labelhub",
        "gap",
        "How the printer finds the label edge: gap, mark (black mark) or continuous.",
    ),
    (
        "printer.mode",
        "Labelhub",
        "thermal_transfer",
        "thermal_transfer (with ribbon) or direct_thermal (heat-sensitive labels, no ribbon).",
    ),
    (
        "printer.cutter_enabled",
        "Labelhub",
        "false",
        "Cut after each label; only on printers with the cutter option.",
    ),
    ("label.template_default", "Labelhub", "pallet_100x150", "Template used when a print job names none."),
    ("queue.max_jobs", "Labelhub", "500", "Jobs a printer's queue holds before new jobs fail with E7010."),
    ("queue.retry_s", "Labelhub", "30", "Seconds between retries of a failed print job."),
    (
        "connector.poll_interval_s",
        "ERP connector",
        "30",
        "Seconds between polls of the ERP for new orders and messages.",
    ),
    ("connector.batch_size", "ERP connector", "100", "Messages sent to the ERP in one call."),
    (
        "connector.timeout_s",
        "ERP connector",
        "20",
        "Seconds to wait for the ERP's answer before a call counts as failed.",
    ),
    (
        "connector.retry_limit",
        "ERP connector",
        "3",
        "Attempts for a message before it goes to the dead letter queue.",
    ),
    (
        "connector.dead_letter_days",
        "ERP connector",
        "14",
        "Days failed messages are kept in the dead letter queue.",
    ),
    (
        "connector.edi_partner_check",
        "ERP connector",
        "strict",
        "strict rejects messages from unknown trading partners (EDI-501); lenient holds them for review.",
    ),
    (
        "connector.gln_lookup",
        "ERP connector",
        "cache",
        "Where delivery location GLNs are looked up: cache or live.",
    ),
    (
        "erp.price_tolerance_pct",
        "ERP",
        "5",
        "Invoice price variance allowed against the purchase order before ERP-2214 blocks the invoice.",
    ),
    ("erp.qty_tolerance_pct", "ERP", "0", "Quantity variance allowed before ERP-2212 blocks the invoice."),
    (
        "erp.credit_check",
        "ERP",
        "on_order",
        "When the customer credit check runs: on_order, on_delivery or off.",
    ),
    ("erp.negative_stock", "ERP", "false", "Whether goods issues may make stock negative (ERP-4401)."),
    ("erp.posting_window_days", "ERP", "3", "How many days ahead a posting date may be (ERP-1040)."),
    ("erp.period_close_day", "ERP", "3", "Working day of the next month on which finance closes the period."),
]


def setting_docs() -> list[Doc]:
    return [
        Doc(
            f"set-{key.replace('.', '-').replace('_', '-')}",
            "settings",
            f"Setting {key}",
            f"{product} setting {key} (default {default}): {text}",
        )
        for key, product, default, text in SETTINGS
    ]


# -- procedures and policies ------------------------------------------------------------------------

PROSE = [
    (
        "proc-goods-receipt",
        "Receiving goods",
        "Check the delivery note against the purchase order, count "
        "the cartons and look for transport damage before signing. Post the goods receipt in the ERP the "
        "same day; invoices cannot be matched without it.",
    ),
    (
        "proc-quality-hold",
        "Putting goods on quality hold",
        "Suspect goods go to the red quarantine area "
        "and are put on quality hold in the ERP so nobody can issue them. Quality decides within five "
        "working days: release, rework, return or scrap.",
    ),
    (
        "proc-supplier-return",
        "Returning goods to a supplier",
        "Ask purchasing for a return authorisation "
        "number first. Pack the goods in their original packaging, attach the number and the reason, and "
        "book the return delivery so the credit note can be matched.",
    ),
    (
        "proc-cycle-count",
        "Cycle counting",
        "Every bin is counted at least twice a year; fast movers "
        "every month. While a count is open the bin is blocked for picking. Differences above 2% or "
        "200 EUR are recounted by a second person.",
    ),
    (
        "proc-year-end-count",
        "Year-end stock count",
        "The full stock count takes place on the last two "
        "working days of December. Receiving and shipping stop at noon the day before; each team counts "
        "its aisles and a second team checks a sample.",
    ),
    (
        "proc-oil-storage",
        "Storing oils and flammable liquids",
        "Oils, solvents and paints are stored in "
        "the bunded cabinet area, never more than 200 litres outside it. Keep the safety data sheets at "
        "the cabinet and spill kits within reach.",
    ),
    (
        "proc-forklift",
        "Forklift rules",
        "Only staff with a valid forklift licence and the site's "
        "induction may drive. Speed limit 10 km/h in the warehouse, 6 km/h in mixed areas; horn at "
        "every aisle end. Check the truck at the start of each shift.",
    ),
    (
        "proc-lockout",
        "Lockout before maintenance",
        "Before working on a machine, switch it off, isolate "
        "every energy source (electric, hydraulic, pneumatic), fit your personal padlock and tag, release "
        "stored pressure and test that it does not start.",
    ),
    (
        "proc-hot-work",
        "Hot work permit",
        "Welding, grinding and cutting outside the workshop need a hot "
        "work permit from the shift leader. Remove combustibles within 10 metres and keep a fire watch for "
        "an hour afterwards.",
    ),
    (
        "proc-hose-replacement",
        "Hydraulic hose replacement",
        "Hydraulic hoses are replaced after six years "
        "in service or at the first sign of cracks, bulges or leaks, whichever comes first. Always fit a "
        "hose of the same size, length and pressure rating, and release pressure before loosening it.",
    ),
    (
        "proc-bearing-fitting",
        "Fitting bearings",
        "Heat bearings with the induction heater, never with a "
        "flame, and never hammer on the outer ring. Replace bearings that were removed; they are not "
        "reused.",
    ),
    (
        "proc-belt-tension",
        "Tensioning V-belts",
        "New belts are tensioned, run for 30 minutes and "
        "tensioned again. Use the tension gauge, not the thumb. Change all belts of a drive together.",
    ),
    (
        "proc-sensor-replacement",
        "Replacing proximity sensors",
        "Check the output type before fitting a "
        "replacement: our PLC inputs need PNP sensors, the old packing lines NPN. Set the sensing distance "
        "with the target in place and tighten the nuts by hand plus a quarter turn.",
    ),
    (
        "proc-oil-change",
        "Hydraulic oil change",
        "Hydraulic units get HLP 46 oil only. The oil is sampled "
        "every six months and changed when the lab report says so, at the latest every 8,000 hours; the "
        "filters are changed with it.",
    ),
    (
        "proc-calibration",
        "Calibrating measuring instruments",
        "Callipers, micrometers and torque wrenches "
        "are calibrated once a year by the metrology lab. An instrument with an expired sticker must not "
        "be used for inspection.",
    ),
    (
        "proc-critical-spares",
        "Critical spare parts",
        "Parts whose failure stops a line for more than a "
        "shift are critical spares. Maintenance keeps their minimum stock on hand and reviews the list "
        "every quarter.",
    ),
    (
        "proc-emergency-purchase",
        "Emergency purchases out of hours",
        "At night or at weekends the shift "
        "leader may order parts up to 2,000 EUR by phone to stop a breakdown. Raise the purchase order on "
        "the next working day with the supplier's delivery note.",
    ),
    (
        "pol-purchase-approval",
        "Purchase approval limits",
        "Purchase orders up to 1,000 EUR are approved "
        "by the requester's team lead, up to 10,000 EUR by the department head, above that by the plant "
        "manager.",
    ),
    (
        "pol-new-supplier",
        "Setting up a new supplier",
        "Purchasing sets up new suppliers after checking "
        "their company registration, tax number and bank account. Bank details are confirmed by a phone "
        "call to a number from an independent source.",
    ),
    (
        "pol-invoice-tolerance",
        "Invoice tolerances",
        "An invoice is paid without questions when its price "
        "is at most 5% or 50 EUR above the order and its quantity matches what was received. Above that "
        "it waits for the buyer.",
    ),
    (
        "pol-payment-runs",
        "Payment runs",
        "Suppliers are paid in two runs a week, on Tuesday and Friday, "
        "on the due date of the payment terms. Urgent payments outside the runs need the finance "
        "manager's approval.",
    ),
    (
        "pol-credit-limits",
        "Customer credit limits",
        "Credit limits are set when a customer is opened and "
        "reviewed every year. Orders above the limit are held until the credit team releases them.",
    ),
    (
        "pol-new-item",
        "Requesting a new part number",
        "New items are requested with the master data form: "
        "description, drawing or datasheet, supplier, unit and the machine it is for. The master data "
        "team checks for an existing part first; duplicates are the most common error.",
    ),
    (
        "pol-part-numbers",
        "How part numbers are built",
        "A part number is a family prefix (BLT bolts, HX "
        "hoses, BRG bearings, FLT filters, VB belts, PXS sensors, SVL valves, MTR motors), the main size "
        "and a suffix for the variant. Since the 2024 renumbering the old numbers are kept as a note.",
    ),
    (
        "pol-obsolete-stock",
        "Obsolete stock",
        "Items without movement for two years are reviewed by "
        "maintenance and finance. What no machine needs any more is sold, returned or scrapped and "
        "written off.",
    ),
    (
        "pol-consignment",
        "Consignment stock",
        "Some suppliers keep their own stock in our warehouse. It "
        "belongs to them until it is issued; the issue creates the purchase and the invoice.",
    ),
    (
        "pol-ppe",
        "Personal protective equipment",
        "Safety shoes and glasses are worn in all production "
        "areas. Cut-resistant gloves are mandatory for handling sheet metal; hearing protection near the "
        "presses. PPE is issued free by the stores.",
    ),
    (
        "faq-scanner-charging",
        "Charging the handhelds",
        "Put the handhelds in their cradles at the end of "
        "each shift. A spare battery can be swapped without losing scans; a fully drained device must "
        "charge for 20 minutes before it starts.",
    ),
    (
        "faq-scanner-lost",
        "A lost or broken handheld",
        "Report a lost or broken device to IT the same "
        "day with its asset number. IT locks it remotely and issues a replacement from the pool.",
    ),
    (
        "faq-printhead-cleaning",
        "Cleaning the print head",
        "Clean the label printer's print head at every "
        "ribbon change with an alcohol cleaning pen, from the middle to the sides. Let it dry before "
        "closing the head.",
    ),
    (
        "faq-label-sizes",
        "Which label for what",
        "Pallets get the 100 x 150 mm label, cartons the "
        "100 x 50 mm one, bins and shelves the small 57 x 32 mm label. Dangerous goods documents are "
        "printed on A5.",
    ),
    (
        "faq-scanner-password",
        "Forgotten scanner password",
        "The scanner login uses your network account. "
        "Reset your password at the self-service kiosk in the canteen or ask the shift leader to call "
        "the IT desk.",
    ),
    (
        "faq-raise-ticket",
        "Raising a ticket",
        "Report faults through the service portal or the IT desk's "
        "phone number. Give the machine or device, the error code shown and what you were doing; attach "
        "a photo if you can.",
    ),
    (
        "faq-ticket-priority",
        "Ticket priorities",
        "P1: a line or the shipping dock is stopped, answer "
        "within 15 minutes. P2: production slowed, 1 hour. P3: a workaround exists, next working day. "
        "P4: requests and questions, within a week.",
    ),
    (
        "proc-shift-handover",
        "Shift handover",
        "At each change of shift the leaders walk the lines "
        "together and note open faults, safety issues and late orders in the handover book.",
    ),
    (
        "proc-breakdown",
        "Machine breakdown",
        "When a machine stops, make it safe, call maintenance on "
        "the breakdown number and log the stop in the downtime system with the alarm code. Do not reset "
        "safety devices yourself.",
    ),
    (
        "proc-air-leaks",
        "Compressed air leaks",
        "Compressed air leaks cost money around the clock. Tag "
        "every leak you hear with a yellow tag; maintenance repairs tagged leaks every week.",
    ),
    (
        "proc-coolant",
        "Coolant concentration",
        "The CNC machines' coolant is kept at 6 to 8 percent and "
        "checked with the refractometer every Monday. Top up with premix, never with plain water.",
    ),
    (
        "proc-waste-oil",
        "Waste oil disposal",
        "Used oil and filter elements go in the marked drums in "
        "the waste yard, never in the general waste. The disposal company empties them monthly.",
    ),
    (
        "pol-tool-crib",
        "Borrowing tools",
        "Special tools are borrowed from the tool crib against your "
        "badge and returned by the end of the shift. Report a damaged tool when you bring it back.",
    ),
    (
        "pol-contractors",
        "Contractors on site",
        "Contractors sign in at the gate, get the safety briefing "
        "and are accompanied by the person who ordered the work. Work on machines needs a permit.",
    ),
    (
        "proc-kanban",
        "Two-bin kanban for small parts",
        "Bolts, washers and other small parts are kept in "
        "two bins on the line. When the first bin is empty, put its card in the kanban box; the stores "
        "refill it within a day.",
    ),
    (
        "proc-dangerous-goods",
        "Shipping dangerous goods",
        "Only trained staff prepare shipments of "
        "dangerous goods. Print the transport document on A5, label each package with its UN number and "
        "hand the declaration to the driver.",
    ),
    (
        "proc-asn",
        "Advance shipping notices",
        "Suppliers on EDI send an advance shipping notice when the "
        "goods leave. Receiving scans the pallet label against it instead of typing the delivery note.",
    ),
    (
        "pol-warranty",
        "Warranty claims",
        "Parts that fail within the supplier's warranty are kept, tagged "
        "with the ticket number and sent back with a claim form. Do not scrap them before purchasing "
        "agrees.",
    ),
    (
        "pol-stock-transfer",
        "Moving stock between plants",
        "Stock is moved between plants with a "
        "transfer order, never by simply loading a van. The sending plant posts the issue, the receiving "
        "plant the receipt.",
    ),
]


def prose_docs() -> list[Doc]:
    return [Doc(i, "procedures", title, text) for i, title, text in PROSE]


# -- queries ----------------------------------------------------------------------------------------

# Written by hand: (kind, query, relevant ids). Identifier look-ups, then plain language.
HAND = [
    ("keyword", "ERP-2213", ["err-erp-2213"]),
    ("keyword", "what does ERP-1045 mean", ["err-erp-1045"]),
    ("keyword", "label printer E7006", ["err-e7006"]),
    ("keyword", "ALM-112 what to do", ["err-alm-112"]),
    ("keyword", "SCN-405", ["err-scn-405"]),
    ("keyword", "EDI-502 error", ["err-edi-502"]),
    ("keyword", "ERP-4403 cannot issue", ["err-erp-4403"]),
    ("keyword", "how do I fix ERP-3303", ["err-erp-3303"]),
    ("keyword", "E7007", ["err-e7007"]),
    ("keyword", "ALM-121 on the lathe", ["err-alm-121"]),
    ("keyword", "ERP-2217", ["err-erp-2217"]),
    ("keyword", "SCN-402 new handheld", ["err-scn-402"]),
    ("keyword", "ALM-103", ["err-alm-103"]),
    ("keyword", "ERP-1047 when posting", ["err-erp-1047"]),
    ("keyword", "what changed in Stockpilot 4.1.1", ["rel-stockpilot-4.1.1"]),
    ("keyword", "Labelhub 2.5.0 release notes", ["rel-labelhub-2.5.0"]),
    ("keyword", "connector 7.2.0 changes", ["rel-connector-7.2.0"]),
    ("keyword", "Stockpilot 3.9.1", ["rel-stockpilot-3.9.1"]),
    ("keyword", "what's new in 4.3.0", ["rel-stockpilot-4.3.0"]),
    ("keyword", "sync.retry_backoff_ms", ["set-sync-retry-backoff-ms"]),
    ("keyword", "default for printer.darkness", ["set-printer-darkness"]),
    ("keyword", "connector.retry_limit", ["set-connector-retry-limit"]),
    ("keyword", "what does scan.duplicate_window_ms do", ["set-scan-duplicate-window-ms"]),
    ("keyword", "queue.max_jobs default", ["set-queue-max-jobs"]),
    ("keyword", "erp.price_tolerance_pct", ["set-erp-price-tolerance-pct"]),
    ("keyword", "pick.confirm_mode options", ["set-pick-confirm-mode"]),
    ("natural", "payment terms on the invoice are different from the order", ["err-erp-2217"]),
    ("natural", "posting date is missing on the document", ["err-erp-1041"]),
    ("natural", "label printer ran out of labels", ["err-e7001"]),
    ("natural", "hydraulic oil level low alarm", ["err-alm-112"]),
    ("natural", "the item has no price in the customer's price list", ["err-erp-3303"]),
    ("natural", "scanner session expired", ["err-scn-401", "set-session-timeout-min"]),
    ("natural", "serial number is already in stock when receiving", ["err-erp-4404"]),
    ("natural", "batch expired and cannot be issued", ["err-erp-4403"]),
    ("natural", "exchange rate missing for the invoice currency", ["err-erp-1047"]),
    ("natural", "which Stockpilot version added blind counting", ["rel-stockpilot-3.9.0"]),
    ("natural", "which Labelhub release supports black mark labels", ["rel-labelhub-2.6.0"]),
    ("natural", "connector release that added the dead letter queue", ["rel-connector-7.2.0"]),
    (
        "natural",
        "setting for how long the scanner login stays active",
        ["set-session-timeout-min", "err-scn-401", "rel-stockpilot-4.2.1"],
    ),
    ("natural", "setting for the invoice price tolerance", ["set-erp-price-tolerance-pct"]),
    ("natural", "how many jobs can a printer queue hold", ["set-queue-max-jobs"]),
    ("natural", "hydraulic hose replacement interval", ["proc-hose-replacement"]),
    ("natural", "purchase order approval limits", ["pol-purchase-approval"]),
    ("natural", "forklift speed limit in the warehouse", ["proc-forklift"]),
    ("natural", "when is the year-end stock count", ["proc-year-end-count"]),
    ("natural", "which days are payment runs", ["pol-payment-runs"]),
    ("paraphrase", "how often do the pressure lines on the presses get swapped", ["proc-hose-replacement"]),
    ("paraphrase", "who signs off on buying something for 5,000 euros", ["pol-purchase-approval"]),
    ("paraphrase", "can I grind something in the warehouse", ["proc-hot-work"]),
    ("paraphrase", "what must I do before opening up a machine to repair it", ["proc-lockout"]),
    ("paraphrase", "the stuff we think is bad, where does it go", ["proc-quality-hold"]),
    ("paraphrase", "sending faulty items back to the vendor", ["proc-supplier-return"]),
    ("paraphrase", "how fast may I drive the truck indoors", ["proc-forklift"]),
    ("paraphrase", "where do I keep cans of solvent", ["proc-oil-storage"]),
    ("paraphrase", "which fluid goes into the presses", ["proc-oil-change"]),
    ("paraphrase", "the sticker on my calliper is out of date", ["proc-calibration"]),
    ("paraphrase", "something broke at 2am on Sunday, can I buy a replacement", ["proc-emergency-purchase"]),
    ("paraphrase", "when do vendors get their money", ["pol-payment-runs"]),
    ("paraphrase", "what do the letters at the start of an item code mean", ["pol-part-numbers"]),
    ("paraphrase", "parts nobody has touched in ages", ["pol-obsolete-stock"]),
    ("paraphrase", "do I need anything on my hands when moving steel sheets", ["pol-ppe"]),
    ("paraphrase", "the handheld is completely flat, how long until it turns on", ["faq-scanner-charging"]),
    ("paraphrase", "I dropped my scanner and it's broken", ["faq-scanner-lost"]),
    ("paraphrase", "what size sticker goes on a pallet", ["faq-label-sizes", "part-lbl-100150-tt"]),
    ("paraphrase", "how quickly will someone help if the line is down", ["faq-ticket-priority"]),
    ("paraphrase", "an outside firm is coming to repair the roof", ["pol-contractors"]),
    ("paraphrase", "hissing sound from an air pipe", ["proc-air-leaks"]),
    ("paraphrase", "getting screws refilled at my workstation", ["proc-kanban"]),
    ("paraphrase", "a component died while still under guarantee", ["pol-warranty"]),
    ("paraphrase", "taking parts over to the other factory", ["pol-stock-transfer"]),
    ("paraphrase", "stickers stuck in the blade", ["err-e7007"]),
    ("paraphrase", "printer got too warm during a big run", ["err-e7005"]),
    ("paraphrase", "the machine says someone hit the red button", ["err-alm-101"]),
    ("paraphrase", "the safety beams at the press keep tripping", ["err-alm-103"]),
    ("paraphrase", "the spindle is working too hard", ["err-alm-120"]),
    ("paraphrase", "we can't send goods to this client until they pay", ["err-erp-3302"]),
    ("paraphrase", "the reduction I gave is too big for the system", ["err-erp-3304"]),
    ("paraphrase", "handheld isn't set up for this location", ["err-scn-402"]),
    ("paraphrase", "the system won't let me put more on that shelf", ["err-erp-4405"]),
    ("paraphrase", "make the labels come out darker", ["set-printer-darkness"]),
    (
        "paraphrase",
        "stop the scanner from logging me out so often",
        ["set-session-timeout-min", "err-scn-401", "rel-stockpilot-4.2.1"],
    ),
    (
        "paraphrase",
        "the handheld counts the same box twice",
        ["set-scan-duplicate-window-ms", "rel-stockpilot-4.1.1"],
    ),
    ("paraphrase", "let pickers take less than asked for", ["set-pick-allow-short", "rel-stockpilot-4.2.0"]),
    (
        "paraphrase",
        "hide the expected amount from people doing inventory",
        ["set-count-blind", "rel-stockpilot-3.9.0"],
    ),
    (
        "paraphrase",
        "printer should chop off each sticker",
        ["set-printer-cutter-enabled", "rel-labelhub-2.6.0"],
    ),
    ("paraphrase", "wire that can bend in a cable track", ["part-cbl-4g15-pur", "part-cbl-7g15-pur"]),
    ("paraphrase", "ink tape for stickers that must survive oil", ["part-rbn-110-res"]),
    ("paraphrase", "paper for the little shelf tags", ["part-lbl-5732-dt", "faq-label-sizes"]),
    (
        "paraphrase",
        "which update stopped scans vanishing when changing the battery",
        ["rel-stockpilot-3.9.1"],
    ),
    (
        "paraphrase",
        "version that fixed the app crashing when a picture would not load",
        ["rel-stockpilot-4.1.2"],
    ),
    (
        "paraphrase",
        "update where the print service stopped retrying broken jobs endlessly",
        ["rel-labelhub-2.6.1"],
    ),
]

PN_TEMPLATES = [
    "{pn}",
    "{pn} stock",
    "where is {pn} stored",
    "{pn} lead time",
    "who supplies {pn}",
    "price of {pn}",
    "do we have {pn} in stock",
    "{pn} reorder point",
]
DESC_TEMPLATES = ["{desc}", "do we stock {desc}", "need {desc}", "{desc} part number"]


def usage_relevant(family: str, machine: str, parts: list[Part], tix: list[Ticket]) -> list[str]:
    """Item-master records of ``family`` used on ``machine``, and tickets where one was fitted there."""
    fam = {p.pn for p in parts if p.family == family}
    ids = [p.doc.id for p in parts if p.family == family and machine in p.used_on]
    return ids + [t.doc.id for t in tix if t.pn in fam and t.machine == machine]


def first_queries(
    rng: random.Random, parts: list[Part], tix: list[Ticket], invs: list[Invoice]
) -> list[Query]:
    qs: list[Query] = []
    for p in rng.sample(parts, 26):
        qs.append(Query("keyword", rng.choice(PN_TEMPLATES).format(pn=p.pn), [p.doc.id]))
    for t in rng.sample(tix, 6):
        text = rng.choice(["{n}", "status of {n}", "what fixed {n}"]).format(n=t.number)
        qs.append(Query("keyword", text, [t.doc.id]))
    for v in rng.sample(invs, 6):
        if v.status not in ("paid", "scheduled") and rng.random() < 0.5:
            text = f"why is {v.number} blocked" if v.status != "dispute" else f"{v.number} dispute"
        else:
            text = rng.choice(["{n}", "{n} status", "invoice for {po}"]).format(n=v.number, po=v.po)
        qs.append(Query("keyword", text, [v.doc.id]))
    qs += [Query(k, q, r) for k, q, r in HAND if k == "keyword"]
    for p in rng.sample(parts, 16):
        qs.append(Query("natural", rng.choice(DESC_TEMPLATES).format(desc=p.attrs), [p.doc.id]))
    pairs = sorted({(p.family, m) for p in parts for m in p.used_on})
    for family, machine in rng.sample(pairs, 4):
        noun = next(p.noun for p in parts if p.family == family)
        qs.append(
            Query(
                "natural",
                f"which {noun} is used on the {machine}",
                usage_relevant(family, machine, parts, tix),
            )
        )
    for i in rng.sample(range(len(SCENARIOS)), 6):
        t = rng.choice([t for t in tix if t.scenario == i])
        qs.append(Query("natural", f"{t.site} ticket: {t.short}", [t.doc.id]))
    combos = Counter((v.supplier, v.status) for v in invs)
    unique = [v for v in invs if combos[(v.supplier, v.status)] == 1]
    for v in rng.sample(unique, 5):
        qs.append(Query("natural", f"{v.supplier} invoice {STATUS_WORDS[v.status]}", [v.doc.id]))
    qs += [Query(k, q, r) for k, q, r in HAND if k != "keyword"]
    return qs


# The holdout, written after the first results: other templates, other items, new hand-written queries.
HAND_HOLDOUT = [
    ("keyword", "E7009", ["err-e7009"]),
    ("keyword", "ALM-131 coolant", ["err-alm-131"]),
    ("keyword", "what is SCN-406", ["err-scn-406"]),
    ("keyword", "ERP-4406 quality hold", ["err-erp-4406"]),
    ("keyword", "connector.gln_lookup", ["set-connector-gln-lookup"]),
    ("keyword", "what changed in Labelhub 2.4.1", ["rel-labelhub-2.4.1"]),
    ("natural", "coolant concentration for the CNC machines", ["proc-coolant", "err-alm-131"]),
    ("natural", "how to return goods to a supplier", ["proc-supplier-return"]),
    ("natural", "delivery address is missing the postcode", ["err-erp-3305"]),
    (
        "natural",
        "which labels are used for dangerous goods documents",
        ["faq-label-sizes", "part-lbl-148210-tt", "proc-dangerous-goods"],
    ),
    ("natural", "print speed setting", ["set-printer-speed-ips"]),
    ("paraphrase", "the delivery arrived with crushed boxes, what now", ["proc-goods-receipt"]),
    ("paraphrase", "machine died mid-shift, who do I phone", ["proc-breakdown"]),
    ("paraphrase", "where can I borrow a special spanner", ["pol-tool-crib"]),
    ("paraphrase", "the spindle bearings are running warm", ["err-alm-121"]),
    ("paraphrase", "the paper roll in the label printer is finished", ["err-e7001"]),
    ("paraphrase", "where do used filters get thrown away", ["proc-waste-oil"]),
    ("paraphrase", "the machine coolant is too watery", ["proc-coolant", "err-alm-131"]),
    ("paraphrase", "what happens at the changeover between teams", ["proc-shift-handover"]),
    ("paraphrase", "a safety check before hopping onto the truck", ["proc-forklift"]),
    ("paraphrase", "I forgot my handheld login", ["faq-scanner-password"]),
    ("paraphrase", "a vendor keeps its own goods in our building", ["pol-consignment"]),
    ("paraphrase", "we got billed twice for the same delivery", ["err-erp-2210"]),
    (
        "paraphrase",
        "the vendor billed more pieces than we got",
        ["err-erp-2212", "set-erp-qty-tolerance-pct"],
    ),
    ("paraphrase", "time to swap out the drive belts, anything to watch", ["proc-belt-tension"]),
    ("paraphrase", "putting a new ball race in", ["proc-bearing-fitting"]),
    ("paraphrase", "swapping a sensor, which wiring type do we use", ["proc-sensor-replacement"]),
    ("paraphrase", "how do I get a number for a brand-new component", ["pol-new-item"]),
    ("paraphrase", "can the scanner read square codes", ["set-scan-symbologies", "rel-stockpilot-4.1.0"]),
]
HOLD_PN_TEMPLATES = [
    "{pn} in stock?",
    "how many {pn} left",
    "order {pn}",
    "{pn} unit price",
    "which warehouse has {pn}",
    "{pn} bin location",
]
HOLD_DESC_TEMPLATES = ["looking for {desc}", "{desc} in stock?", "part number for {desc}"]


def holdout_queries(
    rng: random.Random, parts: list[Part], tix: list[Ticket], invs: list[Invoice], first: list[Query]
) -> list[Query]:
    seen = {r for q in first for r in q.relevant}
    fresh = [p for p in parts if p.doc.id not in seen]
    qs: list[Query] = []
    for p in rng.sample(fresh, 12):
        qs.append(Query("keyword", rng.choice(HOLD_PN_TEMPLATES).format(pn=p.pn), [p.doc.id]))
    old = [p for p in parts if p.legacy and p.doc.id not in seen]
    for p, text in zip(
        rng.sample(old, 2), ["old item number {n}", "what is the new number for {n}"], strict=True
    ):
        qs.append(Query("keyword", text.format(n=p.legacy), [p.doc.id]))
    for t in rng.sample([t for t in tix if t.doc.id not in seen], 3):
        qs.append(
            Query("keyword", rng.choice(["{n} details", "who reported {n}"]).format(n=t.number), [t.doc.id])
        )
    for v in rng.sample([v for v in invs if v.doc.id not in seen], 3):
        text = rng.choice(["has {n} been paid", "{po} invoice status"]).format(n=v.number, po=v.po)
        qs.append(Query("keyword", text, [v.doc.id]))
    qs += [Query(k, q, r) for k, q, r in HAND_HOLDOUT if k == "keyword"]
    for p in rng.sample(fresh, 8):
        qs.append(Query("natural", rng.choice(HOLD_DESC_TEMPLATES).format(desc=p.attrs), [p.doc.id]))
    asked = {q.query for q in first}
    pairs = sorted({(p.family, m) for p in parts for m in p.used_on})
    nouns = {p.family: p.noun for p in parts}
    pairs = [(f, m) for f, m in pairs if f"which {nouns[f]} is used on the {m}" not in asked]
    for family, machine in rng.sample(pairs, 2):
        qs.append(
            Query(
                "natural", f"{nouns[family]} for the {machine}", usage_relevant(family, machine, parts, tix)
            )
        )
    for i in rng.sample(range(len(SCENARIOS)), 3):
        t = rng.choice([t for t in tix if t.scenario == i and t.doc.id not in seen])
        qs.append(Query("natural", f"ticket from {t.site} about {t.short}", [t.doc.id]))
    combos = Counter((v.supplier, v.status) for v in invs)
    unique = [v for v in invs if combos[(v.supplier, v.status)] == 1 and v.doc.id not in seen]
    for v in rng.sample(unique, 2):
        qs.append(Query("natural", f"the {v.supplier} invoice that is {STATUS_WORDS[v.status]}", [v.doc.id]))
    qs += [Query(k, q, r) for k, q, r in HAND_HOLDOUT if k != "keyword"]
    return qs


# -- main -------------------------------------------------------------------------------------------


def build() -> tuple[list[Doc], list[Query], list[Query]]:
    parts = item_master(random.Random(f"{SEED}-parts"))
    by_pn = {p.pn: p for p in parts}
    tix = tickets(random.Random(f"{SEED}-tickets"), by_pn)
    invs = invoices(random.Random(f"{SEED}-invoices"), parts)
    docs = (
        [p.doc for p in parts]
        + error_docs()
        + [t.doc for t in tix]
        + [v.doc for v in invs]
        + release_docs()
        + setting_docs()
        + prose_docs()
    )
    first = first_queries(random.Random(f"{SEED}-queries"), parts, tix, invs)
    holdout = holdout_queries(random.Random(f"{SEED}-holdout"), parts, tix, invs, first)
    check(docs, parts, first + holdout)
    return docs, first, holdout


def check(docs: list[Doc], parts: list[Part], queries: list[Query]) -> None:
    ids = [d.id for d in docs]
    dup = [i for i, n in Counter(ids).items() if n > 1]
    assert not dup, f"duplicate document ids: {dup}"
    descs = Counter(p.attrs for p in parts)
    assert all(n == 1 for n in descs.values()), [d for d, n in descs.items() if n > 1]
    known = set(ids)
    for q in queries:
        assert q.kind in KINDS and q.relevant, q
        missing = [r for r in q.relevant if r not in known]
        assert not missing, (q, missing)
    texts = Counter(q.query for q in queries)
    assert all(n == 1 for n in texts.values()), [t for t, n in texts.items() if n > 1]


def lines(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="fail if the committed files differ")
    args = ap.parse_args()
    docs, first, holdout = build()
    files = {
        "docs.jsonl": lines([{"id": d.id, "topic": d.topic, "title": d.title, "text": d.text} for d in docs]),
    }
    for name, qs, prefix in (("queries.jsonl", first, "c"), ("queries_holdout.jsonl", holdout, "ch")):
        if qs:
            rows = [
                {"id": f"{prefix}{i:03d}", "kind": q.kind, "query": q.query, "relevant": q.relevant}
                for i, q in enumerate(qs, start=1)
            ]
            files[name] = lines(rows)
    differ = []
    for name, text in files.items():
        path = OUT / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                differ.append(name)
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if differ:
        sys.exit(f"differ from the generator: {', '.join(differ)}")
    kinds = Counter(q.kind for q in first)
    hkinds = Counter(q.kind for q in holdout)
    print(
        f"{len(docs)} documents ({dict(Counter(d.topic for d in docs))}); queries {len(first)} "
        f"{dict(kinds)}; holdout {len(holdout)} {dict(hkinds)}"
    )


if __name__ == "__main__":
    main()
