"""Helpers for the simulator tests: valid inputs per model, polling, a plain requests client."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests

from batchrun.simulator import Simulator

IMG = "https://playgrounds-storage-public.runcomfy.net/tools/7063/media-files/in.webp"
# One valid input set per model the simulator serves.
VALID_INPUTS: dict[str, dict[str, Any]] = {
    "blackforestlabs/flux-1-kontext/pro/edit": {"prompt": "umbrella", "image_url": IMG},
    "blackforestlabs/flux-3/text-to-video": {"prompt": "a calm sea"},
    "bytedance/seedance-2.5/image-to-video/1080p": {"prompt": "pan", "image": IMG},
    "bytedance/seedance-2.5/text-to-video/1080p": {"prompt": "a city", "duration": 6},
    "bytedance/seedream-5.0-pro/image-to-image": {"prompt": "sketch", "image": [IMG]},
    "google/nano-banana-2-lite/edit": {"prompt": "smile", "image_urls": [IMG]},
    "google/nano-banana-2-lite/text-to-image": {"prompt": "an orange umbrella"},
    "wan-ai/wan-3.0/image-to-video": {"prompt": "zoom", "image_url": IMG},
}
T2I = "google/nano-banana-2-lite/text-to-image"


def wait_for(condition: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


class SimClient:
    """A plain requests.Session with the simulator's token, and a few call helpers."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.base = sim.base_url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {sim.token}"

    def submit(self, model: str = T2I, inputs: dict[str, Any] | None = None) -> requests.Response:
        body = VALID_INPUTS[model] if inputs is None else inputs
        return self.session.post(f"{self.base}/v1/models/{model}", json=body, timeout=10)

    def submit_ok(self, model: str = T2I, inputs: dict[str, Any] | None = None) -> str:
        r = self.submit(model, inputs)
        assert r.status_code == 200, r.text
        return str(r.json()["request_id"])

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.session.get(f"{self.base}{path}", timeout=10, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self.session.post(f"{self.base}{path}", timeout=10, **kw)

    def status(self, rid: str) -> dict[str, Any]:
        r = self.get(f"/v1/requests/{rid}/status")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def result(self, rid: str, **params: str) -> dict[str, Any]:
        r = self.get(f"/v1/requests/{rid}/result", params=params)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def wait_status(self, rid: str, *states: str, timeout: float = 5.0) -> dict[str, Any]:
        return dict(wait_for(lambda: (s := self.status(rid))["status"] in states and s, timeout))
