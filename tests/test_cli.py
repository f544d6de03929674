"""``crab-sessions``: every command run as a real process on real directories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import Follower, assert_one_line_error, crab, isolated, lines_until  # noqa: F401
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    ToolMessage,
    convert_to_messages,
    convert_to_openai_messages,
    messages_to_dict,
)

from crab_langchain import CrabChatMessageHistory, SessionStore
from crab_langchain.cli import NEEDS_CLI_EXTRA
from crab_langchain.verify import verify_file

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "crabtalk"
SEVEN = "crab_1774253211_7.jsonl"  # 8 messages, reasoning and tool calls
TWELVE = "crab_1775158803_12.jsonl"  # a compaction marker, a guest agent, a title
THREE = "research_bot_1777593600_3.jsonl"  # custom roles, broken tool-call arguments


# --- helpers ----------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A sessions directory holding writable copies of crabtalk's fixtures."""
    directory = tmp_path / "sessions"
    directory.mkdir()
    for source in sorted(FIXTURES.glob("*.jsonl")):
        (directory / source.name).write_bytes(source.read_bytes())
    return directory


def message_lines(path: Path) -> int:
    lines = path.read_bytes().split(b"\n")[1:-1]
    return sum(1 for line in lines if line.strip() and not line.startswith(b'{"compact":'))


def stored(path: Path) -> list[BaseMessage]:
    return CrabChatMessageHistory.from_file(path).stored_messages()


# --- help and the missing extra ---------------------------------------------------


def test_help_for_the_program_and_every_command():
    done = crab("--help")
    assert done.returncode == 0
    assert "--root DIR|URL" in done.stdout
    assert "--prefix P" in done.stdout
    assert "--root redis://HOST:PORT/DB" in done.stdout
    commands = ("list", "show", "export", "import", "verify", "repair", "demo")
    assert all(f"  {command} " in done.stdout for command in commands)
    for command in commands:
        done = crab(command, "--help")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"Usage: crab-sessions {command} ")


def test_without_click_main_says_which_extra_to_install():
    code = "import sys; sys.modules['click'] = None; from crab_langchain.cli import main; main()"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert done.stderr == NEEDS_CLI_EXTRA + "\n"
    assert "pip install 'crab-langchain[cli]'" in NEEDS_CLI_EXTRA


def test_unknown_command_is_a_usage_error():
    done = crab("frobnicate")
    assert done.returncode == 2
    assert "No such command 'frobnicate'" in done.stderr


# --- list -------------------------------------------------------------------------


def test_list_table_newest_first_with_message_counts(root: Path):
    done = crab("--root", root, "list")
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    columns = ["AGENT", "CREATED_BY", "CREATED_AT", "MESSAGES", "SIZE", "ID", "TITLE"]
    assert header.split() == columns
    cells = [row.split(maxsplit=len(columns) + 1) for row in rows]  # the time has a space
    assert [(c[0], c[1], c[7], c[8:]) for c in cells] == [
        ("research_bot", "research_bot", "3", []),
        ("crab", "tg:12345", "12", ["Trip planning"]),
        ("crab", "user", "7", []),
    ]
    assert [int(c[4]) for c in cells] == [6, 8, 8]  # compaction marker not counted
    assert [c[4] for c in cells] == [str(message_lines(root / n)) for n in (THREE, TWELVE, SEVEN)]


def test_list_json_matches_the_store(root: Path):
    done = crab("list", "--json", "--root", root)
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    infos = SessionStore(root, entry_points=False).list_sessions()
    assert [item["session_id"] for item in listed] == [info.session_id for info in infos]
    for item, info in zip(listed, infos, strict=True):
        path = root / info.name
        assert item["path"] == item["location"] == str(path)
        assert item["agent"] == info.agent
        assert item["created_by"] == info.created_by
        assert item["created_at"] == info.created_at.isoformat()
        assert item["size"] == path.stat().st_size
        assert item["messages"] == message_lines(path)
        assert item["title"] == info.title


