"""What the codec's short branches (``crab_langchain.convert``) save, per line and message.

``python benchmarks/shortcut.py`` prints, in µs, reading one text line, reading
one line of an agent's reply (its LangChain id kept under ``langchain``) and
writing one text message, the long way (the codec and the conversion) and
through the branch. ``crab_langchain/convert.py`` quotes these numbers.
"""

from __future__ import annotations

import timeit

from langchain_core.messages import AIMessage

from crab_langchain.convert import decode_line, encode, from_crab_message, to_crab_message
from crab_langchain.models import parse_entry

LINE = b'{"role":"user","content":"Question 1: what is the weather like in Lisbon today?"}'
AGENT_LINE = (
    b'{"role":"assistant","content":"Answer 1: sunny, 21 \xc2\xb0C today; clouds tomorrow.",'
    b'"langchain":{"id":"lc_run--01a25198-be54-73d3-80af-ea88e310d16e-0"}}'
)
MESSAGE = AIMessage("Answer 1: sunny, 21 °C today; clouds and 18 °C tomorrow. Take a jacket.")
NUMBER = 50_000


def read_long(line: bytes = LINE) -> object:
    entry = parse_entry(line)
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
    assert decode_line(AGENT_LINE) == read_long(AGENT_LINE)
    rows = {
        "read a text line, the long way": microseconds(read_long),
        "read a text line, decode_line": microseconds(lambda: decode_line(LINE)),
        "read an agent's reply, the long way": microseconds(lambda: read_long(AGENT_LINE)),
        "read an agent's reply, decode_line": microseconds(lambda: decode_line(AGENT_LINE)),
        "write a text message, the long way": microseconds(write_long),
        "write a text message, encode": microseconds(lambda: encode(MESSAGE)),
    }
    for name, value in rows.items():
        print(f"{name:40} {value:6.2f} µs")


if __name__ == "__main__":
    main()
