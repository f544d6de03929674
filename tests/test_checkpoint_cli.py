"""``crab-sessions`` on a checkpointer's sessions: real processes, a directory and real Redis."""

from __future__ import annotations

from pathlib import Path

from cli_helpers import crab, isolated  # noqa: F401 - the fixture
from langchain_core.messages import AIMessage, HumanMessage
from test_checkpoint import Thread, turn

from crab_langchain import SessionStore
from crab_langchain.checkpoint import CrabSaver
from crab_langchain.storage import open_storage


def test_list_verify_show_and_copy_take_the_side_log_as_part_of_its_session(
    tmp_path: Path, redis_url: str, redis_prefix: str
):
    root = tmp_path / "sessions"
    thread = Thread(CrabSaver(SessionStore(root, entry_points=False)))
    first = thread.put({"messages": turn(0), "count": 1})
    thread.put({"messages": [*turn(0), HumanMessage("and then?", id="x"), AIMessage("done")]})

    listed = crab("list", "--root", root)
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.strip().splitlines()) == 2  # the header row, one session
    assert "alice-1" in listed.stdout

    verified = crab("verify", "--root", root)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "1 files checked, 0 with problems" in verified.stderr

    shown = crab("show", "alice-1", "--root", root)
    assert shown.returncode == 0, shown.stderr
    assert "and then?" in shown.stdout

    copied = crab("copy", root, redis_url, "--prefix", redis_prefix)
    assert copied.returncode == 0, copied.stderr
    storage = open_storage(redis_url, prefix=redis_prefix)
    try:
        assert storage.names() == [next(root.glob("*.jsonl")).name]  # no side log listed
        on_redis = Thread(CrabSaver(SessionStore(backend=storage, entry_points=False)))
        assert on_redis.messages(first) == turn(0)
        assert on_redis.messages()[-1].content == "done"
    finally:
        storage.close()
