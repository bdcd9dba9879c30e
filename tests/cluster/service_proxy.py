"""A userspace stand-in for kube-proxy: listens on a Service's ClusterIP and port (loopback
addresses here) and forwards each TCP connection to one of the Service's ready pods, chosen at
random as kube-proxy's default iptables mode does (and, like it, per connection: every request
on a kept-alive connection goes to the same pod). The pods are read directly (the Service's
selector, Ready=True): the EndpointSlice controller refuses loopback addresses, which the local
control plane gives its pods. Clients then reach the workers at the Service's address as they
would in a cluster."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time

import kubernetes


class ServiceProxy:
    def __init__(self, api_client: kubernetes.client.ApiClient, namespace: str, name: str) -> None:
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.namespace, self.name = namespace, name
        service = self.core.read_namespaced_service(name, namespace)
        self.host: str = service.spec.cluster_ip
        self.port: int = service.spec.ports[0].port
        self.target_port: str | int = service.spec.ports[0].target_port
        self.selector: dict[str, str] = service.spec.selector
        self.endpoints: list[tuple[str, int]] = []
        self.connections = 0
        self.refused: list[str] = []  # connections closed at once: no endpoint, or none answered
        self._random = random.Random()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._serve, name=f"proxy-{name}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> ServiceProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("service proxy did not start")
        return self

    def __exit__(self, *_: object) -> None:
        if self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(10)

    def refresh(self) -> None:
        # The selector is read each time, as kube-proxy follows a Service's changes: a
        # scale-to-zero service's Service points at its activator while no worker is ready.
        self.selector = self.core.read_namespaced_service(self.name, self.namespace).spec.selector
        selector = ",".join(f"{k}={v}" for k, v in self.selector.items())
        found: list[tuple[str, int]] = []
        for pod in self.core.list_namespaced_pod(self.namespace, label_selector=selector).items:
            ready = any(
                c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []
            )
            if not ready or pod.metadata.deletion_timestamp or not pod.status.pod_ip:
                continue
            for container in pod.spec.containers:
                for port in container.ports or []:
                    if self.target_port in (port.name, port.container_port):
                        found.append((pod.status.pod_ip, port.container_port))
        self.endpoints = sorted(set(found))

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stopped = asyncio.Event()
        # Endpoints first, as kube-proxy has its rules in place before a client connects: a
        # connection accepted before the first refresh found none and was reset.
        await asyncio.to_thread(self.refresh)
        server = await asyncio.start_server(self._handle, self.host, self.port)
        refresher = asyncio.create_task(self._refresh_forever())
        self._ready.set()
        async with server:
            await self._stopped.wait()
        # Kept-alive connections may still be open: end their relays before the loop closes.
        others = {refresher, *asyncio.all_tasks()} - {asyncio.current_task()}
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _refresh_forever(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.refresh)
            await asyncio.sleep(0.3)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        endpoints = self.endpoints
        if not endpoints:  # like kube-proxy with no endpoints: the connection is refused
            self.refused.append(f"{time.monotonic():.3f} no ready endpoint")
            writer.close()
            return
        host, port = self._random.choice(endpoints)
        self.connections += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
        except OSError as error:
            self.refused.append(f"{time.monotonic():.3f} {host}:{port} {error}")
            writer.close()
            return
        await asyncio.gather(
            _pipe(reader, upstream_writer), _pipe(upstream_reader, writer), return_exceptions=True
        )


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(Exception):
            writer.close()
