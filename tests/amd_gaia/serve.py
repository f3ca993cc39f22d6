"""Serve the real amd-gaia API server (``gaia.api.openai_server:app``) on 127.0.0.1 with :class:`EchoAgent` as ``gaia``.

Run with the Python of a venv that has ``amd-gaia[api]``: ``python serve.py PORT``. ``GAIA_API_KEY`` in the environment
gates chat as it does for ``gaia api start``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import uvicorn  # noqa: E402
from gaia.api import agent_registry  # noqa: E402

agent_registry.AGENT_MODELS["gaia"] = {
    "class_name": "echo_agent.EchoAgent",
    "init_params": {"silent_mode": True, "streaming": False},
    "description": "A deterministic test agent",
}

from gaia.api.openai_server import app  # noqa: E402

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
