"""A price table: tokens into US dollars, for providers that report no cost.

Given as ``prices=`` (a mapping, a ``PriceTable`` or a path), else the JSON file named by the
``M99_PRICES`` environment variable, else ``prices.json`` in the M99 data directory if there is one.
The file maps a model name, or an ``fnmatch`` glob of names, to US dollars per million tokens::

    {"gpt-4o-mini": {"input": 0.15, "output": 0.60},
     "claude-3-5-haiku*": {"input": 0.80, "output": 4.00}}

A model is looked up by its exact name (case-insensitive), then without a ``provider/`` prefix,
then by the longest glob that matches.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .parse import PolicyError

__all__ = ["ENV_VAR", "Price", "PriceTable", "resolve_prices"]

ENV_VAR = "M99_PRICES"
_MAX_BYTES = 1 << 20
_MAX_FOUND = 1024  # model names whose price is remembered
_UNKNOWN = object()


@dataclass(frozen=True)
class Price:
    input_per_million: float
    output_per_million: float


def _price(name: str, value: Any) -> Price:
    if isinstance(value, Price):
        return value
    if isinstance(value, Mapping):
        pair = (value.get("input"), value.get("output"))
    elif isinstance(value, list | tuple) and len(value) == 2:
        pair = (value[0], value[1])
    else:
        raise PolicyError(f'price of {name!r}: give {{"input": USD, "output": USD}} per million tokens')
    for amount in pair:
        if isinstance(amount, bool) or not isinstance(amount, int | float) or not math.isfinite(amount) or amount < 0:
            raise PolicyError(f"price of {name!r}: {amount!r} is not a number of US dollars >= 0")
    return Price(float(pair[0]), float(pair[1]))  # type: ignore[arg-type]


class PriceTable:
    def __init__(self, prices: Mapping[str, Any] | None = None) -> None:
        self._exact: dict[str, Price] = {}
        self._globs: list[tuple[str, Price]] = []
        for name, value in (prices or {}).items():
            if not isinstance(name, str) or not name.strip():
                raise PolicyError(f"price table: {name!r} is not a model name")
            price = _price(name, value)
            key = name.strip().lower()
            if any(c in key for c in "*?["):
                self._globs.append((key, price))
            else:
                self._exact[key] = price
        self._globs.sort(key=lambda item: -len(item[0]))
        self._found: dict[str, Price | None] = {}  # model name -> price, asked on every model call

    def __len__(self) -> int:
        return len(self._exact) + len(self._globs)

    @classmethod
    def load(cls, path: str | Path) -> PriceTable:
        path = Path(path).expanduser()
        try:
            with path.open("rb") as f:
                raw = f.read(_MAX_BYTES + 1)
        except OSError as exc:
            raise PolicyError(f"cannot read the price table {path}: {exc.strerror or exc}") from None
        if len(raw) > _MAX_BYTES:
            raise PolicyError(f"the price table {path} is larger than 1 MiB")
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise PolicyError(f"the price table {path} is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise PolicyError(f"the price table {path} must map model names to prices")
        return cls(data)

    def price(self, model: str | None) -> Price | None:
        if not model:
            return None
        found = self._found.get(model, _UNKNOWN)
        if found is not _UNKNOWN:
            return found  # type: ignore[return-value]
        price = self._lookup(model)
        if len(self._found) >= _MAX_FOUND:  # model names come from the agent: bounded
            self._found.clear()
        self._found[model] = price
        return price

    def _lookup(self, model: str) -> Price | None:
        name = model.strip().lower()
        for candidate in (name, name.rsplit("/", 1)[-1]):
            if candidate in self._exact:
                return self._exact[candidate]
        for pattern, price in self._globs:
            if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name.rsplit("/", 1)[-1], pattern):
                return price
        return None

    def cost(self, model: str | None, input_tokens: int, output_tokens: int) -> float | None:
        """What ``input_tokens`` and ``output_tokens`` of ``model`` cost in US dollars, None when it has
        no price.  Asked twice per model call: a remembered price is used in this one frame."""
        found: object = self._found.get(model, _UNKNOWN) if model else None
        price = self.price(model) if found is _UNKNOWN else found
        if not isinstance(price, Price):
            return None
        spent_in = input_tokens * price.input_per_million if input_tokens > 0 else 0.0
        return (spent_in + (output_tokens * price.output_per_million if output_tokens > 0 else 0.0)) / 1e6

    def worst_case(self, model: str | None, prompt_tokens: int, max_tokens: int) -> float | None:
        """The most a call can cost: its prompt at the input price, ``max_tokens`` at the output price."""
        return self.cost(model, prompt_tokens, max_tokens)


def resolve_prices(
    prices: PriceTable | Mapping[str, Any] | str | Path | None = None, *, data_dir: Path | None = None
) -> PriceTable | None:
    """The price table in effect: the argument, else ``$M99_PRICES``, else ``<data_dir>/prices.json``."""
    if isinstance(prices, PriceTable):
        return prices
    if isinstance(prices, Mapping):
        return PriceTable(prices)
    if prices is not None:
        return PriceTable.load(prices)
    env = os.environ.get(ENV_VAR)
    if env:
        return PriceTable.load(env)
    if data_dir is not None and (Path(data_dir) / "prices.json").is_file():
        return PriceTable.load(Path(data_dir) / "prices.json")
    return None