def test_list_filters_by_agent_and_created_by(root: Path):
    by_agent = json.loads(crab("--root", root, "list", "--json", "--agent", "crab").stdout)
    assert sorted(item["session_id"] for item in by_agent) == ["12", "7"]
    both = crab("--root", root, "list", "--json", "--agent", "crab", "--created-by", "tg:12345")
    assert [item["session_id"] for item in json.loads(both.stdout)] == ["12"]


def test_list_warns_about_a_malformed_file_and_lists_the_rest(root: Path):
    (root / "crab_1_broken.jsonl").write_bytes(b"not a header\n")
    done = crab("--root", root, "list", "--json")
    assert done.returncode == 0
    assert len(json.loads(done.stdout)) == 3
    (warning,) = done.stderr.splitlines()
    assert warning.startswith("crab-sessions: warning: skipping ")
    assert "crab_1_broken.jsonl" in warning


def test_list_of_a_missing_directory_is_an_error(tmp_path: Path):
    done = crab("--root", tmp_path / "nowhere", "list")
    assert_one_line_error(done, "no sessions directory", str(tmp_path / "nowhere"))


def test_default_root_comes_from_crabtalk_home(root: Path, tmp_path: Path):
    env = {**os.environ, "CRABTALK_HOME": str(root.parent)}  # root is <tmp>/sessions
    done = crab("list", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) == 3


# --- show -------------------------------------------------------------------------

TWELVE_TRANSCRIPT = [
    "user: I fly to Lisbon on Friday. Plan day one.",
    "assistant: Day one: Alfama in the morning, Belém after lunch.",
    "--- compacted; the context continues from: "
    "The user flies to Lisbon on Friday; day one is Alfama then Belém.",
    "user: Add a dinner spot, and ask the guide agent.",
    'assistant: Asking the guide. [tool call ask_agent(agent="guide", '
    'question="dinner near Belém") id=call_9]',
    "tool ask_agent id=call_9: Try a seafood place by the river.",
    "assistant guide: A seafood place by the river fits day one.",
    "assistant: [tool call now() id=call_10]",
    "tool now id=call_10: 2026-04-02T19:41:00Z",
]


def test_show_by_id_prints_header_and_every_line(root: Path):
    done = crab("--root", root, "show", "12")
    assert done.returncode == 0, done.stderr
    header, *lines = done.stdout.splitlines()
    assert lines == TWELVE_TRANSCRIPT
    for part in ("'12'", "'crab'", "'tg:12345'", "'Trip planning'", "8 messages", TWELVE):
        assert part in header


def test_show_by_path_with_tail(root: Path):
    done = crab("show", root / SEVEN, "--tail", "2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1:] == [
        "… 6 earlier messages hidden",
        'user: Thanks! Any "must see" place in Porto?\\tKeep it short.',
        "assistant: [reasoning: One landmark is enough.] "
        "Livraria Lello — the bookshop on Rua das Carmelitas.",
    ]


