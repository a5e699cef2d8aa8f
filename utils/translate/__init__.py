"""The node's one translator between its two dialects, OpenAI chat and Anthropic's Messages API.

* ``chat_to_messages``: a chat client's request for a Messages provider (``anthropic``), and the
  provider's answer, JSON or SSE stream, back to chat.
* ``messages_to_chat``: a Messages client's request (Claude Code, the ``anthropic`` SDKs) for an
  OpenAI-chat provider, and the provider's answer, JSON or SSE stream, back to Messages.

Nothing here knows the handlers: requests come in as validated bodies, answers as the upstream's bytes.
"""

from __future__ import annotations

from utils.translate.chat_to_messages import ChatStream, chat_completion, check_supported, messages_body
from utils.translate.messages_to_chat import MessagesStream, chat_body, count_tokens_estimate, error_event, messages_answer

__all__ = [
    "ChatStream",
    "MessagesStream",
    "chat_body",
    "chat_completion",
    "check_supported",
    "count_tokens_estimate",
    "error_event",
    "messages_answer",
    "messages_body",
]
