"""The ``Flavor`` base: the OpenAI-compatible API every server generation shares, with a hook wherever they differ.

A flavour is a subclass in its own module (``rag``, ``nexus``, ``amd``) that sets class attributes (:class:`FlavorSpec`,
:attr:`Flavor.SERIALIZED`, :attr:`Flavor.SPACED_JSON`, ...) and overrides hooks: :meth:`Flavor.routes` (its route
table), :meth:`Flavor.answer_error` (its error dialect), the body rejections, :meth:`Flavor.stream_events` (its SSE
shape), :meth:`Flavor.models_body` and :meth:`Flavor.info_body`. The endpoints themselves (chat, embeddings, models,
info), the ``[[...]]`` markers and the ``[[malformed:NAME]]`` answers live here, once.
"""

from __future__ import annotations

import enum
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, NoReturn, Sequence, Union

import orjson

from .content import answer_for, count_tokens, last_user_text, prompt_tokens, tool_calls, word_pieces
from .malformed import (
    ECHO_AUTH_CASES,
    MALFORMED,
    MALFORMED_STREAMS,
    echo_auth_answer,
    echo_auth_body,
    huge_body,
    malformed_case,
)
from .server import ClientError, NodeBase, RequestHandler

STATIC_404 = b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>"
"""The 404 page of a node's static web UI (what paths outside the API fall through to)."""

SAMPLED_ENDINGS = ("", " That is the short answer.", " I hope this helps.")
"""How a sampled answer (``temperature`` > 0) may end."""

Endpoint = Callable[[bytes], None]
"""Answers one request, given its body."""


class StreamCut(enum.Enum):
    """A place in a stream's event list where the HTTP body is aborted (no ``[DONE]``, no last chunk)."""

    ABORT = "abort"


ABORT = StreamCut.ABORT
StreamEvent = Union[dict[str, Any], StreamCut]
"""One SSE event: a JSON payload, or :data:`ABORT`."""


@dataclass(frozen=True)
class FlavorSpec:
    """What a flavour's node has loaded."""

    chat_models: tuple[str, ...]
    embedding_model: str | None
    owned_by: str = "Not specified"


@dataclass(frozen=True)
class Completion:
    """One chat answer, before a flavour shapes it into a response or a stream."""

    request: dict[str, Any]
    id: str
    created: int
    model: str
    question: str
    answer: str
    finish: str
    usage: dict[str, int]


