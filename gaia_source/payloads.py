"""Request bodies: what goes on the wire for each endpoint, and which cell of the ledger each request is.

What a request *is* — its cell, and so its id — is decided by :mod:`gaia_source.ledger` from the user's input and
settings; this module builds the bodies and attaches the cell (:func:`for_cell`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import GaiaConfigError
from .inputs import Message, TextInput, output_limit
from .ledger import Cell, canonical_json, content_hash, text_key
from .settings import CHAT_PATH, EMBEDDINGS_PATH, OUTPUT_LIMIT_FIELDS, RESPONSES_PATH, RETRIEVE_PATH


def request_id(endpoint: str, body: Mapping[str, Any]) -> str:
    """The deterministic id of a request that is no cell of the ledger (per-node metadata): endpoint and body."""
    return content_hash(endpoint, body)


__all__ = ["canonical_json", "content_hash"]  # re-exported: the ledger owns them

Shard = Tuple[int, int]


def parse_shard(spec: Optional[str]) -> Optional[Shard]:
    """``"i/n"`` → ``(i, n)``: this worker takes the inputs whose id falls in partition ``i`` of ``n``.

    Raises:
        GaiaConfigError: the text is not ``i/n`` with ``0 <= i < n``.
    """
    if spec is None or str(spec).strip() == "":
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(spec))
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise GaiaConfigError(f"shard must look like i/n with 0 <= i < n (e.g. 0/4 … 3/4), got {spec!r}")
    return int(match.group(1)), int(match.group(2))


def in_shard(key: str, shard: Optional[Shard]) -> bool:
    """Whether a hex id belongs to ``shard``: a deterministic partition, the same on every machine."""
    return shard is None or int(key[:15], 16) % shard[1] == shard[0]


def normalize_chat_params(params: Mapping[str, Any]) -> Dict[str, Any]:
    """Drop unset parameters and fix what nodes reject.

    ``stop`` must be a JSON array on Gaia nodes (a string is a 400 on rag-api-server, a 422 on gaia-nexus), so a
    single string becomes a one-element list.

    Raises:
        GaiaConfigError: a token cap that is not a positive integer, or given twice with different values.
    """
    out = {k: v for k, v in params.items() if v is not None}
    if isinstance(out.get("stop"), str):
        out["stop"] = [out["stop"]]
    output_limit(out)
    return out


def merge_chat_params(run: Mapping[str, Any], item: Mapping[str, Any]) -> Dict[str, Any]:
    """A prompt's parameters over the run's: a prompt's token cap (under either name) replaces the run's."""
    item = normalize_chat_params(item)
    if any(name in item for name in OUTPUT_LIMIT_FIELDS):
        run = {k: v for k, v in run.items() if k not in OUTPUT_LIMIT_FIELDS}
    return {**run, **item}


@dataclass(frozen=True)
class PreparedRequest:
    """One request ready to send: endpoint, body, id, and what the row needs to remember about it."""

    endpoint: str
    body: Dict[str, Any]
    custom_id: Optional[str] = None
    source: Optional[str] = None
    """Where the input came from (``file:line``, ``prompts[3]``): for error messages."""
    extra: Dict[str, Any] = field(default_factory=dict)
    """Caller data carried into rows (e.g. text ids and metadata of an embeddings batch)."""
    node: Optional[str] = None
    """Send every attempt to this node (per-node metadata such as /v1/info); None: the best node of the pool."""
    wire_body: Optional[Dict[str, Any]] = None
    """What goes on the wire when it differs from ``body`` (fields every server generation needs); ``body`` is what the
    user asked for, and defines the id."""
    cell: Optional[Cell] = None
    """Which cell of the ledger this request is (None: per-node metadata, keyed by endpoint and body)."""

    @property
    def request_id(self) -> str:
        """What "is it done?" and "is it failing?" are asked on: the cell's key (or endpoint and body)."""
        return self.cell.key if self.cell is not None else request_id(self.endpoint, self.body)

    @property
    def cell_id(self) -> Optional[str]:
        """The cell's id (the same for every node that answers it), or None."""
        return self.cell.cell_id if self.cell is not None else None

    @property
    def prompt_id(self) -> str:
        """The id of the prompt as asked (endpoint, and the body without its model and sample seed): the same for
        every node, model, sample and configuration, so answers to one prompt join on it."""
        return request_id(self.endpoint, {k: v for k, v in (self.extra.get("asked") or self.body).items()
                                          if k != "model"})

    @property
    def sample_index(self) -> int:
        """Which of a prompt's samples this is (0 when sent once)."""
        return self.cell.sample if self.cell is not None else 0

    @property
    def sent_body(self) -> Dict[str, Any]:
        """The JSON body sent to the node."""
        return self.body if self.wire_body is None else self.wire_body


