"""LLM verification of a statement: the prompt, the forced tool, reading verdicts, consensus.

Every model is asked the same question with one function tool,
``verify_statement(is_correct, reason)``, and ``tool_choice`` forcing it. A
model that answers with plain text instead counts as yes only when that text
is ``yes``; malformed tool arguments are a no with an explanation, never an
error of the request.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import ujson

from models.errors import ApiError
from models.verify import ModelRef, VerifyRequest
from utils.upstream import Cancel, ProviderRegistry, UpstreamClient
from utils.upstream.routing import header_safe

TOOL_NAME = "verify_statement"

VERIFY_SYSTEM_PROMPT = (
    "You are a careful fact checker. Decide whether the statement or answer under discussion in this "
    "conversation is correct. Report your decision by calling the verify_statement function: set "
    "is_correct to true if it is correct and to false otherwise, and give a short reason."
)

VERIFY_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": "Report whether the statement is correct, with a short reason.",
        "parameters": {
            "type": "object",
            "properties": {
                "is_correct": {"type": "boolean", "description": "true if the statement is correct, else false"},
                "reason": {"type": "string", "description": "a short explanation of the decision"},
            },
            "required": ["is_correct", "reason"],
        },
    },
}

TOOL_CHOICE: dict[str, Any] = {"type": "function", "function": {"name": TOOL_NAME}}

SYSTEM_ROLES = ("system", "developer")
_BOOLEAN_WORDS = {"true": True, "yes": True, "false": False, "no": False}


@dataclass(frozen=True)
class Verdict:
    """One model's answer: ``result`` is ``"yes"`` or ``"no"``; ``content`` says why."""

    result: str
    content: str

    @classmethod
    def of(cls, correct: bool, content: str) -> Verdict:
        return cls("yes" if correct else "no", content)


# -- the request ------------------------------------------------------------------------


