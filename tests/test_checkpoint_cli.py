"""``crab-sessions`` on a checkpointer's sessions: real processes, a directory and real Redis."""

from __future__ import annotations

from pathlib import Path

from cli_helpers import crab, isolated  # noqa: F401 - the fixture
from langchain_core.messages import AIMessage, HumanMessage
from test_saver import Thread, turn

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


def test_delete_takes_the_side_log_along_and_refuses_a_pattern_matching_nothing(
    tmp_path: Path, redis_url: str, redis_prefix: str
):
    for root in (tmp_path / "sessions", redis_url):
        prefix = ["--prefix", redis_prefix] if root == redis_url else []
        store = SessionStore.from_url(
            root, entry_points=False, prefix=prefix[1] if prefix else None
        )
        for thread_id in ("tg-1", "tg-2", "web-1"):
            Thread(CrabSaver(store), thread_id).put({"messages": turn(0)})
        refused = crab("--root", root, *prefix, "delete", "tg-*", "nobody")
        assert refused.returncode == 1
        assert refused.stderr.strip().splitlines() == [
            "crab-sessions: error: no session matches 'nobody'; nothing deleted"
        ]
        assert len(store.list_sessions()) == 3
        deleted = crab("--root", root, *prefix, "delete", "tg-*")
        assert deleted.returncode == 0, deleted.stderr
        assert "deleted 2 sessions" in deleted.stderr
        assert [info.session_id for info in store.list_sessions()] == ["web-1"]
        assert sorted(store.storage.names()) == [store.find("web-1")]
        if root != redis_url:
            assert sorted(p.name for p in Path(root).iterdir() if "tg-" in p.name) == []
        store.close()


def test_sizes_in_list_include_the_side_log(tmp_path: Path):
    root = tmp_path / "sessions"
    store = SessionStore(root, entry_points=False)
    Thread(CrabSaver(store)).put({"messages": turn(0)})
    (info,) = store.list_sessions()
    files = sum(p.stat().st_size for p in root.glob("crab_*.jsonl*"))
    assert info.size == files > next(root.glob("*.jsonl")).stat().st_size
    assert store.latest_session().size == files  # type: ignore[union-attr]


def test_copy_force_replaces_a_differing_session_whole(tmp_path: Path):
    source, target = tmp_path / "a", tmp_path / "b"
    for root, text in ((source, "theirs"), (target, "ours")):
        Thread(CrabSaver(SessionStore(root, entry_points=False))).put(
            {"messages": [HumanMessage(text, id="q")]}
        )
    # One session of the same name on both sides: the target's made to share the source's name.
    (name,) = [p.name for p in source.glob("*.jsonl")]
    for path in target.glob("crab_*.jsonl*"):
        path.rename(target / path.name.replace(next(target.glob("crab_*.jsonl")).name, name))
    refused = crab("copy", source, target)
    assert refused.returncode == 1
    forced = crab("copy", source, target, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "replaced by" in forced.stdout
    for path in source.glob("crab_*.jsonl*"):
        assert (target / path.name).read_bytes() == path.read_bytes()


def test_every_cli_error_is_one_line(tmp_path: Path):
    (tmp_path / "notjsonl.txt").write_text("hello\n")
    checked = crab("verify", tmp_path / "notjsonl.txt")
    assert checked.returncode == 1
    assert "Traceback" not in checked.stderr + checked.stdout
    exported = crab("export", tmp_path / "notjsonl.txt")  # the default format: langchain
    assert exported.returncode == 1
    assert len(exported.stderr.strip().splitlines()) == 1
    assert "Missing option" not in exported.stderr


def test_export_has_a_default_format(tmp_path: Path):
    store = SessionStore(tmp_path, entry_points=False)
    store.get_session_history("s").add_messages([HumanMessage("hi")])
    exported = crab("--root", tmp_path, "export", "s")
    assert exported.returncode == 0, exported.stderr
    assert '"hi"' in exported.stdout


def test_verify_takes_a_side_log_with_snapshots_as_sound(tmp_path: Path):
    from side_logs import put_counter_steps

    from crab_langchain.checkpoint.sidelog import SNAPSHOT_PREFIX

    root = tmp_path / "sessions"
    put_counter_steps(CrabSaver(SessionStore(root, entry_points=False)), 150)
    (side,) = root.glob("*.checkpoints")
    assert any(line.startswith(SNAPSHOT_PREFIX) for line in side.read_bytes().splitlines())
    verified = crab("verify", "--root", root)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "1 files checked, 0 with problems" in verified.stderr


def test_copy_through_postgresql_and_redis_is_byte_identical_side_logs_included(
    tmp_path: Path, postgres_url: str, postgres_schema: str, redis_url: str, redis_prefix: str
):
    root = tmp_path / "sessions"
    thread = Thread(CrabSaver(SessionStore(root, entry_points=False)))
    thread.put({"messages": turn(0), "count": 1})
    thread.put({"messages": [*turn(0), HumanMessage("and then?", id="x"), AIMessage("done")]})
    files = logs_in(root)
    assert any(name.endswith(".checkpoints") for name in files)

    hops = [
        (root, postgres_url, ["--dst-prefix", postgres_schema]),
        (postgres_url, redis_url, ["--prefix", postgres_schema, "--dst-prefix", redis_prefix]),
        (redis_url, tmp_path / "back", ["--prefix", redis_prefix]),
    ]
    for source, target, options in hops:
        copied = crab("copy", source, target, *options)
        assert copied.returncode == 0, copied.stderr
    assert logs_in(tmp_path / "back") == files


def logs_in(root: Path) -> dict[str, bytes]:
    """The sessions and side logs of directory ``root`` (not its hidden lock files), by name."""
    return {p.name: p.read_bytes() for p in root.iterdir() if not p.name.startswith(".")}
