"""Write the stand-in for b-mc2/sql-create-context: {"question", "context", "answer"} rows, the same fields as the
real dataset (a question in English, the CREATE TABLE statements of its schema, the SQL answer), written here from a
few tables and question templates. Deterministic:

    python examples/text_to_sql_qlora/generate_data.py   # rewrites examples/text_to_sql_qlora/data/sql_create_context.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).parent / "data" / "sql_create_context.jsonl"
ROWS = 60
# table -> (text column, number column, text values, what a row is called)
TABLES = {
    "head": ("name", "age", ["Tiger Woods", "Sergio Garcia", "K. J. Choi"], "heads of the departments"),
    "table_name_12": ("venue", "attendance", ["Wembley", "Anfield", "Old Trafford"], "games"),
    "table_name_40": ("player", "points", ["John Smith", "Ana Ruiz", "Lee Park"], "players"),
    "employee": ("city", "salary", ["Bristol", "Leeds", "York"], "employees"),
    "table_name_77": ("country", "gold", ["Norway", "Kenya", "Japan"], "nations"),
}
TEMPLATES = [
    ("How many {what} have a {num} above {n} ?", "SELECT COUNT(*) FROM {t} WHERE {num} > {n}"),
    ("What is the total {num} when the {text} is {v}?", 'SELECT SUM({num}) FROM {t} WHERE {text} = "{v}"'),
    ("What is the lowest {num} for {v}?", 'SELECT MIN({num}) FROM {t} WHERE {text} = "{v}"'),
    ("Which {text} has a {num} of {n}?", "SELECT {text} FROM {t} WHERE {num} = {n}"),
    ("List the {text} of {what} with {num} below {n}.", "SELECT {text} FROM {t} WHERE {num} < {n}"),
]


def main() -> None:
    rng = random.Random(11)
    rows = []
    for _ in range(ROWS):
        t = rng.choice(sorted(TABLES))
        text, num, values, what = TABLES[t]
        question, answer = rng.choice(TEMPLATES)
        fill = {"t": t, "text": text, "num": num, "v": rng.choice(values), "n": rng.randint(10, 90), "what": what}
        context = f"CREATE TABLE {t} ({text} VARCHAR, {num} INTEGER)"
        rows.append({"question": question.format(**fill), "context": context, "answer": answer.format(**fill)})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} rows to {OUT}")


if __name__ == "__main__":
    main()
