"""The one place that folds chat-completion SSE chunks into a completion.

It reads every stream shape real Gaia servers send (see shared gaia-node-protocol §9, §13):

* llama-core (Gaia <= 0.4, llama-api-server): ``role`` on every chunk, no ``finish_reason: "stop"`` chunk on a normal
  end, a usage chunk with ``choices: []``; ``<|WASMEDGE-GGML-CONTEXT-FULL|>`` with ``finish_reason: "length"``;
  tool-call deltas.
* gaia-nexus (Gaia >= 0.5): ``choices[0].index`` counts chunks (0, 1, 2, …) — it is *not* a choice index, so all
  deltas are folded into one answer; usage and ``finish_reason`` ride on the last content chunk; an empty answer is
  only ``data: [DONE]``.
* AMD GAIA: no usage; an in-band ``{"error": …}`` chunk with HTTP 200 before ``[DONE]``.

A stream that reaches ``[DONE]`` without any ``finish_reason`` (llama-core's normal end) is reported as ``stop``
(``tool_calls`` when it carried tool calls), as the same request's non-streaming response would say — unless it was
**cut by the server**: llama.cpp's server (``--interrupt_requests``, on by default) ends an in-flight stream with
``[DONE]`` as soon as another request waits for the model, after whatever chunks it had sent. Such a stream has neither
a ``finish_reason`` nor usage, although usage was asked for (every server that ends a stream normally sends one or the
other then: llama-core its usage chunk, llama.cpp, gaia-nexus and AMD GAIA a ``finish_reason``). With content it is
``interrupted`` (:attr:`StreamResult.cut_by_server`, not an answer: its text stops mid-way); with none, an empty answer.

Usage is the *last* usage object seen, never a sum (some servers repeat cumulative usage on every chunk).

**Live or replayed.** gaia-nexus >= 0.8.1 waits for the whole answer downstream and then replays it as a stream, so the
time to its first chunk is the whole generation time, not time to first token. :func:`stream_mode` tells the two
apart: a replay carries gaia-nexus's chunk counter in ``choices[0].index`` (0, 1, 2, …), or its content chunks arrive
back to back (at most :data:`REPLAY_MAX_GAP_S` apart on average) after a first chunk that took at least
:data:`REPLAY_MIN_TTFT_RATIO` times as long as all of them together. A stream with fewer than two content chunks and
no counter cannot be told apart: its mode is None.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import orjson

from .settings import CONTEXT_FULL_MARKER, CUT_STREAM_HINT, SSE_DONE

STATUS_COMPLETED = "completed"
STATUS_INTERRUPTED = "interrupted"
STATUS_ERROR = "error"
STREAM_LIVE = "live"
STREAM_REPLAYED = "replayed"
REPLAY_MAX_GAP_S = 0.005
"""Content chunks of a replayed stream follow each other within this many seconds on average (a live model takes
tens of milliseconds per token)."""
REPLAY_MIN_TTFT_RATIO = 10.0
"""A replayed stream's first chunk takes at least this many times as long as the rest of its content chunks."""


def stream_mode(
    ttft_s: Optional[float], span_s: float, content_chunks: int, counted_chunks: bool
) -> Optional[str]:
    """``live``, ``replayed``, or None when the stream is too short to tell (see the module docs).

    Args:
        ttft_s: Seconds to the first content chunk.
        span_s: Seconds from the first content chunk to the last one.
        content_chunks: Chunks that carried content.
        counted_chunks: ``choices[0].index`` counted chunks (gaia-nexus's replay).
    """
    if counted_chunks:
        return STREAM_REPLAYED
    if ttft_s is None or content_chunks < 2:
        return None
    mean_gap = span_s / (content_chunks - 1)
    if mean_gap <= REPLAY_MAX_GAP_S and ttft_s >= REPLAY_MIN_TTFT_RATIO * max(span_s, 0.001):
        return STREAM_REPLAYED
    return STREAM_LIVE


