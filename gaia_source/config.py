"""The one settings spec of a node connection, resolved by dlt once per source, transformer or search.

Every setting is one field of :class:`NodeSettings`. dlt fills it from, in order: the arguments a caller passes
(``gaia_source(base_url=…)``), environment variables (``SOURCES__GAIA_SOURCE__BASE_URL``), ``.dlt/secrets.toml`` and
``.dlt/config.toml`` (``[sources.gaia_source]``). A new setting is one line here.
"""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Any, Dict, List, Optional, get_type_hints

import httpx
import orjson
from dlt.common.configuration import configspec, resolve_configuration
from dlt.common.configuration.exceptions import ConfigurationException
from dlt.common.configuration.specs import BaseConfiguration
from dlt.common.configuration.utils import deserialize_value
from dlt.common.typing import TSecretStrValue

from .errors import GaiaConfigError
from .settings import (
    API_PREFIX,
    CONFIG_SECTIONS,
    DEFAULT_BREAKER_COOLDOWN,
    DEFAULT_BREAKER_FAILURES,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_RESPONSE_MB,
    DEFAULT_RETRY_BACKOFF,
    DEFAULT_RETRY_ROUNDS,
    DEFAULT_ROUND_COOLDOWN,
    DEFAULT_TIMEOUT,
    GAIA_DOMAIN,
    MAX_RETRY_WAIT,
    NODE_LOCATION,
)

_NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")


@configspec
class NodeSettings(BaseConfiguration):
    """How to reach the node(s) and how hard to try: one spec for the source, the transformers and ``search``."""

    node_id: Optional[Any] = None
    """A hosted node's id (``https://{node_id}.gaia.domains/v1``), a full host name, or a list of them."""
    base_url: Optional[Any] = None
    """The node URL with or without ``/v1`` (wins over ``node_id``); a list or comma-separated URLs for several."""
    api_key: Optional[TSecretStrValue] = None
    """Bearer key. Local nodes and AMD GAIA servers without ``GAIA_API_KEY`` need none."""
    timeout: float = DEFAULT_TIMEOUT
    """Seconds to wait for a response (a stream: between two chunks)."""
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    """Requests in flight to each node at once."""
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    """Sends per request; 429, 5xx, timeouts, connection errors and cut streams are retried, on another node if any."""
    retry_backoff: float = DEFAULT_RETRY_BACKOFF
    """Seconds before a retry on the same node (exponential with jitter after that)."""
    retry_max_wait: float = MAX_RETRY_WAIT
    """Cap in seconds on one wait between attempts, ``Retry-After`` included."""
    max_response_mb: float = DEFAULT_MAX_RESPONSE_MB
    """Response bodies larger than this are recorded as errors instead of read."""
    breaker_failures: int = DEFAULT_BREAKER_FAILURES
    """Consecutive transient failures after which a node is benched while other nodes can answer."""
    breaker_cooldown: float = DEFAULT_BREAKER_COOLDOWN
    """Seconds a benched node rests before it is tried again."""
    retry_rounds: int = DEFAULT_RETRY_ROUNDS
    """Extra rounds at the end of a run for requests that failed transiently (0: none)."""
    round_cooldown: float = DEFAULT_ROUND_COOLDOWN
    """Seconds to wait before each such round."""

    def on_resolved(self) -> None:
        """Coerce and check every value, so a bad setting is refused before any request, naming the setting."""
        hints = get_type_hints(type(self), include_extras=True)
        for name in _setting_names():
            value = getattr(self, name)
            if value is not None and name not in ("node_id", "base_url", "api_key"):
                setattr(self, name, _coerce(name, value, hints[name]))
        for name in ("timeout", "max_response_mb"):
            if getattr(self, name) <= 0:
                raise GaiaConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("max_concurrency", "max_attempts", "breaker_failures"):
            if getattr(self, name) < 1:
                raise GaiaConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("retry_backoff", "retry_max_wait", "breaker_cooldown", "retry_rounds", "round_cooldown"):
            if getattr(self, name) < 0:
                raise GaiaConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        self.urls()  # a missing or malformed node is a configuration error now, not at the first request

    def urls(self) -> List[str]:
        """Every node's ``…/v1`` URL: ``base_url`` (one or a list) wins over ``node_id`` (one or a list).

        Raises:
            GaiaConfigError: nothing configured, a malformed entry, or the same node listed twice.
        """
        return resolve_base_urls(self.node_id, self.base_url)


def _setting_names() -> List[str]:
    return [f.name for f in fields(NodeSettings) if not f.name.startswith("_")]


