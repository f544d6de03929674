"""What the codec's text-only branch (``crab_langchain.convert``) saves, per line and message.

``python benchmarks/shortcut.py`` prints, in µs, reading one text line and
writing one text message the long way (the codec and the conversion) and
through the branch. ``crab_langchain/convert.py`` quotes these numbers.
"""

from __future__ import annotations

import timeit

from langchain_core.messages import AIMessage

from crab_langchain.convert import decode_line, encode, from_crab_message, to_crab_message
from crab_langchain.models import parse_entry

LINE = b'{"role":"user","content":"Question 1: what is the weather like in Lisbon today?"}'
MESSAGE = AIMessage("Answer 1: sunny, 21 °C today; clouds and 18 °C tomorrow. Take a jacket.")
NUMBER = 50_000


def read_long() -> object:
    entry = parse_entry(LINE)
    assert not isinstance(entry, (str, bytes))
    return from_crab_message(entry)  # type: ignore[arg-type]


def write_long() -> object:
    line = to_crab_message(MESSAGE).to_line_bytes()
    return line, from_crab_message(parse_entry(line))  # type: ignore[arg-type]


def microseconds(call: object) -> float:
    best = min(timeit.repeat(call, number=NUMBER, repeat=5))  # type: ignore[arg-type]
    return best / NUMBER * 1e6


def main() -> None:
    assert decode_line(LINE) == read_long()
    rows = {
        "read a text line, the long way": microseconds(read_long),
        "read a text line, decode_line": microseconds(lambda: decode_line(LINE)),
        "write a text message, the long way": microseconds(write_long),
        "write a text message, encode": microseconds(lambda: encode(MESSAGE)),
    }
    for name, value in rows.items():
        print(f"{name:40} {value:6.2f} µs")


if __name__ == "__main__":
    main()
