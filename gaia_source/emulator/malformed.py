"""The corpora of bad answers: ``[[malformed:NAME]]`` in a prompt, text or query makes a node answer with case NAME.

``MALFORMED`` holds whole responses, ``MALFORMED_STREAMS`` SSE bodies (sent when the request streams); ``huge``
and the ``echo-auth*`` cases are built per request (:func:`huge_body`, :func:`echo_auth_body`,
:func:`echo_auth_answer`). Every flavour answers them alike.
"""

from __future__ import annotations

import re
from typing import Any

import orjson


def _j(obj: Any) -> bytes:
    return orjson.dumps(obj)


_OK_MESSAGE = {"role": "assistant", "content": "fine"}
MALFORMED: dict[str, tuple[int, str | None, bytes]] = {
    "not-json": (200, "application/json", b"this is not json"),
    "html-200": (200, "text/html", b"<html><head><title>Maintenance</title></head><body>Back soon</body></html>"),
    "empty-body": (200, "application/json", b""),
    "json-array": (200, "application/json", b"[1, 2, 3]"),
    "json-string": (200, "application/json", b'"hello"'),
    "json-null": (200, "application/json", b"null"),
    "truncated-json": (200, "application/json", b'{"choices": [{"message": {"content": "Par'),
    "nan-number": (200, "application/json", b'{"choices": [], "usage": {"prompt_tokens": NaN}}'),
    "invalid-utf8": (200, "application/json", b'{"choices": [{"message": {"content": "\xff\xfe caf\xe9"}}]}'),
    "deep-nesting": (200, "application/json", b"[" * 5000 + b"]" * 5000),
    "choices-null": (200, "application/json", _j({"id": "x", "model": "m", "choices": None})),
    "choices-empty": (200, "application/json", _j({"id": "x", "model": "m", "choices": []})),
    "choices-object": (200, "application/json", _j({"choices": {"0": {"message": _OK_MESSAGE}}})),
    "choice-string": (200, "application/json", _j({"choices": ["fine"]})),
    "message-missing": (200, "application/json", _j({"choices": [{"index": 0, "finish_reason": "stop"}]})),
    "message-null": (200, "application/json", _j({"choices": [{"index": 0, "message": None}]})),
    "content-number": (200, "application/json", _j({"choices": [{"message": {"role": "assistant", "content": 42}}]})),
    "content-object": (200, "application/json", _j({"choices": [{"message": {"content": {"text": "x"}}}]})),
    "usage-strings": (200, "application/json",
                      _j({"choices": [{"message": _OK_MESSAGE}], "usage": {"prompt_tokens": "many"}})),
    "usage-list": (200, "application/json", _j({"choices": [{"message": _OK_MESSAGE}], "usage": [1, 2]})),
    "model-number": (200, "application/json", _j({"model": 7, "choices": [{"message": _OK_MESSAGE}]})),
    "id-object": (200, "application/json", _j({"id": {"v": 1}, "choices": [{"message": _OK_MESSAGE}]})),
    "created-string": (200, "application/json", _j({"created": "yesterday", "choices": [{"message": _OK_MESSAGE}]})),
    "finish-number": (200, "application/json", _j({"choices": [{"message": _OK_MESSAGE, "finish_reason": 1}]})),
    "error-200": (200, "application/json", _j({"error": {"message": "model overloaded", "type": "server_error"}})),
    "emb-data-null": (200, "application/json", _j({"object": "list", "data": None, "model": "m"})),
    "emb-too-few": (200, "application/json", _j({"data": [], "model": "m"})),
    "emb-strings": (200, "application/json", _j({"data": [{"index": 0, "embedding": ["a", "b"]}], "model": "m"})),
    "emb-null-value": (200, "application/json", _j({"data": [{"index": 0, "embedding": [0.1, None]}], "model": "m"})),
    "emb-empty-vector": (200, "application/json", _j({"data": [{"index": 0, "embedding": []}], "model": "m"})),
    "emb-index-out-of-range": (200, "application/json", _j({"data": [{"index": 5, "embedding": [0.1]}], "model": "m"})),
    "ret-string": (200, "application/json", b'"nothing found"'),
    "ret-points-string": (200, "application/json", _j([{"points": "many", "limit": 1, "score_threshold": 0.5}])),
    "ret-point-no-source": (200, "application/json",
                            _j([{"points": [{"score": 0.9}], "limit": 1, "score_threshold": 0.5}])),
    "ret-number-list": (200, "application/json", b"[1, 2]"),
    "html-500": (500, "text/html", b"<html><body><h1>500</h1><p>upstream exploded</p></body></html>"),
    "text-400": (400, None,
                 b"400 Bad Request: Fail to deserialize chat completion request: expected value\njson_value: {...}"),
}
"""What a broken node, proxy or gateway can answer with: ``(status, Content-Type or None, body)`` by case name."""

