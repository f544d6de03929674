"""A LangGraph checkpointer on crabtalk sessions (the ``langgraph`` extra).

``CrabSaver(store)`` keeps each thread's conversation as the crabtalk session
whose id is the thread id, and the rest of its checkpoints in a side log
beside it::

    from langchain.agents import create_agent
    from crab_langchain import SessionStore
    from crab_langchain.checkpoint import CrabSaver

    agent = create_agent(model, tools, checkpointer=CrabSaver(SessionStore()))
"""

from crab_langchain.checkpoint.saver import MESSAGES, CrabSaver

__all__ = ["MESSAGES", "CrabSaver"]
