"""Sealed messages: a conversation kept in the session, encrypted by the saver's serializer.

With an encrypting serializer (LangGraph's ``EncryptedSerializer``), a
message goes to the session as a *sealed line*: a message of the same role
with empty content (a tool result's call id a digest of it), whose
``additional_kwargs["crab_sealed"]`` holds the
serializer's encrypted encoding of the whole message. The session stays a
crabtalk session (a header, one line a message, each with its role), and
no text of it is readable without the key; the saver unseals what it reads.
"""

from __future__ import annotations

import base64
import hashlib

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langgraph.checkpoint.serde.base import SerializerProtocol

from crab_langchain.models import SessionFormatError

__all__ = ["SEALED_KEY", "Sealer"]

SEALED_KEY = "crab_sealed"
"""``additional_kwargs`` key of a sealed line: ``"<serializer type>:<base64>"``."""


class Sealer:
    """Seals messages with a serializer, and unseals them."""

    def __init__(self, serde: SerializerProtocol) -> None:
        self.serde = serde

    def seal(self, message: BaseMessage) -> BaseMessage:
        """The stand-in written for ``message``: its role, its id, its encrypted self."""
        kind, data = self.serde.dumps_typed(message)
        sealed = {SEALED_KEY: f"{kind}:{base64.b64encode(data).decode('ascii')}"}
        if isinstance(message, ToolMessage):  # its call's id may say something: a digest of it
            call = hashlib.blake2b(message.tool_call_id.encode(), digest_size=8).hexdigest()
            return ToolMessage("", tool_call_id=f"sealed-{call}", additional_kwargs=sealed)
        for role in (AIMessage, SystemMessage):
            if isinstance(message, role):
                return role("", id=message.id, additional_kwargs=sealed)
        return HumanMessage("", id=message.id, additional_kwargs=sealed)

    def unseal(self, message: BaseMessage) -> BaseMessage:
        """The message ``message`` stands in for (itself if it is not sealed).

        Raises:
            SessionFormatError: the sealed payload does not open with this serializer.
        """
        payload = message.additional_kwargs.get(SEALED_KEY)
        if not isinstance(payload, str):
            return message
        kind, _, data = payload.partition(":")
        try:
            opened = self.serde.loads_typed((kind, base64.b64decode(data)))
        except Exception as error:  # any cipher's or decoder's refusal: a wrong key, a bad line
            reason = f"a sealed message does not open with this serializer ({type(error).__name__})"
            raise SessionFormatError(reason) from None
        if not isinstance(opened, BaseMessage):
            raise SessionFormatError("a sealed message holds no message")
        return opened