MALFORMED_STREAMS: dict[str, list[bytes]] = {
    "sse-garbage": [b'data: {"choices": [{"delta": {"content": "Par"}}]}\n\n', b"data: <<<garbage>>>\n\n"],
    "sse-array": [b"data: [1, 2, 3]\n\n", b"data: [DONE]\n\n"],
    "sse-choices-string": [b'data: {"choices": "abc"}\n\n', b"data: [DONE]\n\n"],
    "sse-delta-string": [b'data: {"choices": [{"delta": "text"}]}\n\n', b"data: [DONE]\n\n"],
    "sse-no-done": [b'data: {"choices": [{"delta": {"content": "Partial"}}]}\n\n'],
}
"""SSE bodies (HTTP 200, ``text/event-stream``) that break the protocol mid-way, by case name, one chunk per item."""

_MALFORMED_RE = re.compile(r"\[\[malformed:([a-z0-9-]+)\]\]")


def malformed_case(text: str) -> str | None:
    """The case named by a ``[[malformed:NAME]]`` marker in ``text``, if any."""
    match = _MALFORMED_RE.search(text)
    return match.group(1) if match else None


def huge_body() -> bytes:
    """``huge``: a valid completion of several megabytes."""
    content = "word " * 700_000
    return _j({"id": "x", "model": "m", "choices": [{"message": {"role": "assistant", "content": content}}]})


def echo_auth_body(authorization: str | None) -> bytes:
    """``echo-auth``: a gateway error page that echoes the request's ``Authorization`` header (a key leak to catch)."""
    return f"500 Internal Server Error: rejected request with Authorization: {authorization}".encode()


ECHO_AUTH_CASES = ("echo-auth-502", "echo-auth-200", "echo-auth-inband", "echo-auth-garbage")
"""Answers that echo the request's ``Authorization`` header deep in their text, where a client that shortens an error
message before redacting the key would cut the key in two and keep most of it: HTML pages (the key around character
380 of the page's text), an in-band error (around character 190 of its message) and an unreadable SSE chunk (around
character 105)."""

_FILLER = ("The server, while acting as a gateway or proxy, received an invalid response from the upstream server it "
           "accessed in attempting to fulfill the request. ")


def _filler(length: int) -> str:
    return (_FILLER * (length // len(_FILLER) + 1))[:length].strip()


def echo_auth_answer(name: str, authorization: str | None, stream: bool) -> tuple[int, str, bytes | list[bytes]]:
    """What case ``name`` of :data:`ECHO_AUTH_CASES` answers: ``(status, Content-Type, body)``, the body a list of SSE
    chunks when it is a stream.

    * ``echo-auth-502``: a gateway's 502 HTML page;
    * ``echo-auth-200``: a 200 HTML maintenance page (not JSON, not an event stream);
    * ``echo-auth-inband``: streamed, a content chunk then an in-band ``{"error"}`` chunk; else a 200 JSON error;
    * ``echo-auth-garbage``: streamed, a content chunk then a chunk that is not JSON; else a 200 text body.
    """
    echo = f"Request headers: Authorization: {authorization}"
    if name in ("echo-auth-502", "echo-auth-200"):
        title = "502 Bad Gateway" if name == "echo-auth-502" else "Maintenance"
        page = (f"<html><head><title>{title}</title></head><body><h1>{title}</h1><p>{_filler(336 - len(title))}</p>"
                f"<p>{echo}</p><hr><center>nginx</center></body></html>")
        return (502 if name == "echo-auth-502" else 200), "text/html", page.encode()
    if name == "echo-auth-inband":
        message = f"upstream rejected the request. {_filler(120)} {echo}"
        if not stream:
            return 200, "application/json", _j({"error": {"message": message, "type": "server_error"}})
        return 200, "text/event-stream", [b'data: {"choices": [{"delta": {"content": "Par"}}]}\n\n',
                                          b"data: " + _j({"error": {"message": message, "type": "server_error"}})
                                          + b"\n\n", b"data: [DONE]\n\n"]
    garbage = f"%%% {_filler(57)} {echo} %%%"
    if not stream:
        return 200, "text/plain", garbage.encode()
    return 200, "text/event-stream", [b'data: {"choices": [{"delta": {"content": "Par"}}]}\n\n',
                                      f"data: {garbage}\n\n".encode()]
