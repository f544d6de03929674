"""Hardening on Redis and around URLs: no secret in any message, one bad session alone.

Against the real servers of conftest.py; the URL checks that need no server run without one.
"""

from __future__ import annotations

import re
import subprocess
import sys
import traceback
import warnings

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from crab_langchain import SessionFormatError, SessionStore
from crab_langchain.storage import open_storage, public_url

SECRET = "TOP?SE#CRET"
SECRET_PIECES = ("TOP", "SE#C", "CRET", "12/TOP")


def everything_shown(error: BaseException) -> str:
    """All a user could see of ``error``: text and repr, with every cause and context."""
    shown: list[str] = []
    seen: BaseException | None = error
    while seen is not None:
        shown += [str(seen), repr(seen), *traceback.format_exception_only(type(seen), seen)]
        seen = seen.__cause__ or seen.__context__
    return "".join(shown)


def assert_no_secret(text: str) -> None:
    for piece in SECRET_PIECES:
        assert piece not in text, f"{piece!r} shown in: {text}"


# --- 4. no secret in an error -------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:12/TOP?SE#CRET@host/0", "redis://:***@host/0"),
        ("redis://user:12/TOP?SE#CRET@host:6380/2", "redis://user:***@host:6380/2"),
        ("rediss://12/TOP?SE#CRET@host/0", "rediss://***@host/0"),
        ("redis+sentinel://:12/TOP?SE#CRET@host/0", "redis+sentinel://:***@host/0"),
        ("unix:///run/redis.sock?password=12/TOP?SE&db=1", "unix:///run/redis.sock?password=***"),
        ("redis://host/0#12/TOP?SE#CRET", "redis://host/0"),
    ],
)
def test_public_url_never_shows_a_password(url, shown):
    assert public_url(url).startswith(shown)
    assert_no_secret(public_url(url))


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("redis+sentinel://:12/TOP?SE#CRET@host:26379/mymaster", "redis+sentinel"),
        ("valkey://:12/TOP?SE#CRET@host/0", "valkey"),
        ("reddis://:12/TOP?SE#CRET@host/0", "reddis"),
        ("http://user:12/TOP?SE#CRET@host/", "http"),
    ],
)
def test_an_unsupported_scheme_is_named_and_the_password_is_not(url, scheme):
    expected = re.escape(f"unsupported URL scheme '{scheme}'")
    with pytest.raises(ValueError, match=expected) as caught:
        SessionStore.from_url(url)
    assert_no_secret(everything_shown(caught.value))
    with pytest.raises(ValueError, match=expected) as caught:
        open_storage(url, prefix="p")  # prefix= with a URL that is not Redis
    assert_no_secret(everything_shown(caught.value))


def test_reserved_characters_in_a_password_are_refused_without_showing_it():
    with pytest.raises(ValueError, match="percent-encode") as caught:
        SessionStore.from_url("redis://:12/TOP?SE#CRET@127.0.0.1:1/0")
    shown = everything_shown(caught.value)
    assert_no_secret(shown)
    assert "redis://:***@127.0.0.1:1/0" in shown


def test_an_unreachable_server_is_named_without_its_password():
    url = "redis://user:12%2FTOP%3FSE%23CRET@127.0.0.1:1/0"
    with pytest.raises(ConnectionError) as caught:
        SessionStore.from_url(url, socket_connect_timeout=1)
    shown = everything_shown(caught.value)
    assert "redis://user:***@127.0.0.1:1/0" in shown
    assert_no_secret(shown)
    assert "12%2FTOP" not in shown


@pytest.fixture
def acl_user(redis_server, redis_prefix):
    """A user on the test server whose password holds every reserved character."""
    user, password = f"{redis_prefix}-user", "12/TOP?SE#CRET@:x"
    with redis_server.client() as admin:
        admin.acl_setuser(
            user, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all"]
        )
        yield user, password
        admin.acl_deluser(user)