class Flavor(RequestHandler):
    """One server generation's HTTP behaviour (one instance per connection, as http.server works).

    Class attributes and classmethods describe the node (models, info); hooks shape each answer. The defaults are
    what the generations share; a new generation is a subclass in a new module plus an entry in
    ``gaia_source.emulator.FLAVOR_CLASSES``.
    """

    NAME: ClassVar[str]
    """The ``flavor`` name (``rag``, ``nexus``, ``amd``)."""
    SPEC: ClassVar[FlavorSpec]
    ROUTES_ON_PATH_ALONE: ClassVar[bool] = False
    """True for servers that serve a route whatever the method (rag-api-server)."""
    SPACED_JSON: ClassVar[bool] = False
    """True for servers whose models, chat and stream JSON is ``json.dumps``-spaced (FastAPI)."""
    HONOURS_N: ClassVar[bool] = True
    """Whether ``n`` > 1 gets extra choices."""
    EMPTY_MESSAGES: ClassVar[str] = "Messages should not be empty."
    """The 400 message for a chat request without messages."""
    OUTPUT_LIMIT_FIELDS: ClassVar[tuple[str, ...]] = ("max_tokens",)
    """Request fields this server reads as the answer's token cap; any other is dropped unread (serde and pydantic
    ignore unknown keys). llama-api-server >= 0.23 and gaia-nexus read only ``max_completion_tokens``."""
    REPLAYS_STREAM: ClassVar[bool] = False
    """True for servers that wait for the whole answer and then replay it as a stream (gaia-nexus >= 0.8.1): the
    generation time passes before the first chunk, and the chunks follow back to back."""
    INCLUDE_USAGE: ClassVar[bool] = False
    """Whether the server was started with ``--include-usage`` (a usage chunk when ``stream_options`` is absent)."""
    DIM: ClassVar[int | None] = None
    """The embedding model's dimension when the server has one model of its own (None: the node's ``dim``, 768)."""

    # --- the node ----------------------------------------------------------------------------------------------

    @classmethod
    def chat_models(cls, node: NodeBase) -> tuple[str, ...]:
        """The chat models loaded now: the node's ``loaded_model`` when an operator swapped it, else the flavour's."""
        return (node.loaded_model,) if node.loaded_model else cls.SPEC.chat_models

    @classmethod
    def resolve_chat_model(cls, requested: Any, node: NodeBase) -> str:
        """The model that answers: the node's loaded model whatever is asked (Gaia nodes)."""
        models = cls.chat_models(node)
        if isinstance(requested, str) and requested in models:
            return requested
        return models[0]

    @classmethod
    def listed_models(cls, node: NodeBase) -> list[str]:
        """Model ids in ``/v1/models`` order: chat models, then the embedding model."""
        ids = list(cls.chat_models(node))
        if cls.SPEC.embedding_model:
            ids.append(cls.SPEC.embedding_model)
        return ids

    @classmethod
    def model_card(cls, model_id: str, created: int) -> dict[str, Any]:
        """One ``/v1/models`` item."""
        return {"id": model_id, "created": created, "object": "model", "owned_by": cls.SPEC.owned_by}

    @classmethod
    def models_body(cls, node: NodeBase) -> dict[str, Any]:
        """The ``/v1/models`` body."""
        return {"object": "list", "data": [cls.model_card(m, node.started_at) for m in cls.listed_models(node)]}

    @classmethod
    def info_body(cls, node: NodeBase) -> dict[str, Any]:
        """The ``/v1/info`` body (servers that have the route override it)."""
        raise NotImplementedError(f"the {cls.NAME} server has no /v1/info")

    @staticmethod
    def model_config(name: str | None, kind: str, ctx_size: int, prompt_template: str) -> dict[str, Any]:
        """A llama-core ``ModelConfig`` as ``/v1/info`` shows one (values of a Gaia node's defaults)."""
        return {
            "name": name, "type": kind, "ctx_size": ctx_size, "batch_size": 128, "ubatch_size": 128,
            "prompt_template": prompt_template, "n_predict": -1, "n_gpu_layers": 100, "temperature": 1.0,
            "top_p": 1.0, "repeat_penalty": 1.1, "presence_penalty": 0.0, "frequency_penalty": 0.0,
            "split_mode": "layer",
        }

    # --- routing -------------------------------------------------------------------------------------------------

    def routes(self) -> dict[str, tuple[str, Endpoint]]:
        """This server's API: path -> (the method it takes, the endpoint). Default: chat, embeddings, models, info."""
        return {
            "/v1/chat/completions": ("POST", self.chat),
            "/v1/embeddings": ("POST", self.embeddings),
            "/v1/models": ("GET", self.models),
            "/v1/info": ("GET", self.info),
        }

    def route(self, method: str, path: str, body: bytes) -> None:
        """Answer from the route table, or as this server answers an unknown path or a wrong method."""
        routes = self.routes()
        if path not in routes:
            self.unknown_route(method, path)
            return
        expected, endpoint = routes[path]
        if method != expected and not self.ROUTES_ON_PATH_ALONE:
            self.wrong_method(method, path)
            return
        endpoint(body)

    def unknown_route(self, method: str, path: str) -> None:
        """Answer a path the route table lacks (default: a 404 error)."""
        self.answer_error(404, "Not Found")

    def wrong_method(self, method: str, path: str) -> None:
        """Answer a known path with the wrong method (default: a 405 error)."""
        self.answer_error(405, "Method Not Allowed")

    def send_static_404(self) -> None:
        """Answer the static web UI's 404 page."""
        self.send(404, STATIC_404, "text/html")

    # --- request bodies ------------------------------------------------------------------------------------------

    def parse(self, body: bytes, what: str, required: str) -> dict[str, Any]:
        """Parse a JSON request body that must carry ``required``, rejecting it the way this server does."""
        self.check_content_type()
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            self.reject_json(what, exc)
        if not isinstance(data, dict) or required not in data:
            self.reject_shape(what, required, f"missing field `{required}`", body)
        if isinstance(data.get("stop"), str):
            self.reject_shape(what, required, "invalid type: string, expected a sequence for key `stop`", body)
        return data

    def check_content_type(self) -> None:
        """Reject a request whose Content-Type this server does not take (default: any is taken)."""

    def reject_json(self, what: str, exc: orjson.JSONDecodeError) -> NoReturn:
        """Reject a body that is not JSON (``what``: e.g. ``chat completion``)."""
        raise NotImplementedError

    def reject_shape(self, what: str, required: str, problem: str, body: bytes) -> NoReturn:
        """Reject JSON of the wrong shape (``problem``: serde's words for it)."""
        raise NotImplementedError

    def messages(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        """The request's non-empty ``messages`` list (else a 400)."""
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ClientError(400, self.EMPTY_MESSAGES)
        return messages

    def answer_malformed(self, text: str, stream: bool = False) -> bool:
        """Answer with the ``[[malformed:NAME]]`` case named in ``text``, if any; True when it did."""
        name = malformed_case(text)
        if name is None:
            return False
        if name == "huge":
            self.send(200, huge_body(), "application/json")
        elif name == "echo-auth":
            self.send(500, echo_auth_body(self.headers.get("Authorization")), "text/plain")
        elif name in ECHO_AUTH_CASES:
            status, ctype, answer = echo_auth_answer(name, self.headers.get("Authorization"), stream)
            if isinstance(answer, bytes):
                self.send(status, answer, ctype)
            else:
                self.start_stream()
                for raw in answer:
                    self.write_chunk(raw)
                self.wfile.write(b"0\r\n\r\n")
        elif stream and name in MALFORMED_STREAMS:
            self.start_stream()
            for raw in MALFORMED_STREAMS[name]:
                self.write_chunk(raw)
            self.wfile.write(b"0\r\n\r\n")
        elif name in MALFORMED:
            status, content_type, malformed = MALFORMED[name]
            self.send(status, malformed, content_type)
        else:
            raise ClientError(400, f"unknown malformed case {name!r}")
        return True

    # --- chat ------------------------------------------------------------------------------------------------------

    def chat(self, body: bytes) -> None:
        """``/v1/chat/completions``: an answer, a stream, or the edge case a ``[[marker]]`` asks for."""
        request = self.parse(body, "chat completion", "messages")
        messages = self.messages(request)
        self.check_chat(messages)
        model = self.resolve_chat_model(request.get("model"), self.node)
        question = last_user_text(messages)
        if self.answer_malformed(question, stream=bool(request.get("stream"))):
            return
        if self.fails(question):
            raise ClientError(500, "Failed to get the completion: the model crashed (emulated)", "internal_error")
        self.delay(self.node.latency_ms)
        answer = self.sampled(self.answer(question, model), request)
        finish = "length" if "[[context-full]]" in question else "stop"
        limit = self.output_limit(request)
        if limit is not None and count_tokens(answer) > limit:
            answer, finish = "".join(word_pieces(answer)[:limit]).rstrip(), "length"
        completion_id = self.completion_id(request)
        usage = self.usage(messages, answer)
        completion = Completion(request, completion_id, int(time.time()), model, question, answer, finish, usage)
        if request.get("stream"):
            self.stream(completion)
            return
        calls = tool_calls() if "[[tool]]" in question else None
        if calls:
            finish = "tool_calls"
        n = request.get("n")
        variants = min(n, 8) if isinstance(n, int) and self.HONOURS_N else 1
        message = self.reply_message(answer, calls)
        choices = [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}]
        for i in range(1, max(1, variants)):
            choices.append({"index": i, "message": {"content": f"{answer} (variant {i})", "role": "assistant"},
                            "finish_reason": finish, "logprobs": None})
        response = {"id": completion_id, "object": "chat.completion", "created": completion.created, "model": model,
                    "choices": choices, "usage": usage}
        if "[[cut]]" in question or self.fault == "truncate":
            raw = orjson.dumps(response)
            self.send_head(200, len(raw), "application/json")
            self.cut(raw[: len(raw) // 2])
            return
        self.send_json(200, response, spaced=self.SPACED_JSON)

    def check_chat(self, messages: list[dict[str, Any]]) -> None:
        """Reject messages this server refuses to answer (default: none)."""

    def output_limit(self, request: dict[str, Any]) -> int | None:
        """The answer's token cap: the smallest positive integer among the fields this server reads."""
        caps = [v for f in self.OUTPUT_LIMIT_FIELDS
                if isinstance(v := request.get(f), int) and not isinstance(v, bool) and v > 0]
        return min(caps) if caps else None

    def include_usage(self, request: dict[str, Any]) -> bool:
        """llama-core's rule for the usage chunk: ``stream_options.include_usage`` when the request has
        ``stream_options``, else the server's start flag."""
        options = request.get("stream_options")
        if isinstance(options, dict):
            return bool(options.get("include_usage"))
        flag = self.node.include_usage
        return self.INCLUDE_USAGE if flag is None else flag

    def fails(self, question: str) -> bool:
        """Whether the chat request fails with a 500 before answering (``[[fail]]``)."""
        return "[[fail]]" in question

    def answer(self, question: str, model: str) -> str:
        """The answer text (empty for ``[[empty]]``)."""
        return "" if "[[empty]]" in question else answer_for(question, model)

    def sampled(self, answer: str, request: dict[str, Any]) -> str:
        """With ``sampling`` on the node and ``temperature`` > 0 a model samples: the same question may get another
        wording each time. Here one of a few endings, drawn per request (LlamaEdge reads no ``seed``, so none makes it
        repeatable). Off by default: answers stay a function of the question."""
        temperature = request.get("temperature")
        if not self.node.sampling or not answer or not isinstance(temperature, (int, float)) or temperature <= 0:
            return answer
        return answer + random.choice(SAMPLED_ENDINGS)

    def completion_id(self, request: dict[str, Any]) -> str:
        """The completion ``id``: the request's ``user`` when given (llama-core), else ``chatcmpl-<uuid4>``."""
        user = request.get("user")
        return user if isinstance(user, str) and user else f"chatcmpl-{uuid.uuid4()}"

    def usage(self, messages: Sequence[dict[str, Any]], answer: str) -> dict[str, int]:
        """The ``usage`` object: word counts as tokens."""
        prompt, completion = prompt_tokens(messages), count_tokens(answer)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def reply_message(self, answer: str, calls: list[dict[str, Any]] | None) -> dict[str, Any]:
        """The first choice's ``message`` (llama-core: ``content`` null and ``tool_calls`` only with tool calls)."""
        message: dict[str, Any] = {"content": None if calls else answer, "role": "assistant"}
        if calls:
            message["tool_calls"] = calls
        return message

    # --- streaming -----------------------------------------------------------------------------------------------

    def stream(self, completion: Completion) -> None:
        """Send the completion as this server's SSE stream (cut halfway for ``[[cut]]`` or a ``truncate`` fault)."""
        events = self.stream_events(completion)
        if self.REPLAYS_STREAM:  # the whole answer is generated downstream first, at the node's time per token
            self.delay(self.node.chunk_delay_ms * len(events))
        self.start_stream()
        cut_at = max(1, len(events) // 2) if "[[cut]]" in completion.question or self.fault == "truncate" else None
        for i, event in enumerate(events):
            if (cut_at is not None and i == cut_at) or event is ABORT:
                self.cut()
                return
            self.send_event(event, spaced=self.SPACED_JSON, pause=not self.REPLAYS_STREAM)
        self.end_stream()

    def stream_events(self, completion: Completion) -> list[StreamEvent]:
        """The events of a stream, before ``[DONE]``."""
        raise NotImplementedError

    # --- embeddings, models, info ----------------------------------------------------------------------------------

    def embeddings(self, body: bytes) -> None:
        """``/v1/embeddings``: dense bag-of-words vectors, one per input (token ids embedded as decimal text)."""
        request = self.parse(body, "embedding", "input")
        raw = request["input"]
        if isinstance(raw, str):
            texts = [raw]
        elif isinstance(raw, list) and all(isinstance(x, str) for x in raw):
            texts = list(raw)
        elif isinstance(raw, list) and all(isinstance(x, int) for x in raw):
            texts = [" ".join(str(x) for x in raw)]  # token ids are embedded as decimal text
        elif isinstance(raw, list) and all(isinstance(x, list) for x in raw):
            texts = [" ".join(str(t) for t in x) for x in raw]
        else:
            raise ClientError(400, "Fail to deserialize embedding request: invalid type for `input`")
        if any("[[fail]]" in t for t in texts):
            raise ClientError(500, "Failed to compute embeddings. Reason: emulated failure", "internal_error")
        longest = max((count_tokens(t) for t in texts), default=0)
        if longest > self.node.embedding_ctx:  # one input too long for the model fails the whole batch
            raise ClientError(500, f"Failed to compute embeddings. Reason: the input has {longest} tokens, more than "
                              f"the context size of the embedding model ({self.node.embedding_ctx})", "internal_error")
        if self.answer_malformed(" ".join(texts)):
            return
        node = self.node
        self.delay(node.latency_ms)
        vectors = node.embed(texts)
        tokens = sum(max(1, count_tokens(t)) for t in texts)
        response = {
            "object": "list",
            "data": [{"index": i, "object": "embedding", "embedding": vectors[i]} for i in range(len(texts))],
            "model": self.SPEC.embedding_model,
            "usage": {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens},
        }
        encoded = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
        if self.fault == "truncate":
            self.send_head(200, len(encoded), "application/json")
            self.cut(encoded[: len(encoded) // 2])
            return
        self.send(200, encoded, "application/json")

    def create_response(self, body: bytes) -> None:
        """``/v1/responses`` (llama-api-server >= 0.28, llama-nexus main): ``{model, input, instructions?}`` →
        a ``response`` object with one ``output_text`` message. Only flavours that have the route list it."""
        request = self.parse(body, "responses", "input")
        raw = request["input"]
        if isinstance(raw, str):
            question = raw
        elif isinstance(raw, list) and raw and all(isinstance(m, dict) for m in raw):
            question = last_user_text(raw)
        else:
            raise ClientError(400, "Fail to deserialize responses request: invalid type for `input`")
        if not question:
            raise ClientError(400, "No user input found.")
        if self.fails(question):
            raise ClientError(500, "Failed to get the response: the model crashed (emulated)", "internal_error")
        self.delay(self.node.latency_ms)
        model = self.resolve_chat_model(request.get("model"), self.node)
        answer = self.answer(question, model)
        limit = request.get("max_output_tokens")
        status = "completed"
        if isinstance(limit, int) and 0 < limit < count_tokens(answer):
            answer, status = "".join(word_pieces(answer)[:limit]).rstrip(), "incomplete"
        messages = [{"role": "system", "content": request.get("instructions") or ""}, {"role": "user",
                                                                                      "content": question}]
        usage = self.response_usage(messages, answer)
        response = {
            "id": self.response_id(), "object": "response", "created_at": int(time.time()), "status": status,
            "model": model, "instructions": request.get("instructions"),
            "output": [{"type": "message", "id": f"msg_{uuid.uuid4().hex}", "status": "completed",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": answer, "annotations": []}]}],
            "usage": usage,
        }
        self.send_json(200, response)

    def response_id(self) -> str:
        """``resp_<uuid>`` (0.28.0 returned one hard-coded id for every reply: ``fixed_response_id``)."""
        if self.node.fixed_response_id:
            return "resp_67ccd3a9da748190baa7f1570fe91ac604becb25984b3b1c"
        return f"resp_{uuid.uuid4().hex}"

    def response_usage(self, messages: Sequence[dict[str, Any]], answer: str) -> dict[str, int]:
        """``/v1/responses`` usage: input/output/total tokens (counted, as llama-api-server does)."""
        prompt, completion = prompt_tokens(messages), count_tokens(answer)
        return {"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion}

    def models(self, body: bytes) -> None:
        """``/v1/models``."""
        self.send_json(200, self.models_body(self.node), spaced=self.SPACED_JSON)

    def info(self, body: bytes) -> None:
        """``/v1/info``."""
        self.send_json(200, self.info_body(self.node))