def test_show_jsonl_is_the_file_byte_for_byte(root: Path):
    done = subprocess.run(
        [sys.executable, "-m", "crab_langchain", "--root", str(root), "show", "3", "--jsonl"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert done.stdout == (root / THREE).read_bytes()


def test_show_jsonl_tail_keeps_the_header(root: Path):
    done = crab("--root", root, "show", "7", "--jsonl", "--tail", "1")
    lines = (root / SEVEN).read_text(encoding="utf-8").splitlines()
    assert done.stdout.splitlines() == [lines[0], lines[-1]]


def test_show_unknown_id_or_missing_file_is_an_error(root: Path, tmp_path: Path):
    assert_one_line_error(crab("--root", root, "show", "404"), "no such session", "'404'")
    missing = tmp_path / "gone.jsonl"
    assert_one_line_error(crab("--root", root, "show", missing), "no such file", str(missing))


def test_show_id_held_by_two_agents_needs_agent(root: Path):
    SessionStore(root, entry_points=False).get_session_history("7", agent="guide").add_messages(
        [HumanMessage("the guide's own session 7")]
    )
    assert_one_line_error(crab("--root", root, "show", "7"), "crab, guide", "--agent")
    done = crab("--root", root, "show", "7", "--agent", "guide")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1:] == ["user: the guide's own session 7"]


def test_show_malformed_file_names_file_and_line(root: Path):
    path = root / SEVEN
    lines = path.read_bytes().split(b"\n")
    lines[4] = b'{"role": 5}'
    path.write_bytes(b"\n".join(lines))
    assert_one_line_error(crab("show", path), f"{path}:5:")


def test_follow_prints_appended_messages_once_even_after_a_torn_tail(root: Path):
    path = root / SEVEN
    follower = Follower("show", path, "--follow")
    out, err = follower.out, follower.err
    try:
        list(lines_until(out, "Livraria Lello"))  # the initial transcript is out
        with open(path, "ab") as file:
            file.write(b'{"role":"user","content":"half')  # a writer mid-line
        list(lines_until(err, "incomplete last line"))  # the follower has seen it
        with open(path, "ab") as file:
            file.write(b' and whole"}\n')
        seen = list(lines_until(out, "half and whole"))
        history = CrabChatMessageHistory.from_file(path)
        history.add_messages([AIMessage("appended by another process")])
        seen += list(lines_until(out, "appended by another process"))
        rest, errors = follower.stop()
    finally:
        follower.kill()
    assert follower.returncode == 0
    assert "Traceback" not in errors
    assert seen + rest.splitlines() == [
        "user: half and whole",
        "assistant: appended by another process",
    ]


# --- export and import ------------------------------------------------------------


def test_export_langchain_to_stdout_is_the_stored_working_context(root: Path):
    done = crab("--root", root, "export", "12", "--format", "langchain")
    assert done.returncode == 0, done.stderr
    exported = json.loads(done.stdout)
    assert exported == messages_to_dict(stored(root / TWELVE))
    assert exported[0]["data"]["content"].startswith("The user flies to Lisbon")  # the summary


def test_export_openai(root: Path):
    done = crab("--root", root, "export", "7", "--format", "openai")
    assert done.returncode == 0, done.stderr
    exported = json.loads(done.stdout)
    assert exported == convert_to_openai_messages(stored(root / SEVEN))
    assert exported[2]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_export_then_import_round_trips(root: Path, tmp_path: Path):
    out = tmp_path / "seven.json"
    done = crab("--root", root, "export", "7", "--format", "langchain", "-o", out)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    done = crab("--root", root, "import", out, "--agent", "copies", "--id", "seven")
    assert done.returncode == 0, done.stderr
    history = SessionStore(root, entry_points=False).get_session_history("seven", agent="copies")
    assert done.stdout == f"imported 8 messages into {history.file_path}\n"
    assert history.stored_messages() == stored(root / SEVEN)


def test_export_bad_format_is_a_usage_error(root: Path):
    done = crab("--root", root, "export", "7", "--format", "xml")
    assert done.returncode == 2
    assert "Invalid value for '--format'" in done.stderr
    assert "Traceback" not in done.stderr


def test_export_never_overwrites_its_session_and_names_an_unwritable_output(
    root: Path, tmp_path: Path
):
    before = (root / SEVEN).read_bytes()
    done = crab("--root", root, "export", "7", "--format", "openai", "-o", root / SEVEN)
    assert_one_line_error(done, "is the session being exported")
    assert (root / SEVEN).read_bytes() == before
    nowhere = tmp_path / "no" / "such" / "dir.json"
    done = crab("--root", root, "export", "7", "--format", "openai", "-o", nowhere)
    assert_one_line_error(done, str(nowhere), "cannot write")


def test_import_a_file_chat_message_history_file(tmp_path: Path):
    community = pytest.importorskip("langchain_community.chat_message_histories")
    messages = [
        HumanMessage("weather?"),
        AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Porto"}, "id": "c"}]),
        ToolMessage("17 C", tool_call_id="c", name="get_weather"),
        AIMessage("17 °C in Porto."),
    ]
    source = tmp_path / "history.json"
    community.FileChatMessageHistory(str(source)).add_messages(messages)
    done = crab("--root", tmp_path / "s", "import", source, "--id", "porto")
    assert done.returncode == 0, done.stderr
    history = SessionStore(tmp_path / "s", entry_points=False).get_session_history("porto")
    assert history.stored_messages() == messages


def test_import_langchain_role_dicts(tmp_path: Path):
    items = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    source = tmp_path / "dicts.json"
    source.write_text(json.dumps(items), encoding="utf-8")
    done = crab("--root", tmp_path / "s", "import", source, "--id", "d", "--agent", "bot")
    assert done.returncode == 0, done.stderr
    history = SessionStore(tmp_path / "s", entry_points=False).get_session_history("d", "bot")
    assert history.stored_messages() == convert_to_messages(items)


def test_import_never_touches_an_existing_session(root: Path, tmp_path: Path):
    source = tmp_path / "one.json"
    source.write_text('[{"role": "user", "content": "overwrite?"}]', encoding="utf-8")
    before = (root / SEVEN).read_bytes()
    done = crab("--root", root, "import", source, "--agent", "crab", "--id", "7")
    assert_one_line_error(done, "already exists", SEVEN)
    assert (root / SEVEN).read_bytes() == before


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'[{"role": "user", "content": "hi"}', "not JSON"),
        (b'{"role": "user", "content": "hi"}', "expected a JSON list of messages, got an object"),
        (b"[]", "holds no messages"),
        (b'[{"role": "user", "content": "ok"}, "fine", {"role": "oops"}]', "item at index 2"),
        (b'[{"type": "human", "data": {"content": 5}}]', "item at index 0"),
        (b'["ok", {"role": "user", "content": "\\ud800"}]', "item at index 1: content"),
    ],
    ids=["truncated JSON", "not a list", "empty", "bad item", "bad dict item", "lone surrogate"],
)
def test_import_bad_input_names_the_file_and_creates_nothing(
    tmp_path: Path, content: bytes, reason: str
):
    source = tmp_path / "in.json"
    source.write_bytes(content)
    done = crab("--root", tmp_path / "s", "import", source, "--id", "x")
    assert_one_line_error(done, str(source), reason)
    assert not (tmp_path / "s").exists() or list((tmp_path / "s").glob("*.jsonl")) == []


