"""A deterministic GAIA agent for running the real amd-gaia API server in tests (no LLM behind it).

amd-gaia's flagship ``gaia`` agent ships in a wheel that is not on PyPI, and any agent needs a Lemonade LLM server. This
one answers ``gaia answers: <query>`` at once, honours the server's ``max_tokens`` the way agents read it
(``max_output_tokens``, words here), and reports its answer through the server's SSE output handler like a real agent,
so every line of ``gaia.api.openai_server`` runs as shipped. :mod:`serve` registers it in ``AGENT_MODELS`` as the docs'
"Adding New Agents" section describes.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Dict, List, Optional


class EchoAgent:
    """The agent interface ``gaia.api.openai_server`` uses: history, caller system prompt, sampling config, a query."""

    def __init__(self, output_handler: Any = None, **_params: Any) -> None:
        self.output_handler = output_handler
        self.conversation_history: List[Dict[str, Any]] = []
        self.system_prompt = ""
        self.chat = SimpleNamespace(config=SimpleNamespace(temperature=None, top_p=None, max_tokens=None))
        self.max_output_tokens: Optional[int] = None

    def set_caller_system_prompt(self, text: str) -> None:
        self.system_prompt = text

    def mark_external_content(self) -> None:
        pass

    def process_query(self, query: str) -> Dict[str, Any]:
        if "[[agent-fail]]" in query:
            raise RuntimeError("Agent processing failed: emulated agent crash")
        words = f"gaia answers: {query}".split()
        if self.max_output_tokens:
            words = words[: self.max_output_tokens]
        answer = " ".join(words)
        if self.output_handler is not None:
            self.output_handler.print_final_answer(answer)
        return {"status": "success", "result": answer, "steps_taken": 1}
