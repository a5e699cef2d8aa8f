"""The node's one translator between its two dialects, OpenAI chat and Anthropic's Messages API.

* ``chat_to_messages``: a chat client's request for a Messages provider (``anthropic``), and the
  provider's answer, JSON or SSE stream, back to chat.

A later module adds the other direction (a Messages client to a chat provider) beside it. Nothing
here knows the handlers: requests come in as validated bodies, answers as the upstream's bytes.
"""

from __future__ import annotations

from utils.translate.chat_to_messages import ChatStream, chat_completion, check_supported, messages_body

__all__ = ["ChatStream", "chat_completion", "check_supported", "messages_body"]