def test_import_missing_file_is_an_error(tmp_path: Path):
    done = crab("--root", tmp_path / "s", "import", tmp_path / "nope.json", "--id", "x")
    assert_one_line_error(done, str(tmp_path / "nope.json"))


# --- verify and repair ------------------------------------------------------------


def broken_copy(root: Path) -> tuple[Path, bytes, bytes]:
    """SEVEN with line 3 not JSON, line 6 not a message, and a torn tail."""
    path = root / SEVEN
    lines = path.read_bytes().split(b"\n")
    lines[2] = b'{"role":"user","content":"cut'
    lines[5] = b"[1, 2]"
    whole = b"\n".join(lines)  # ends in "\n": the last element was empty
    torn = b'{"role":"assistant","content":"never fin'
    path.write_bytes(whole + torn)
    return path, whole, torn


def test_verify_every_fixture_is_ok(root: Path):
    done = crab("--root", root, "verify")
    assert done.returncode == 0, done.stdout
    assert done.stdout.splitlines() == [
        f"{root / name}: ok ({len((root / name).read_bytes().splitlines())} lines)"
        for name in sorted([SEVEN, TWELVE, THREE])
    ]


def test_verify_reports_every_problem_with_its_line(root: Path):
    path, _, torn = broken_copy(root)
    done = crab("--root", root, "verify")
    assert done.returncode == 1
    problems = [line for line in done.stdout.splitlines() if line.startswith(str(path))]
    assert [line.split(": ", 1)[0] for line in problems] == [f"{path}:3", f"{path}:6", f"{path}:10"]
    assert "not JSON" in problems[0]
    assert "expected a JSON object" in problems[1]
    assert f"incomplete last line ({len(torn)} bytes" in problems[2]
    assert f"{root / TWELVE}: ok (10 lines)" in done.stdout


