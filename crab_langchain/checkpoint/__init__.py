"""A LangGraph checkpointer on crabtalk sessions (the ``langgraph`` extra).

``CrabSaver(store)`` keeps each thread's conversation as the crabtalk session
whose id is the thread id, and the rest of its checkpoints in a side log
beside it::

    from langchain.agents import create_agent
    from crab_langchain import SessionStore
    from crab_langchain.checkpoint import CrabSaver

    agent = create_agent(model, tools, checkpointer=CrabSaver(SessionStore()))
"""

from crab_langchain.extras import needs_extra

try:
    import langgraph.checkpoint.base  # noqa: F401 - the extra this package needs
except ImportError as error:  # pragma: no cover - exercised in a subprocess without it
    raise needs_extra("crab_langchain.checkpoint", "langgraph") from error

from crab_langchain.checkpoint.moving import ThreadMoved, copy_threads
from crab_langchain.checkpoint.saver import MESSAGES, CrabSaver, MissingSideLogWarning

__all__ = ["MESSAGES", "CrabSaver", "MissingSideLogWarning", "ThreadMoved", "copy_threads"]
