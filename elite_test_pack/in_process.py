"""API-format prompts through ComfyUI's own validation and executor, in this process.

For a process that has imported ComfyUI and loaded the packs (the test bed tests/conftest.py sets
up); no server, no HTTP (comfy_server.py drives a real server over HTTP).
"""

from __future__ import annotations

import asyncio
import uuid


class _Server:
    """The minimum of PromptServer that PromptExecutor talks to (no client, so no messages)."""

    client_id = None
    last_node_id = None

    def send_sync(self, event, data, sid=None):
        pass

    def queue_updated(self):
        pass


def submit(prompt: dict):
    """Validate ``prompt`` as the server does and run it when it is valid, with a fresh cache.
    Returns (executor, None), or (None, (error, node_errors)) when validation refused it."""
    import execution

    prompt_id = str(uuid.uuid4())
    ok, error, outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    if not ok:
        return None, (error, node_errors)
    # "ram_inactive" is read by newer ComfyUI (0.33.0); older versions ignore it.
    executor = execution.PromptExecutor(_Server(), cache_type=execution.CacheType.CLASSIC,
                                        cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
    executor.execute(prompt, prompt_id, {"client_id": None}, outputs)
    return executor, None


def run_prompt(prompt: dict):
    """Run a prompt that must pass validation; return the executor (its ``success`` says how it ended)."""
    executor, refusal = submit(prompt)
    assert executor is not None, refusal
    return executor