def test_verify_bad_header_empty_file_and_missing_path(root: Path, tmp_path: Path):
    bad = root / "crab_9_bad.jsonl"
    bad.write_bytes(b'{"agent":"crab"}\n{"role":"user","content":"hi"}\n')
    empty = root / "crab_8_empty.jsonl"
    empty.write_bytes(b"")
    done = crab("verify", bad, empty, tmp_path / "missing.jsonl")
    assert done.returncode == 1
    out = done.stdout.splitlines()
    assert out[0].startswith(f"{bad}:1: header needs a string 'created_by'")
    assert out[1] == f"{empty}:1: empty file: no header line"
    assert out[2] == f"{tmp_path / 'missing.jsonl'}: No such file or directory"


def test_verify_file_reports_all_problems_and_the_torn_size(root: Path):
    path, _, torn = broken_copy(root)
    report = verify_file(path)
    assert not report.ok
    assert report.lines == 9
    assert report.torn_bytes == len(torn)
    assert [line for line, _ in report.problems] == [3, 6, 10]


def test_repair_moves_exactly_the_torn_bytes(root: Path):
    path = root / SEVEN
    whole = path.read_bytes()
    torn = b'{"role":"user","content":"cut off'
    path.write_bytes(whole + torn)
    done = crab("--root", root, "repair")
    assert done.returncode == 0, done.stderr
    side = root / (SEVEN + ".torn")
    assert f"{path}: moved {len(torn)} torn bytes to {side.name}" in done.stdout.splitlines()
    assert f"{root / TWELVE}: ok" in done.stdout.splitlines()
    assert path.read_bytes() == whole  # every complete line kept
    assert side.read_bytes().rstrip(b"\n") == torn
    again = crab("repair", path)
    assert again.stdout == f"{path}: ok\n"
    assert side.read_bytes().rstrip(b"\n") == torn


def test_repair_reports_problems_it_does_not_fix(root: Path):
    path, whole, torn = broken_copy(root)
    done = crab("repair", path)
    assert done.returncode == 1
    assert path.read_bytes() == whole
    assert (root / (SEVEN + ".torn")).read_bytes().rstrip(b"\n") == torn
    assert "2 other problems left" in done.stdout
    assert f"{path}:3: not JSON" in done.stdout


def test_repair_without_a_complete_header_is_an_error_and_changes_nothing(root: Path):
    path = root / "crab_5_torn.jsonl"
    path.write_bytes(b'{"agent":"crab","created_by":"u')
    done = crab("repair", path)
    assert done.returncode == 1
    assert "cannot repair: no complete header line" in done.stdout
    assert path.read_bytes() == b'{"agent":"crab","created_by":"u'


# --- demo -------------------------------------------------------------------------


def test_demo_prints_where_its_session_landed_and_what_it_holds(tmp_path: Path):
    done = crab("demo", "--root", tmp_path / "demo")
    assert done.returncode == 0, done.stderr
    (path,) = (tmp_path / "demo").glob("*.jsonl")
    assert f"session file: {path}" in done.stdout
    data = path.read_text(encoding="utf-8")
    assert "Recall" not in data  # injected for each run, never stored
    assert done.stdout.endswith(data)  # the JSONL, as it is
    assert "tool get_weather id=call_1: " in done.stdout  # the transcript
    assert message_lines(path) == 6


def test_demo_without_root_uses_a_new_temp_dir(tmp_path: Path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = crab("demo", env=env)
    assert done.returncode == 0, done.stderr
    (path,) = tmp_path.glob("crab-demo-*/*.jsonl")
    assert f"session file: {path}" in done.stdout
