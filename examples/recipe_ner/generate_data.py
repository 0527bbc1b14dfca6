"""Write the stand-in for the OpenAI cookbook's ``cookbook_recipes_nlg_10k.csv`` (RecipeNLG rows).

Same columns as the real file (an unnamed index, title, ingredients, directions, link, source, NER), 201 rows (the
tutorial trains on rows 0-100 and validates on rows 101-200), written here from a small vocabulary. Deterministic:

    python examples/recipe_ner/generate_data.py      # rewrites examples/recipe_ner/data/cookbook_recipes_nlg_10k.csv
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

OUT = Path(__file__).parent / "data" / "cookbook_recipes_nlg_10k.csv"
ROWS = 201
# generic ingredient -> ways a recipe line names it
INGREDIENTS = {
    "brown sugar": ["firmly packed brown sugar", "light brown sugar"],
    "sugar": ["sugar", "granulated sugar"],
    "flour": ["all-purpose flour", "flour", "sifted flour"],
    "butter": ["butter, softened", "melted butter", "stick butter"],
    "eggs": ["eggs, beaten", "large eggs", "eggs"],
    "milk": ["evaporated milk", "milk", "skim milk"],
    "salt": ["salt", "salt, to taste"],
    "pepper": ["pepper", "black pepper"],
    "vanilla": ["vanilla", "vanilla extract"],
    "baking soda": ["baking soda"],
    "baking powder": ["baking powder"],
    "cinnamon": ["ground cinnamon", "cinnamon"],
    "onion": ["onion, chopped", "large onion, diced"],
    "garlic": ["cloves garlic, minced", "garlic powder"],
    "celery": ["stalks celery, sliced", "chopped celery"],
    "carrots": ["carrots, grated", "sliced carrots"],
    "potatoes": ["potatoes, peeled and cubed", "medium potatoes"],
    "tomatoes": ["can diced tomatoes", "ripe tomatoes, chopped"],
    "chicken": ["boneless chicken breasts", "cooked chicken, cubed"],
    "ground beef": ["lean ground beef", "ground beef"],
    "rice": ["uncooked rice", "cooked rice"],
    "cheddar cheese": ["shredded Cheddar cheese", "sharp Cheddar cheese, grated"],
    "cream cheese": ["pkg. cream cheese, softened", "cream cheese"],
    "sour cream": ["sour cream", "carton sour cream"],
    "cream of mushroom soup": ["can cream of mushroom soup"],
    "nuts": ["chopped nuts", "nuts"],
    "pecans": ["chopped pecans", "pecan halves"],
    "oil": ["vegetable oil", "oil"],
    "water": ["water", "boiling water"],
    "lemon juice": ["lemon juice", "fresh lemon juice"],
}
AMOUNTS = ["1", "2", "3", "1/2", "1/4", "3/4", "1 1/2", "4"]
UNITS = ["c.", "Tbsp.", "tsp.", "lb.", "oz.", ""]
DISHES = ["Casserole", "Bake", "Cookies", "Cake", "Soup", "Salad", "Pie", "Bars", "Skillet", "Dip", "Bread", "Stew"]
ADJECTIVES = ["Easy", "Grandma's", "Quick", "Golden", "Country", "Holiday", "Creamy", "Old-Fashioned", "Best"]
STEPS = [
    "Preheat oven to 350\u00b0.",
    "Mix {a} and {b} in a large bowl.",
    "Stir in {c}.",
    "Pour into a greased 9 x 13-inch pan.",
    "Bake 30 minutes or until golden.",
    "Cook over medium heat, stirring constantly.",
    "Chill before serving.",
]


def row(i: int, rng: random.Random) -> dict:
    generic = rng.sample(sorted(INGREDIENTS), rng.randint(3, 7))
    lines = [
        f"{rng.choice(AMOUNTS)} {rng.choice(UNITS)} {rng.choice(INGREDIENTS[g])}".replace("  ", " ") for g in generic
    ]
    title = f"{rng.choice(ADJECTIVES)} {generic[0].title()} {rng.choice(DISHES)}"
    steps = [s.format(a=generic[0], b=generic[1], c=generic[2]) for s in rng.sample(STEPS, 4)]
    return {
        "": str(i),
        "title": title,
        "ingredients": json.dumps(lines),
        "directions": json.dumps(steps, ensure_ascii=False),
        "link": f"www.cookbooks.com/Recipe-Details.aspx?id={40000 + 37 * i}",
        "source": "Gathered",
        "NER": json.dumps(generic),
    }


def main() -> None:
    rng = random.Random(7)
    rows = [row(i, rng) for i in range(ROWS)]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} rows to {OUT}")


if __name__ == "__main__":
    main()
