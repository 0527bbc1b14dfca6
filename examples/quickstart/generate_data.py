"""Generate the quickstart dataset: recipe ingredient lines -> the generic ingredients as a JSON list.

The task of OpenAI's recipe fine-tuning tutorial (RecipeNLG's NER column), with recipes written here from a
small vocabulary, so the answer is checkable by exact match. Deterministic:

    python examples/quickstart/generate_data.py            # rewrites trainer/assets/quickstart/recipes.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SYSTEM = (
    "You are a helpful recipe assistant. You are to extract the generic ingredients from each of the recipes provided."
)
INGREDIENTS = [
    "flour",
    "sugar",
    "brown sugar",
    "butter",
    "eggs",
    "milk",
    "salt",
    "pepper",
    "baking soda",
    "baking powder",
    "vanilla",
    "cinnamon",
    "nutmeg",
    "onion",
    "garlic",
    "celery",
    "carrots",
    "potatoes",
    "tomatoes",
    "chicken",
    "ground beef",
    "bacon",
    "ham",
    "rice",
    "noodles",
    "cheddar cheese",
    "cream cheese",
    "sour cream",
    "mayonnaise",
    "mustard",
    "ketchup",
    "lemon juice",
    "orange juice",
    "honey",
    "oil",
    "olive oil",
    "vinegar",
    "water",
    "chocolate chips",
    "pecans",
    "walnuts",
    "raisins",
    "oats",
    "coconut",
    "cornstarch",
    "soy sauce",
    "broth",
    "mushrooms",
    "green pepper",
    "parsley",
    "oregano",
    "basil",
    "paprika",
    "chili powder",
    "shortening",
    "buttermilk",
    "whipping cream",
    "strawberries",
    "bananas",
    "apples",
    "pineapple",
    "peaches",
    "zucchini",
]
UNITS = ["c.", "cup", "cups", "tsp.", "tbsp.", "Tbsp.", "oz.", "lb.", "pkg.", "can", "qt.", "pt."]
AMOUNTS = ["1", "2", "3", "4", "1/2", "1/4", "3/4", "1 1/2", "2 1/2", "1/3", "8", "12"]
BEFORE = [
    "",
    "",
    "",
    "chopped ",
    "fresh ",
    "melted ",
    "softened ",
    "firmly packed ",
    "grated ",
    "sliced ",
    "diced ",
    "large ",
    "small ",
    "crushed ",
    "shredded ",
]
AFTER = ["", "", "", ", chopped", ", softened", ", divided", " (optional)", ", beaten", ", drained", ", to taste"]
DISHES = [
    "Cake",
    "Casserole",
    "Pie",
    "Cookies",
    "Soup",
    "Salad",
    "Bread",
    "Muffins",
    "Stew",
    "Bars",
    "Dip",
    "Pudding",
    "Skillet",
    "Bake",
    "Delight",
    "Surprise",
]
STYLES = [
    "Grandma's",
    "Easy",
    "Quick",
    "Old-Fashioned",
    "Country",
    "Holiday",
    "Sunday",
    "Company",
    "Best",
    "Aunt Mary's",
    "Lazy",
    "Creamy",
    "Crunchy",
    "Golden",
]


def recipe(rng: random.Random) -> dict:
    names = rng.sample(INGREDIENTS, rng.randint(3, 5))
    lines = []
    for name in names:
        amount = rng.choice(AMOUNTS)
        unit = "" if name in ("eggs",) else rng.choice(UNITS) + " "
        lines.append(f"{amount} {unit}{rng.choice(BEFORE)}{name}{rng.choice(AFTER)}")
    title = f"{rng.choice(STYLES)} {names[0].title()} {rng.choice(DISHES)}"
    user = f"Title: {title}\n\nIngredients: {json.dumps(lines)}\n\nGeneric ingredients: "
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": user},
            {"role": "assistant", "content": json.dumps(names)},
        ]
    }


def main(count: int = 420, seed: int = 7) -> None:
    rng = random.Random(seed)
    out = Path(__file__).resolve().parents[2] / "trainer" / "assets" / "quickstart" / "recipes.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [recipe(rng) for _ in range(count)]
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"wrote {len(rows)} recipes to {out}")


if __name__ == "__main__":
    main()