def _coerce(name: str, value: Any, hint: Any) -> Any:
    try:
        return deserialize_value(name, value, hint)
    except ConfigurationException:
        raise GaiaConfigError(f"setting {name} = {value!r} is not a valid {hint.__name__}") from None


def resolve_node_settings(**given: Any) -> NodeSettings:
    """Resolve :class:`NodeSettings` from the arguments given (they win) and dlt config.

    Args:
        given: Settings by name; ``None`` means "not given" (config or the default applies).

    Raises:
        GaiaConfigError: an unknown setting name, a value of the wrong type, or no node configured.
    """
    known = _setting_names()
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise GaiaConfigError(f"unknown node setting(s) {', '.join(unknown)}; the settings are: {', '.join(known)}")
    explicit: Dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    try:
        return resolve_configuration(NodeSettings(), sections=CONFIG_SECTIONS, explicit_value=explicit)
    except ConfigurationException as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, GaiaConfigError):
            raise cause from None
        raise GaiaConfigError(f"node settings could not be resolved: {exc}") from None


# --- node URLs --------------------------------------------------------------------------------------------------


def resolve_base_url(node_id: Optional[str] = None, base_url: Optional[str] = None) -> str:
    """One node's ``…/v1`` base URL, from ``base_url`` (wins) or ``node_id``.

    ``base_url`` may be given with or without ``/v1`` and with trailing slashes; ``node_id`` may be a bare id
    (``0xabc…`` → ``https://0xabc….gaia.domains/v1``) or a full host name.

    Raises:
        GaiaConfigError: neither is set, or the value is not a usable URL / node id.
    """
    if base_url and str(base_url).strip():
        raw = str(base_url).strip()
        if "://" not in raw:
            raise GaiaConfigError(f"base_url {raw!r} has no scheme; write it like http://localhost:8080/v1")
        try:
            url = httpx.URL(raw)
        except httpx.InvalidURL as exc:
            raise GaiaConfigError(f"base_url {raw!r} is not a valid URL: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise GaiaConfigError(f"base_url {raw!r} must be an http:// or https:// URL with a host")
        path = re.sub(r"/{2,}", "/", url.path).rstrip("/")
        if not path.endswith(API_PREFIX):
            path += API_PREFIX
        netloc = url.netloc.decode("ascii").rsplit("@", 1)[-1]  # never keep user:password in the node URL
        return f"{url.scheme}://{netloc}{path}"
    if node_id and str(node_id).strip():
        node = str(node_id).strip().rstrip("/")
        if "://" in node:
            return resolve_base_url(base_url=node)
        if "." in node:  # a full host name such as 0xabc.gaia.domains or llama8b.us.gaianet.network
            return resolve_base_url(base_url=f"https://{node}")
        if not _NODE_ID_RE.match(node):
            raise GaiaConfigError(f"node_id {node!r} is not a node id (letters, digits and '-', like 0x1234abcd…)")
        return f"https://{node}.{GAIA_DOMAIN}{API_PREFIX}"
    raise GaiaConfigError(
        f"No Gaia node configured. Set {NODE_LOCATION} "
        '(e.g. base_url = "http://localhost:8080/v1" for a local node or an AMD GAIA server), '
        "or try it without a node: python gaia_pipeline.py --demo"
    )


def _as_list(value: Any) -> List[str]:
    """A config value that may be one URL/id, a list, a JSON list, or comma-separated text."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    text = str(value).strip()
    if text.startswith("["):
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise GaiaConfigError(f"node list {text!r} is not a JSON list of URLs") from None
        return _as_list(parsed)
    return [part.strip() for part in re.split(r"[,\s]+", text) if part.strip()]


def resolve_base_urls(node_id: Any = None, base_url: Any = None) -> List[str]:
    """Every node's ``…/v1`` URL: ``base_url`` (one or a list) wins over ``node_id`` (one or a list).

    Raises:
        GaiaConfigError: nothing configured, a malformed entry, or the same node listed twice.
    """
    urls = [resolve_base_url(base_url=u) for u in _as_list(base_url)]
    if not urls:
        urls = [resolve_base_url(node_id=n) for n in _as_list(node_id)]
    if not urls:
        urls = [resolve_base_url(None, None)]  # raises the "No Gaia node configured" message
    duplicates = sorted({u for u in urls if urls.count(u) > 1})
    if duplicates:
        raise GaiaConfigError(f"node listed more than once: {', '.join(duplicates)}")
    return urls
