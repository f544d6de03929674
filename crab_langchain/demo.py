"""A short offline demo: a chain whose history lands in a crabtalk JSONL file.

Run ``python -m crab_langchain.demo [--root DIR]``. It needs no network and
no API key: langchain_core's fake chat model stands in for an LLM.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, SystemMessage, ToolMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables.history import RunnableWithMessageHistory

from crab_langchain import Session, SessionStore, hookimpl


class RecallPlugin:
    """Injects a 'memory recall' message before each run; it is never written."""

    @hookimpl
    def crab_inject_messages(self, session: Session) -> list[BaseMessage]:
        return [SystemMessage(f"Recall: {session.agent} helps with trips to Lisbon.")]


def _model() -> GenericFakeChatModel:
    replies = [
        AIMessage(
            "",
            tool_calls=[{"name": "get_weather", "args": {"city": "Lisbon"}, "id": "call_1"}],
        ),
        AIMessage("Lisbon is 21 °C and clear: a good day for Alfama."),
        AIMessage("Try Time Out Market by the river."),
    ]
    return GenericFakeChatModel(messages=iter(replies))


def run(root: Path) -> Path:
    """Run three turns against a store in ``root``; return the session file."""
    store = SessionStore(root, plugins=[RecallPlugin()], entry_points=False)
    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "You are Crab, a concise travel assistant."),
            MessagesPlaceholder("history"),
            MessagesPlaceholder("input"),
        ]
    )
    with warnings.catch_warnings():
        # langchain-core 1.3.3+ marks RunnableWithMessageHistory deprecated; see the README.
        warnings.simplefilter("ignore", DeprecationWarning)
        chain = RunnableWithMessageHistory(
            prompt | _model(),
            store.get_session_history,
            input_messages_key="input",
            history_messages_key="history",
        )
    config = {"configurable": {"session_id": "demo"}}
    turns: Sequence[list[BaseMessage]] = (
        [("human", "What's the weather in Lisbon?")],  # type: ignore[list-item]
        [ToolMessage('{"temp":21,"sky":"clear"}', tool_call_id="call_1", name="get_weather")],
        [("human", "And where should I eat?")],  # type: ignore[list-item]
    )
    for turn in turns:
        reply = chain.invoke({"input": turn}, config)  # type: ignore[arg-type]
        print(f"assistant> {reply.content or reply.tool_calls}")
    path = store.get_session_history("demo").file_path
    assert path is not None
    return path


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="sessions directory (default: a new temp dir)")
    args = parser.parse_args(argv)
    root = args.root or Path(tempfile.mkdtemp(prefix="crab-demo-"))
    path = run(root)
    history = SessionStore(root, entry_points=False).get_session_history("demo")
    stored = len(history.stored_messages())
    print(f"\nsession file: {path}  ({stored} messages; the recall was never stored)\n")
    print(path.read_text(encoding="utf-8"), end="")


if __name__ == "__main__":
    main()
