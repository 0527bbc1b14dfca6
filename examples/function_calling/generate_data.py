"""Generate the function-calling dataset: requests to a small assistant with four tools (weather, unit conversion,
calendar, time zones), in OpenAI's chat fine-tuning format with ``tools`` on every row.

Most rows end with the assistant's call (one call, or two parallel ones), which is what the held-out evaluation asks
for and the tool-call metrics score; some go on to the tool's result and the assistant's final answer, and some
need no tool at all (the right answer there is no call). Deterministic:

    python examples/function_calling/generate_data.py   # rewrites trainer/assets/function_calling/requests.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SYSTEM = "You are a helpful assistant. Call a tool when one answers the request; otherwise answer directly."


def _fn(name: str, description: str, properties: dict, required: list[str]) -> dict:
    schema = {"type": "object", "properties": properties, "required": required}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": schema}}


TOOLS = [
    _fn(
        "get_weather",
        "Current weather in a city.",
        {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        ["city", "unit"],
    ),
    _fn(
        "convert_units",
        "Convert a quantity from one unit to another.",
        {"value": {"type": "number"}, "from_unit": {"type": "string"}, "to_unit": {"type": "string"}},
        ["value", "from_unit", "to_unit"],
    ),
    _fn(
        "create_event",
        "Add an event to the user's calendar.",
        {"title": {"type": "string"}, "date": {"type": "string", "description": "YYYY-MM-DD"}},
        ["title", "date"],
    ),
    _fn("get_time", "The current local time in a city.", {"city": {"type": "string"}}, ["city"]),
]
CITIES = ["Oslo", "Paris", "Tokyo", "Lima", "Cairo", "Berlin", "Toronto", "Sydney", "Madrid", "Nairobi", "Seoul"]
UNITS = [("km", "miles"), ("miles", "km"), ("kg", "pounds"), ("pounds", "kg"), ("liters", "gallons"), ("cm", "inches")]
EVENTS = ["dentist", "team meeting", "yoga class", "dinner with Sam", "flight to Rome", "book club", "car service"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October"]
CHAT = [
    ("Hello!", "Hello! I can check the weather, convert units, add calendar events and tell the time."),
    ("Thanks, that's all.", "You're welcome!"),
    ("Who are you?", "I'm an assistant that can call a few tools: weather, unit conversion, calendar and time."),
    ("Tell me a joke.", "Why did the calendar feel popular? Its days were numbered."),
    ("What can you do?", "I can check the weather, convert units, add calendar events and tell the time."),
    ("Good morning.", "Good morning! How can I help?"),
    (
        "Can you book a taxi?",
        "I can't book taxis; I can check the weather, convert units, add events or tell the time.",
    ),
    ("What is 2 + 2?", "2 + 2 = 4."),
    ("Say hi in French.", "Bonjour !"),
    ("Bye!", "Goodbye!"),
]


def _call(k: int, name: str, arguments: dict) -> dict:
    return {"id": f"call_{k}", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def request(rng: random.Random) -> tuple[str, list[tuple[str, dict]]]:
    """A user request and the calls that answer it."""
    kind = rng.choice(["weather", "weather2", "convert", "event", "time"])
    if kind.startswith("weather"):
        unit = rng.choice(["celsius", "fahrenheit"])
        cities = rng.sample(CITIES, 2 if kind == "weather2" else 1)
        asked = " and ".join(cities)
        text = rng.choice(["What's the weather in {c} in {u}?", "How warm is it in {c}? Use {u}.", "{c} weather, {u}"])
        return text.format(c=asked, u=unit), [("get_weather", {"city": c, "unit": unit}) for c in cities]
    if kind == "convert":
        src, dst = rng.choice(UNITS)
        value = rng.choice([1, 2, 5, 10, 12, 20, 42, 100, 250])
        text = rng.choice(["Convert {v} {s} to {d}.", "How many {d} is {v} {s}?", "{v} {s} in {d}?"])
        return text.format(v=value, s=src, d=dst), [
            ("convert_units", {"value": value, "from_unit": src, "to_unit": dst})
        ]
    if kind == "event":
        title, month, day = rng.choice(EVENTS), rng.randrange(len(MONTHS)), rng.randint(1, 28)
        date = f"2025-{month + 1:02d}-{day:02d}"
        text = rng.choice(["Add {t} on {m} {d} to my calendar.", "Schedule {t} for {m} {d}.", "Put {t} on {m} {d}."])
        return text.format(t=title, m=MONTHS[month], d=day), [("create_event", {"title": title, "date": date})]
    city = rng.choice(CITIES)
    text = rng.choice(["What time is it in {c}?", "Current time in {c}?", "Tell me the local time in {c}."])
    return text.format(c=city), [("get_time", {"city": city})]


def result_of(name: str, arguments: dict, rng: random.Random) -> str:
    if name == "get_weather":
        return json.dumps({"temperature": rng.randint(-5, 35), "sky": rng.choice(["sunny", "cloudy", "rain"])})
    if name == "convert_units":
        return json.dumps({"value": round(arguments["value"] * rng.uniform(0.3, 3), 2)})
    if name == "create_event":
        return json.dumps({"created": True})
    return json.dumps({"time": f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"})


def row(rng: random.Random) -> dict:
    messages: list[dict] = [{"role": "system", "content": SYSTEM}]
    if rng.random() < 0.12:
        question, answer = rng.choice(CHAT)
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return {"tools": TOOLS, "messages": messages}
    text, calls = request(rng)
    made = [_call(k, name, arguments) for k, (name, arguments) in enumerate(calls, 1)]
    messages += [{"role": "user", "content": text}, {"role": "assistant", "content": None, "tool_calls": made}]
    if rng.random() < 0.15:  # the whole loop: the results, then the answer
        results = [result_of(name, arguments, rng) for name, arguments in calls]
        messages += [
            {"role": "tool", "tool_call_id": c["id"], "content": r} for c, r in zip(made, results, strict=True)
        ]
        messages.append({"role": "assistant", "content": "Done: " + "; ".join(results)})
    return {"tools": TOOLS, "messages": messages}


def main(count: int = 360, seed: int = 11) -> None:
    rng = random.Random(seed)
    out = Path(__file__).resolve().parents[2] / "trainer" / "assets" / "function_calling" / "requests.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    lines: dict[str, None] = {}
    while len(lines) < count:  # no duplicates: the held-out requests are new to the model
        lines[json.dumps(row(rng))] = None
    out.write_text("".join(line + "\n" for line in lines))
    print(f"wrote {count} rows to {out}")


if __name__ == "__main__":
    main()