def test_a_working_password_url_never_shows_in_repr_or_listing(
    redis_server, redis_prefix, acl_user
):
    from urllib.parse import quote

    user, password = acl_user
    url = f"redis://{user}:{quote(password, safe='')}@127.0.0.1:{redis_server.port}/0"
    store = SessionStore.from_url(url, prefix=redis_prefix)
    history = store.get_session_history("s")
    history.add_messages([HumanMessage("hi")])
    shown = " ".join(
        [
            repr(store),
            repr(store.storage),
            store.storage.describe(),
            str(history.location),
            repr(history),
            store._repr_html_(),
        ]
    )
    assert_no_secret(shown)
    assert quote(password, safe="") not in shown
    bad = url.replace(quote(password, safe=""), "wrong%2FTOP%3F")
    with pytest.raises(ConnectionError) as caught:
        SessionStore.from_url(bad)
    assert "TOP" not in everything_shown(caught.value)
    store.storage.close()


@pytest.mark.parametrize(
    "root",
    [
        "redis://:12/TOP?SE#CRET@127.0.0.1:1/0",
        "valkey://:12/TOP?SE#CRET@host/0",
        "redis+sentinel://:12/TOP?SE#CRET@host/0",
        "redis://user:12%2FTOP%3FSE%23CRET@127.0.0.1:1/0",
    ],
)
def test_the_command_line_never_prints_a_password_given_to_root(root):
    done = subprocess.run(
        [sys.executable, "-m", "crab_langchain", "list", "--root", root],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert_no_secret(done.stdout + done.stderr)
    assert "12%2FTOP" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1  # one line, no traceback
    if root.startswith(("valkey", "redis+")):
        assert "unsupported URL scheme" in done.stderr


# --- 7. one bad session never breaks the others (Redis) -------------------------------------


@pytest.fixture(params=["redis", "redis-cluster"])
def store(request, redis_prefix):
    url = request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")
    made = SessionStore.from_url(url, prefix=redis_prefix, entry_points=False)
    yield made
    made.storage.close()


def session_keys(store: SessionStore, session_id: str) -> list[str]:
    name = store.find(session_id)
    return store.storage._keys.session(name)


def raw_client(store: SessionStore):
    return store.storage.client


@pytest.mark.parametrize("key", [0, 1, 2], ids=["lines", "meta", "writes"])
def test_a_session_key_of_the_wrong_type_affects_that_session_alone(store, key):
    for session_id in ("good-1", "bad", "good-2"):
        store.get_session_history(session_id).add_messages([HumanMessage(session_id)])
    keys = session_keys(store, "bad")
    client = raw_client(store)
    client.delete(keys[key])
    client.set(keys[key], "someone else's value")
    bad = store.get_session_history("bad")
    lengths = client.llen(keys[0]) if key != 0 else None
    with pytest.raises(SessionFormatError) as caught:
        bad.add_messages([HumanMessage("one"), AIMessage("two")])
    message = str(caught.value)
    assert "bad" in message or keys[0] in message
    assert "127.0.0.1" in message
    if key != 0:
        assert client.llen(keys[0]) == lengths  # not half applied
        with pytest.raises(SessionFormatError):  # and not applied by a retry either
            bad.add_messages([HumanMessage("one"), AIMessage("two")])
        assert client.llen(keys[0]) == lengths
    with warnings.catch_warnings(record=True) as caught_warnings:
        warnings.simplefilter("always")
        listed = {info.session_id for info in store.list_sessions()}
    assert {"good-1", "good-2"} <= listed
    if key != 2:  # the header or its size is read for listing: that one is skipped, named
        assert key == 1 or "bad" not in listed
    assert [str(m.content) for m in store.get_session_history("good-2").messages] == ["good-2"]
    assert store.delete_session("bad") is True
    assert store.find("bad") is None
    assert {info.session_id for info in store.list_sessions()} == {"good-1", "good-2"}
    del caught_warnings


def test_a_wrong_type_lines_key_is_skipped_in_listing_with_a_warning(store):
    store.get_session_history("good").add_messages([HumanMessage("good")])
    store.get_session_history("bad").add_messages([HumanMessage("bad")])
    keys = session_keys(store, "bad")
    client = raw_client(store)
    client.delete(keys[0])
    client.set(keys[0], "x")
    with pytest.warns(UserWarning, match="holds a value of another type, not a list"):
        listed = store.list_sessions()
    assert [info.session_id for info in listed] == ["good"]
    latest = store.latest_session()
    assert latest is not None
    assert latest.session_id == "good"
