"""Cost in money: the price of each call, from PRICES_FILE and the usage the node counted.

A call's cost is ((prompt - cache_read - cache_write) x input + cache_read x cache_read price + cache_write x
cache_write price + completion x output) / 1e6, the prices in USD per million tokens. The price is looked up by
the model as routed (``PROVIDER/MODEL`` after aliases: an attempt's ``model_id``), else by ``PROVIDER/*``. A
per-request custom provider (``model_provider``) is never priced: it spends the caller's own key at an endpoint
the operator does not know.

A model without a price is *unpriced*: its calls have no cost (never 0) and are counted as such. While a dollar
budget (``usd_per_day``, its provider's or the node-wide ``"*"``) applies, a call to an unpriced model is
refused before it is sent (:func:`unpriced_model`).

Without PRICES_FILE nothing here is made: :class:`Prices` exists only when the file is set.
"""

from __future__ import annotations

from collections.abc import Mapping

from config import Price
from models.errors import ApiError
from models.usage import Usage

MAX_REMEMBERED = 4096  # model ids looked up (the client names them: the memo is bounded)


class Prices:
    """PRICES_FILE's table, with each routed model's price looked up once."""

    __slots__ = ("table", "_seen")

    def __init__(self, table: Mapping[str, Price]) -> None:
        self.table = dict(table)
        self._seen: dict[str, Price | None] = {}

    def of(self, provider: str, model_id: str) -> Price | None:
        """The price of ``model_id`` (``PROVIDER/MODEL`` as routed) at ``provider``; None: unpriced."""
        if provider == "custom":
            return None
        seen = self._seen
        if model_id in seen:
            return seen[model_id]
        price = self.table.get(model_id)
        if price is None:
            price = self.table.get(provider + "/*")
        if len(seen) >= MAX_REMEMBERED:
            seen.clear()
        seen[model_id] = price
        return price


def cost_of(price: Price, usage: Usage) -> float:
    """USD of one answer's ``usage`` at ``price`` (cache reads and writes are parts of the prompt)."""
    fresh = max(0, usage.prompt - usage.cache_read - usage.cache_write)
    return (
        fresh * price.input + usage.cache_read * price.cache_read + usage.cache_write * price.cache_write
        + usage.completion * price.output
    ) / 1e6


def usd_text(amount: float) -> str:
    """An amount as the header and the access line write it: plain decimal, to 1e-10 USD, no trailing zeros."""
    text = f"{amount:.10f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def unpriced_model(model_id: str, whose: str) -> ApiError:
    """The 400 of a call to a model with no price while a dollar budget applies (``whose``: the budget's owner)."""
    return ApiError(
        400,
        f"{model_id[:200]} has no price in PRICES_FILE, and {whose} has a dollar budget (usd_per_day): add the model,"
        " or its provider's PROVIDER/* entry, to PRICES_FILE",
        param="model", code="unpriced_model",
    )