@dataclass
class StreamResult:
    """A stream folded into one completion, with its timings and how it ended."""

    status: str
    content: str
    role: Optional[str]
    finish_reason: Optional[str]
    tool_calls: List[Dict[str, Any]]
    usage: Optional[Dict[str, Any]]
    response_id: Optional[str]
    model: Optional[str]
    created: Optional[int]
    system_fingerprint: Optional[str]
    chunk_count: int
    ttft_s: Optional[float]
    """Seconds from sending the request to the first chunk carrying content or a tool call."""
    duration_s: float
    """Seconds from sending the request to the end of the stream."""
    error: Optional[str] = None
    done_received: bool = False
    stream_mode: Optional[str] = None
    """``live`` or ``replayed`` (see :func:`stream_mode`); None when the stream was too short to tell."""
    cut_by_server: bool = False
    """The server ended it with ``[DONE]`` before its end: chunks, then neither a ``finish_reason`` nor the usage that
    was asked for (llama.cpp's server does this when another request arrives; see the module docs)."""


@dataclass
class ChatStreamAccumulator:
    """Folds ``data:`` payloads of a chat-completion stream into a :class:`StreamResult`.

    Feed each SSE ``data`` string to :meth:`add`; call :meth:`finish` when the stream ends (normally or not).

    Args:
        started_at: ``time.perf_counter()`` when the request was sent.
        usage_asked: The request asked for usage (``stream_options.include_usage``): a stream that then ends with
            neither usage nor a ``finish_reason`` was cut by the server.
    """

    started_at: float = field(default_factory=time.perf_counter)
    usage_asked: bool = False
    _parts: List[str] = field(default_factory=list)
    _tool_calls: Dict[int, Dict[str, Any]] = field(default_factory=dict)
    role: Optional[str] = None
    finish_reason: Optional[str] = None
    usage: Optional[Dict[str, Any]] = None
    response_id: Optional[str] = None
    model: Optional[str] = None
    created: Optional[int] = None
    system_fingerprint: Optional[str] = None
    chunk_count: int = 0
    first_token_at: Optional[float] = None
    last_content_at: Optional[float] = None
    content_chunks: int = 0
    _next_index: int = 0
    """The ``choices[0].index`` a chunk counter would give the next content chunk (-1: the indexes do not count)."""
    error: Optional[str] = None
    done: bool = False

    def add(self, data: str) -> bool:
        """Fold one SSE ``data`` payload. Returns False once ``[DONE]`` arrived.

        Raises:
            ValueError: the payload is not JSON or not a JSON object (the caller records the stream as an error).
        """
        if data.strip() == SSE_DONE:
            self.done = True
            return False
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"chunk {self.chunk_count + 1} is not JSON ({exc}): {data[:120]!r}") from None
        if not isinstance(chunk, dict):
            raise ValueError(f"chunk {self.chunk_count + 1} is not a JSON object: {data[:120]!r}")
        self.add_chunk(chunk)
        return True

    def add_chunk(self, chunk: Dict[str, Any]) -> None:
        """Fold one parsed chunk."""
        self.chunk_count += 1
        if "error" in chunk and not chunk.get("choices"):  # AMD GAIA in-band error, HTTP status still 200
            err = chunk["error"]
            self.error = str(err.get("message", err)) if isinstance(err, dict) else str(err)
            return
        self.response_id = self.response_id or _str_or_none(chunk.get("id"))
        self.model = self.model or _str_or_none(chunk.get("model"))
        if self.created is None and isinstance(chunk.get("created"), (int, float)):
            self.created = int(chunk["created"])
        self.system_fingerprint = self.system_fingerprint or _str_or_none(chunk.get("system_fingerprint"))
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]  # last one wins: never sum
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise ValueError(f"chunk {self.chunk_count} has 'choices' of type {type(choices).__name__}")
        for choice in choices:  # index ignored on purpose: gaia-nexus uses it as a chunk counter
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                raise ValueError(f"chunk {self.chunk_count} has a 'delta' of type {type(delta).__name__}")
            if delta.get("role"):
                self.role = str(delta["role"])
            content = delta.get("content")
            if isinstance(content, str) and content:
                if CONTEXT_FULL_MARKER in content:
                    content = content.replace(CONTEXT_FULL_MARKER, "")
                    self.finish_reason = self.finish_reason or "length"
                if content:
                    self._parts.append(content)
                    self._mark_first_token()
                    self._count_content(choice.get("index"))
            if delta.get("tool_calls"):
                self._add_tool_calls(delta["tool_calls"])
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])

    def _mark_first_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()

    def _count_content(self, index: Any) -> None:
        self.content_chunks += 1
        self.last_content_at = time.perf_counter()
        if self._next_index >= 0:
            self._next_index = self._next_index + 1 if index == self._next_index else -1

    def _add_tool_calls(self, deltas: Any) -> None:
        if not isinstance(deltas, list):
            return
        for position, delta in enumerate(deltas):
            if not isinstance(delta, dict):
                continue
            index = delta.get("index", position)
            empty = {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            call = self._tool_calls.setdefault(index, empty)
            if delta.get("id"):
                call["id"] = delta["id"]
            if delta.get("type"):
                call["type"] = delta["type"]
            function = delta.get("function") or {}
            if function.get("name"):
                call["function"]["name"] += function["name"]
            if function.get("arguments"):
                args = function["arguments"]
                call["function"]["arguments"] += args if isinstance(args, str) else orjson.dumps(args).decode()
        self._mark_first_token()

    @property
    def content(self) -> str:
        """The text assembled so far."""
        return "".join(self._parts)

    def finish(self, interruption: Optional[str] = None) -> StreamResult:
        """Close the stream and say how it ended.

        Args:
            interruption: Why the stream stopped early (transport error, invalid chunk…), if it did.

        Returns:
            The folded completion. Status is ``error`` for an in-band error or an unreadable chunk, ``interrupted`` when
            the body ended before ``[DONE]`` (and no finish_reason came) or the server cut it after some content
            (``cut_by_server``), ``completed`` otherwise (a cut with nothing in it included: an empty answer).
        """
        cut = (self.done and self.usage_asked and self.chunk_count > 0 and self.finish_reason is None
               and self.usage is None and self.error is None and interruption is None)
        if self.error is not None:
            status, error = STATUS_ERROR, self.error
        elif interruption is not None:
            status, error = STATUS_INTERRUPTED, interruption
        elif not self.done and self.finish_reason is None:
            status, error = STATUS_INTERRUPTED, "stream ended before [DONE]"
        elif cut and (self._parts or self._tool_calls):
            status, error = STATUS_INTERRUPTED, (
                f"the server ended the stream ([DONE]) after {self.chunk_count} chunk(s) with no finish_reason and no "
                f"usage: it cut the answer short; {CUT_STREAM_HINT}")
        else:
            status, error = STATUS_COMPLETED, None
        finish_reason = self.finish_reason
        if status == STATUS_COMPLETED and finish_reason is None and self.done and not cut:
            # llama-core ends a normal stream with no finish_reason chunk: [DONE] after content means "stop".
            finish_reason = "tool_calls" if self._tool_calls else "stop"
        end = time.perf_counter()
        ttft = None if self.first_token_at is None else self.first_token_at - self.started_at
        span = (self.last_content_at or 0.0) - (self.first_token_at or 0.0)
        counted = self._next_index >= 3  # 0, 1, 2, … on three or more content chunks
        return StreamResult(
            status=status,
            content=self.content,
            role=self.role,
            finish_reason=finish_reason,
            tool_calls=[self._tool_calls[k] for k in sorted(self._tool_calls)],
            usage=self.usage,
            response_id=self.response_id,
            model=self.model,
            created=self.created,
            system_fingerprint=self.system_fingerprint,
            chunk_count=self.chunk_count,
            ttft_s=ttft,
            duration_s=end - self.started_at,
            error=error,
            done_received=self.done,
            stream_mode=stream_mode(ttft, span, self.content_chunks, counted),
            cut_by_server=cut,
        )


def _str_or_none(value: Any) -> Optional[str]:
    return value if isinstance(value, str) and value else None
