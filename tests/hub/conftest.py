"""A local Hub for tests: the real ``huggingface_hub`` client against ``hub_server.LocalHubServer`` on 127.0.0.1.

Other test folders can use the server too::

    sys.path.insert(0, str(Path(__file__).parents[1] / "hub"))   # tests/hub
    from hub_server import LocalHubServer, patch_client_endpoint

    with LocalHubServer(tokens={"hf_...": "alice"}) as hub, patch_client_endpoint(hub.endpoint):
        ...  # create_repo / upload_folder / snapshot_download / hf_hub_download all talk to hub.endpoint
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from hub_server import LocalHubServer, patch_client_endpoint  # noqa: E402

# Looks like a real token (hf_ + 34 characters) so a leak would be caught by the same patterns users grep for.
HUB_TOKEN = "hf_TestTokenAliceDoNotLeak0123456789"


@pytest.fixture
def local_hub(monkeypatch):
    """A running local Hub that accepts ``HUB_TOKEN`` for user ``alice``; the client points at it, online."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with LocalHubServer(tokens={HUB_TOKEN: "alice"}, max_lifetime_s=300) as hub, patch_client_endpoint(hub.endpoint):
        hub.token = HUB_TOKEN
        yield hub


@pytest.fixture
def dead_endpoint():
    """An address where nothing listens (a server bound and closed again); the client is online, pointed at it."""
    server = LocalHubServer()
    endpoint = server.endpoint
    server.server_close()
    with patch_client_endpoint(endpoint):
        yield endpoint