def with_system_prompt(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with the verification system prompt first, unless they have their own."""
    if any(message.get("role") in SYSTEM_ROLES for message in messages):
        return list(messages)
    return [{"role": "system", "content": VERIFY_SYSTEM_PROMPT}, *messages]


def verify_payload(messages: list[dict[str, Any]], options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The chat body sent to every model (``model`` is set per model)."""
    return {
        **(options or {}),
        "messages": with_system_prompt(messages),
        "tools": [VERIFY_TOOL],
        "tool_choice": TOOL_CHOICE,
    }


# -- reading the answer ---------------------------------------------------------------------


def reply_message(completion: Any) -> dict[str, Any] | None:
    """The first choice's ``message`` of a chat completion, or None when it has none."""
    if not isinstance(completion, dict):
        return None
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    message = choices[0].get("message")
    return message if isinstance(message, dict) else None


def message_text(message: dict[str, Any]) -> str:
    """The text of a message: a string, or the text parts of a content array."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _as_boolean(value: Any) -> bool | None:
    """A JSON boolean, or the words true/false (yes/no) some models send as strings."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _BOOLEAN_WORDS.get(value.strip().lower())
    return None


def parse_tool_arguments(arguments: Any) -> Verdict:
    """The verdict in ``verify_statement`` arguments (a JSON string or an object)."""
    if isinstance(arguments, str):
        try:
            arguments = ujson.loads(arguments)
        except (ValueError, OverflowError):
            return Verdict("no", f"The model's {TOOL_NAME} arguments are not valid JSON")
    if not isinstance(arguments, dict):
        return Verdict("no", f"The model's {TOOL_NAME} arguments are not a JSON object")
    correct = _as_boolean(arguments.get("is_correct"))
    if correct is None:
        return Verdict("no", f"The model's {TOOL_NAME} arguments have no boolean 'is_correct'")
    reason = arguments.get("reason")
    if reason is None:
        reason = ""
    if not isinstance(reason, str):
        return Verdict("no", f"The model's {TOOL_NAME} arguments have a 'reason' that is not a string")
    return Verdict.of(correct, reason)


def parse_verdict(completion: Any) -> Verdict:
    """Read one model's verdict from its chat completion.

    The ``verify_statement`` tool call decides; without any tool call the reply
    counts as yes only when its trimmed, lowercased text is ``yes``.
    """
    message = reply_message(completion)
    if message is None:
        return Verdict("no", "The model's answer has no message")
    calls = message.get("tool_calls")
    if isinstance(calls, list) and calls:
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and function.get("name") == TOOL_NAME:
                return parse_tool_arguments(function.get("arguments"))
        return Verdict("no", f"The model called a tool other than {TOOL_NAME}")
    text = message_text(message).strip()
    if not text:
        return Verdict("no", f"The model answered with neither a {TOOL_NAME} call nor text")
    return Verdict.of(text.lower() == "yes", text)


def consensus(verdicts: list[Verdict], min_yes: int) -> tuple[str, int]:
    """The overall result and the number of yes verdicts."""
    yes = sum(1 for verdict in verdicts if verdict.result == "yes")
    return ("yes" if yes >= min_yes else "no"), yes


# -- calling the models -----------------------------------------------------------------------


async def complete_chat(
    upstream: UpstreamClient, registry: ProviderRegistry, ref: ModelRef, payload: dict[str, Any], cancel: Cancel | None
) -> Any:
    """One non-streaming chat call to ``ref`` (retries and timeouts as chat); the parsed JSON answer.

    Goes through the registry like a chat request, so provider-specific body
    additions (OpenRouter's ignored providers) apply here too, and a provider
    of another dialect (``anthropic``) is asked in its own and answers in chat.
    """
    if cancel is not None:
        cancel.check()  # a transfer begun after cancel() would not be aborted
    # the model as routed (after aliases and DEFAULT_PROVIDER), as chat names it: its usage, limits and price
    routed = ref.id if ref.custom is not None else header_safe(f"{ref.provider}/{ref.name}")
    attempt = registry.attempt(ref.chat_request(payload), routed)
    response = await upstream.complete(attempt, cancel)
    try:
        return ujson.loads(response.body)
    except (ValueError, OverflowError):
        raise ApiError(
            502, f"{attempt.target.provider} API answered with invalid JSON", code="upstream_invalid_json"
        ) from None


async def ask_model(
    upstream: UpstreamClient, registry: ProviderRegistry, ref: ModelRef, payload: dict[str, Any], cancel: Cancel | None
) -> Verdict:
    """One model's verdict; an upstream failure raises :class:`ApiError`."""
    return parse_verdict(await complete_chat(upstream, registry, ref, payload, cancel))


async def run_verify(
    upstream: UpstreamClient, registry: ProviderRegistry, request: VerifyRequest, cancel: Cancel | None = None
) -> dict[str, Any]:
    """Ask every model concurrently and build the response body.

    One model: its failure is the request's error (its status and message).
    Consensus: a failed model counts as no, with its error in ``content``.
    """
    payload = verify_payload(request.messages, request.options)
    if not request.consensus:
        verdict = await ask_model(upstream, registry, request.models[0], payload, cancel)
        return {"result": verdict.result, "content": verdict.content}
    answers = await asyncio.gather(
        *(ask_model(upstream, registry, ref, payload, cancel) for ref in request.models), return_exceptions=True
    )
    verdicts: list[Verdict] = []
    for answer in answers:
        if isinstance(answer, ApiError):
            verdicts.append(Verdict("no", f"error: {answer.message}"))
        elif isinstance(answer, BaseException):
            raise answer
        else:
            verdicts.append(answer)
    result, yes = consensus(verdicts, request.min_yes)
    return {
        "result": result,
        "yes_count": yes,
        "min_yes": request.min_yes,
        "results": [
            {"model": ref.id, "result": verdict.result, "content": verdict.content}
            for ref, verdict in zip(request.models, verdicts, strict=True)
        ],
    }