def with_output_limit(body: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """``body`` with its token cap under both names, so every server generation honours it (None: no cap set)."""
    limit = output_limit(body)
    if limit is None or all(body.get(name) == limit for name in OUTPUT_LIMIT_FIELDS):
        return None
    return {**body, **{name: limit for name in OUTPUT_LIMIT_FIELDS}}


def chat_request(
    messages: Sequence[Message],
    model: Optional[str],
    params: Mapping[str, Any],
    stream: bool,
    custom_id: Optional[str] = None,
    source: Optional[str] = None,
) -> PreparedRequest:
    """Build a POST /v1/chat/completions request.

    A streaming request asks for usage explicitly (``stream_options.include_usage``): Gaia nodes send it by default,
    other OpenAI-compatible servers only when asked. A token cap goes out under both of its names (see
    :data:`OUTPUT_LIMIT_FIELDS`); the request id is computed from the body as the user gave it.
    """
    body: Dict[str, Any] = {"messages": list(messages)}
    if model:
        body["model"] = model
    body.update(normalize_chat_params(params))
    body.pop("stream", None)
    if stream:
        body["stream"] = True
        body.setdefault("stream_options", {"include_usage": True})
    return PreparedRequest(CHAT_PATH, body, custom_id=custom_id, source=source, wire_body=with_output_limit(body))


def for_cell(
    request: PreparedRequest,
    resource: str,
    model: Optional[str] = None,
    node: Optional[str] = None,
    sample: int = 0,
    seed: Optional[int] = None,
) -> PreparedRequest:
    """The request as one cell of the ledger: a prompt (or query) × target × sample.

    Args:
        request: The input's request (its body is what the user asked, with the model to send).
        resource: The resource it is a cell of.
        model: The model the user named (None: the body's model was discovered, and is not identity).
        node: Pin it to this node (comparing nodes).
        sample: Its sample index.
        seed: The seed sample ``sample`` is sent with (the run's seed + ``sample``); the body and the row's
            ``params`` say it, while the cell keeps the seed the user asked.
    """
    asked = {k: v for k, v in request.body.items() if k not in ("model", "stream", "stream_options")}
    identity: Dict[str, Any] = {"body": asked, "custom_id": request.custom_id}
    body = request.body if seed is None else {**request.body, "seed": seed}
    extra = request.extra if seed is None else {**request.extra, "asked": request.body}
    wire = request.wire_body if seed is None else (with_output_limit(body) if request.endpoint == CHAT_PATH else None)
    return replace(request, body=body, extra=extra, wire_body=wire, node=node,
                   cell=Cell(resource, identity, model, sample, node))


def responses_request(
    messages: Sequence[Message],
    model: Optional[str],
    params: Mapping[str, Any],
    custom_id: Optional[str] = None,
    source: Optional[str] = None,
) -> PreparedRequest:
    """Build a POST /v1/responses request from a prompt's messages.

    System and developer messages become ``instructions``; a single user message is sent as the ``input`` string, a
    conversation as a list of ``{role, content}`` items. A token cap (either name) is sent as ``max_output_tokens``.
    """
    instructions = "\n\n".join(str(m["content"]) for m in messages
                                if m.get("role") in ("system", "developer") and isinstance(m.get("content"), str))
    turns = [dict(m) for m in messages if m.get("role") not in ("system", "developer")]
    single = len(turns) == 1 and turns[0].get("role") == "user" and isinstance(turns[0].get("content"), str)
    body: Dict[str, Any] = {"input": turns[0]["content"] if single else turns}
    if model:
        body["model"] = model
    if instructions:
        body["instructions"] = instructions
    params = normalize_chat_params(params)
    limit = output_limit(params)
    body.update({k: v for k, v in params.items() if k not in OUTPUT_LIMIT_FIELDS})
    if limit is not None:
        body["max_output_tokens"] = limit
    return PreparedRequest(RESPONSES_PATH, body, custom_id=custom_id, source=source)


def amd_gaia_refusal(messages: Sequence[Message]) -> Optional[str]:
    """Why an AMD GAIA server would refuse these messages (it answers only a final ``user`` message, and takes text
    content parts only), or None."""
    role = messages[-1].get("role") if messages else None
    if role != "user":
        return f"its last message is a {role!r} message; AMD GAIA answers only when the last message is a user message"
    for i, message in enumerate(messages):
        content = message.get("content")
        for part in content if isinstance(content, list) else []:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind != "text":
                return f"messages[{i}] has a {kind!r} content part; AMD GAIA takes text parts only"
    return None


def embeddings_request(
    texts: Sequence[str], model: Optional[str], extra: Optional[Dict[str, Any]] = None,
    custom_id: Optional[str] = None, source: Optional[str] = None,
) -> PreparedRequest:
    """Build a POST /v1/embeddings request for a batch of texts."""
    body: Dict[str, Any] = {"input": list(texts)}
    if model:
        body["model"] = model
    return PreparedRequest(EMBEDDINGS_PATH, body, custom_id=custom_id, source=source, extra=extra or {})


def retrieve_request(query: str, custom_id: Optional[str] = None, source: Optional[str] = None) -> PreparedRequest:
    """Build a POST /v1/retrieve request: a chat-shaped body whose last user message is the query."""
    body = {"messages": [{"role": "user", "content": query}]}
    return PreparedRequest(RETRIEVE_PATH, body, custom_id=custom_id, source=source, extra={"query": query})


embedding_id = text_key
"""The id of one embedded text: its cell (see :func:`gaia_source.ledger.text_key`)."""


def cells_of(request: PreparedRequest) -> List[Tuple[str, Optional[TextInput]]]:
    """The ledger cells one request carries: one per text of an embeddings batch (with the text), else the request's
    own (with None).

    A text's cell has the model the user named, not a discovered one: a text that failed while the node could not
    say its model, and loads later under the model it then names, is the same cell (its failure is cleared). Its
    row's ``embedding_id`` has the model its vector comes from, so vectors of two models never mix.
    """
    inputs: Optional[List[TextInput]] = request.extra.get("inputs")
    if inputs is None:
        return [(request.request_id, None)]
    model = request.extra.get("named_model")
    ids_model, ids = request.extra.get("ids") or (None, None)
    if ids is not None and ids_model == model:  # the user named the model: a text's cell is its embedding_id
        return list(zip(ids, inputs, strict=True))
    return [(text_key(model, t.text, *t.position), t) for t in inputs]


def chat_params_of(body: Mapping[str, Any]) -> Dict[str, Any]:
    """The parameters of a chat body: everything except messages, model and the streaming switches."""
    return {k: v for k, v in body.items() if k not in ("messages", "model", "stream", "stream_options")}
