"""Closed-loop HTTP load generator that remembers every answer's x-litellm-call-id.

``concurrency`` workers each send one chat request after the other until ``stop`` is set (or
``total`` requests were started). Every attempt becomes a ``Sample``: when it started, how long it
took, the status (None when the gateway gave no HTTP answer) and the request id the gateway put in
the x-litellm-call-id header; ``phase`` is whatever label the scenario set when it was sent.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httpx

CALL_ID_HEADER = "x-litellm-call-id"
TRANSPORT_ERROR_PAUSE_SECONDS = 0.2  # do not spin while the gateway is down


@dataclass
class Sample:
    started: float  # epoch seconds
    latency_ms: float
    status: int | None
    call_id: str | None
    phase: str
    error: str | None = None


@dataclass
class LoadGenerator:
    base_url: str
    key: str
    payload: dict
    concurrency: int
    total: int | None = None
    keepalive: bool = True
    phase: str = "load"
    verify: str | bool = True  # httpx's verify=: the CA file of the gateway's certificate
    samples: list[Sample] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    _started: int = 0

    async def run(self) -> list[Sample]:
        keepalive = self.concurrency if self.keepalive else 0
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=keepalive)
        headers = {"Authorization": f"Bearer {self.key}"}
        async with httpx.AsyncClient(
            base_url=self.base_url, headers=headers, limits=limits, timeout=60, verify=self.verify
        ) as client:
            await asyncio.gather(*(self._worker(client) for _ in range(self.concurrency)))
        return self.samples

    @property
    def sent(self) -> int:
        return self._started

    def _next(self) -> bool:
        if self.stop.is_set() or (self.total is not None and self._started >= self.total):
            return False
        self._started += 1
        return True

    async def _worker(self, client: httpx.AsyncClient) -> None:
        while self._next():
            phase, started, clock = self.phase, time.time(), time.perf_counter()
            try:
                response = await client.post("/v1/chat/completions", json=self.payload)
            except httpx.TransportError as exc:
                elapsed = (time.perf_counter() - clock) * 1000
                self.samples.append(Sample(started, elapsed, None, None, phase, type(exc).__name__))
                await asyncio.sleep(TRANSPORT_ERROR_PAUSE_SECONDS)
                continue
            elapsed = (time.perf_counter() - clock) * 1000
            call_id = response.headers.get(CALL_ID_HEADER)
            self.samples.append(Sample(started, elapsed, response.status_code, call_id, phase))


def answered(samples: list[Sample]) -> dict[str, int]:
    """request id -> status for every HTTP answer (what must be in PostgreSQL)."""
    return {s.call_id: s.status for s in samples if s.status is not None and s.call_id}


def answers_without_id(samples: list[Sample]) -> int:
    return sum(1 for s in samples if s.status is not None and not s.call_id)
