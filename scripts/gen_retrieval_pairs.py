#!/usr/bin/env python3
"""Writes tests/fixtures/retrieval/pairs.jsonl: a small labelled retrieval set, each line
{"query": ..., "document": ...}, the document being the one relevant answer to the query.

It measures what quantized embeddings cost retrieval (tests/quantize.rs,
`recall_of_quantized_embeddings`, ignored by default, prints recall@10 of int8 and binary
against float32). Two parts:
- held-in pairs: the reference texts of tests/fixtures/minilm-reference.json, each with a
  paraphrase written by hand;
- generated pairs: statements built from templates and word lists (seeded, so every run writes
  the same file), each with a question that paraphrases it. Many statements share a template,
  so a query must find the one with its own names and places among look-alikes.

Standard library only: `python3 scripts/gen_retrieval_pairs.py`.
"""

import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "retrieval" / "pairs.jsonl"

HELD_IN = [
    ("Hello world, this is a test.", "just a hello-world test message"),
    ("The quick brown fox jumps over the lazy dog.",
     "a fast fox leaping over a sleepy dog"),
    ("A man is playing a guitar on stage.", "someone performing guitar in front of an audience"),
    ("Inference servers should never leave orphaned worker processes behind.",
     "a model server must not leave stray child processes running"),
    ("UPPER CASE and lower case Are Treated The Same?",
     "is capitalisation ignored when comparing words"),
    ("Café naïve résumé — accents and an em dash.",
     "words with accented letters and a long dash"),
    ("Emoji are tokens too 🚀🔥", "emojis count as tokens as well"),
    ("1234567890 3.14159 2026-11-21", "a row of digits, pi and a date"),
    ("supercalifragilisticexpialidocious antidisestablishmentarianism",
     "two extremely long English words"),
]

NAMES = ["Alice", "Bruno", "Chen", "Dana", "Elif", "Farid", "Greta", "Hiro", "Ines", "Jonas",
         "Kofi", "Lena", "Mateo", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Samir", "Tomas",
         "Uma", "Viktor", "Wen", "Ximena", "Yusuf", "Zara"]
CITIES = ["Lisbon", "Oslo", "Nairobi", "Kyoto", "Lima", "Krakow", "Porto", "Dublin", "Quito",
          "Tunis", "Hanoi", "Bergen", "Graz", "Leeds", "Lyon", "Perth", "Accra", "Bogota",
          "Cusco", "Gdansk", "Izmir", "Malmo", "Riga", "Turin"]
COUNTRIES = ["Chile", "Norway", "Kenya", "Japan", "Peru", "Poland", "Ireland", "Ghana",
             "Vietnam", "Austria", "Italy", "Canada"]
JOBS = ["nurse", "carpenter", "pilot", "teacher", "chef", "lawyer", "plumber", "architect",
        "baker", "dentist", "engineer", "librarian", "farmer", "journalist", "pharmacist",
        "electrician", "photographer", "veterinarian", "accountant", "firefighter"]
ANIMALS = ["elephant", "giraffe", "penguin", "tiger", "otter", "zebra", "gorilla", "flamingo",
           "kangaroo", "panda", "camel", "seal"]
FOODS = ["rice", "lentils", "fresh fish", "bamboo", "apples", "carrots", "hay", "shrimp",
         "dumplings", "noodles", "mushrooms", "cheese"]
INSTRUMENTS = ["violin", "cello", "trumpet", "drums", "piano", "flute", "saxophone", "harp",
               "accordion", "clarinet"]
OBJECTS = ["laptop", "bicycle", "umbrella", "kettle", "radio", "lawnmower", "camera", "printer",
           "guitar amp", "garden hose"]
WEATHER = ["rain", "snow", "frost", "heat", "hail", "fog", "wind"]
LANGUAGES = ["Portuguese", "Norwegian", "Swahili", "Japanese", "Quechua", "Polish", "Irish",
             "Vietnamese", "Arabic", "Turkish"]
SPORTS = ["football", "rugby", "tennis", "cricket", "basketball", "hockey", "volleyball"]
COLORS = ["red", "green", "yellow", "purple", "orange", "black", "white", "blue"]
VEHICLES = ["scooter", "van", "motorbike", "cargo bike", "pickup truck", "sports car"]
SEASONS = ["winter", "spring", "summer", "autumn"]
MATERIALS = ["tape", "wire", "string", "solder", "wood"]

TEMPLATES = [
    ("{name} works as a {job} in {city}.",
     "What does {name} do for a living in {city}?"),
    ("{name} moved from {city} to {city2} in {year}.",
     "In which year did {name} relocate to {city2}, leaving {city}?"),
    ("The {animal} at the {city} zoo eats mostly {food}.",
     "What is the {animal} in {city}'s zoo fed?"),
    ("{name} plays the {instrument} in a band that tours {country}.",
     "Which instrument does {name} play on the band's {country} tour?"),
    ("{name}'s {object} broke because it was left out in the {weather}.",
     "Why did {name}'s {object} stop working?"),
    ("{name} learned {language} while living in {city} for {n} years.",
     "Where did {name} pick up {language}, and how long did it take?"),
    ("The {sport} match in {city} was cancelled because of {weather}.",
     "Why was the {sport} game in {city} called off?"),
    ("{name}'s favourite dish is {food} with a {color} sauce.",
     "Which meal with {color} sauce does {name} like best?"),
    ("A {color} {vehicle} was reported stolen near the {city} railway station.",
     "Did someone take a {color} {vehicle} close to {city}'s train station?"),
    ("The library in {city} stays open until midnight during {season} exams.",
     "Which library keeps longer hours for the {season} exams in {city}?"),
    ("{name} repaired the {object} with some glue and a little {material}.",
     "How did {name} fix the {object}?"),
    ("Tickets for the {instrument} concert in {city} cost {n} euros.",
     "How much does it cost to hear the {instrument} concert in {city}?"),
]


def main():
    rng = random.Random(27)
    pairs = [{"query": q, "document": d} for d, q in HELD_IN]
    seen = set()
    for doc_t, query_t in TEMPLATES:
        made = 0
        while made < 25:
            city, city2 = rng.sample(CITIES, 2)
            slots = {
                "name": rng.choice(NAMES), "city": city, "city2": city2,
                "country": rng.choice(COUNTRIES), "job": rng.choice(JOBS),
                "animal": rng.choice(ANIMALS), "food": rng.choice(FOODS),
                "instrument": rng.choice(INSTRUMENTS), "object": rng.choice(OBJECTS),
                "weather": rng.choice(WEATHER), "language": rng.choice(LANGUAGES),
                "sport": rng.choice(SPORTS), "color": rng.choice(COLORS),
                "vehicle": rng.choice(VEHICLES), "season": rng.choice(SEASONS),
                "material": rng.choice(MATERIALS), "year": rng.randrange(1990, 2026),
                "n": rng.randrange(2, 60),
            }
            doc, query = doc_t.format(**slots), query_t.format(**slots)
            # One relevant document per query: no two pairs share a query or a document.
            if doc in seen or query in seen:
                continue
            seen.update((doc, query))
            pairs.append({"query": query, "document": doc})
            made += 1
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    print(f"wrote {len(pairs)} pairs to {OUT}")


if __name__ == "__main__":
    main()
