"""Load over HTTP, from processes separate from the server, as users send it: raw HTTP through
aiohttp (one session, its keep-alive pool) with `float` or `base64` bodies, and the official
`openai.AsyncOpenAI` client. Each run returns throughput and per-request latencies.

`spread` splits one load over several client processes (as a fleet of callers would send it),
so the figures measure the server, not one Python client's CPU; each run reports the busiest
client process's CPU share (`client_cpu`), which must stay well below 1."""

from __future__ import annotations

import asyncio
import base64
import multiprocessing
import resource
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from bench._stats import percentiles


@dataclass
class Run:
    wall_s: float = 0.0
    texts: int = 0
    tokens: int = 0
    errors: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    client_cpu: float = 0.0  # CPU seconds per wall second of the busiest client process
    clients: int = 1
    # late event-loop ticks from the clients' common start to the last answer (spread only):
    # the count around it also holds the client processes' start-up, which loads the machine
    late_ticks_in_load: float | None = None

    def summary(self) -> dict[str, Any]:
        wall = max(self.wall_s, 1e-9)
        return {
            "texts_per_s": self.texts / wall,
            "tokens_per_s": self.tokens / wall,
            "requests": len(self.latencies_s),
            "errors": len(self.errors),
            "first_errors": self.errors[:3],
            "wall_s": self.wall_s,
            "client_processes": self.clients,
            "client_cpu": round(self.client_cpu, 2),
            "late_ticks_in_load": self.late_ticks_in_load,
            **({"latency_ms": percentiles(self.latencies_s)} if self.latencies_s else {}),
        }


def _check_vectors(body: dict[str, Any], count: int, encoding: str) -> None:
    data = body["data"]
    if len(data) != count:
        raise ValueError(f"{len(data)} vectors for {count} inputs")
    first = data[0]["embedding"]
    vector = np.frombuffer(base64.b64decode(first), "<f4") if encoding == "base64" else first
    if len(vector) == 0:
        raise ValueError("empty vector")


async def post(
    session: aiohttp.ClientSession, url: str, inputs: Sequence[str], encoding: str, run: Run
) -> None:
    started = time.perf_counter()
    try:
        async with session.post(
            url, json={"input": list(inputs), "encoding_format": encoding}
        ) as r:
            body = await r.json()
            if r.status != 200:
                raise ValueError(f"{r.status}: {str(body)[:200]}")
        _check_vectors(body, len(inputs), encoding)
    except (aiohttp.ClientError, ValueError, KeyError) as error:
        run.errors.append(f"{type(error).__name__}: {error}")
        return
    run.latencies_s.append(time.perf_counter() - started)
    run.texts += len(inputs)
    run.tokens += int(body["usage"]["prompt_tokens"])


async def raw_requests(
    base_url: str, requests: Sequence[Sequence[str]], concurrency: int, encoding: str
) -> Run:
    """`requests` (each a list of inputs) sent by `concurrency` callers over one pool."""
    run = Run()
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        pending = iter(requests)

        async def caller() -> None:
            for inputs in pending:
                await post(session, base_url + "/v1/embeddings", inputs, encoding, run)

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        run.wall_s = time.perf_counter() - started
    return run


async def openai_requests(
    base_url: str, model: str, requests: Sequence[Sequence[str]], concurrency: int
) -> Run:
    """The same through `openai.AsyncOpenAI` (base64 by default), no retries."""
    import openai

    run = Run()
    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)
    pending = iter(requests)

    async def caller() -> None:
        for inputs in pending:
            started = time.perf_counter()
            try:
                answer = await client.embeddings.create(model=model, input=list(inputs))
            except openai.OpenAIError as error:
                run.errors.append(f"{type(error).__name__}: {error}")
                continue
            run.latencies_s.append(time.perf_counter() - started)
            run.texts += len(answer.data)
            run.tokens += answer.usage.prompt_tokens

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    run.wall_s = time.perf_counter() - started
    await client.close()
    return run


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run_part(kind: str, inbox: Any, ready: Any, answers: Any) -> None:
    """One client process's share, its arguments from `inbox`. It warms up first and then
    waits at `ready` for every other client process and the parent, so all start together: a
    process still importing or connecting while others run would leave its share of the
    concurrency idle on the clock. Puts (run, start, end) on the wall clock shared by all
    processes into `answers`."""
    args = inbox.get()
    if kind == "openai":  # one request first: a long-lived client has imported, built its
        # response models and connected before; this process must not pay that on the clock
        base_url, model, requests, _ = args
        asyncio.run(openai_requests(base_url, model, requests[:1], 1))
    ready.wait()
    cpu = _cpu_seconds()
    started = time.time()
    load = raw_requests if kind == "raw" else openai_requests
    run = asyncio.run(load(*args))  # type: ignore[operator]
    run.client_cpu = (_cpu_seconds() - cpu) / max(run.wall_s, 1e-9)
    answers.put((run, started, time.time()))


def spread(
    kind: str, base_url: str, requests: Sequence[Sequence[str]], concurrency: int,
    processes: int, extra: tuple[Any, ...],
) -> Run:  # fmt: skip
    """`raw_requests` ("raw", extra=(encoding,)) or `openai_requests` ("openai", extra=(model,))
    with the requests and the concurrency split over `processes` client processes."""
    processes = max(1, processes)
    # the whole concurrency, split as evenly as it goes (128 over 12 is 8 x 11 + 4 x 10)
    base, extra_one = divmod(concurrency, processes)
    parts = [
        _part_args(kind, base_url, requests[i::processes], max(1, base + (i < extra_one)), extra)
        for i in range(processes)
    ]  # fmt: skip
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(len(parts) + 1)
    answers = context.Queue()
    # The parts go through queues once every process runs: as Process arguments, each start
    # would wait for that child to import and read them (megabytes of passages), one by one.
    inboxes = [context.Queue() for _ in parts]
    workers = [
        context.Process(target=_run_part, args=(kind, inbox, ready, answers), daemon=True)
        for inbox in inboxes
    ]  # fmt: skip
    for worker in workers:
        worker.start()
    for inbox, part in zip(inboxes, parts, strict=True):
        inbox.put(part)
    ready.wait(timeout=300)  # every process imported and warmed up
    lag_at_start = _loop_lag_now(base_url)
    results = [answers.get(timeout=1800) for _ in workers]
    lag_at_end = _loop_lag_now(base_url)
    for worker in workers:
        worker.join()
    merged = Run(clients=len(parts))
    for run, _, _ in results:
        merged.texts += run.texts
        merged.tokens += run.tokens
        merged.errors += run.errors
        merged.latencies_s += run.latencies_s
        merged.client_cpu = max(merged.client_cpu, run.client_cpu)
    merged.wall_s = max(end for _, _, end in results) - min(start for _, start, _ in results)
    if lag_at_start and lag_at_end:
        merged.late_ticks_in_load = lag_at_end[1] - lag_at_start[1]
    return merged


def _part_args(
    kind: str, base_url: str, requests: Sequence[Sequence[str]], concurrency: int,
    extra: tuple[Any, ...],
) -> tuple[Any, ...]:  # fmt: skip
    if kind == "raw":
        return (base_url, list(requests), concurrency, *extra)
    return (base_url, *extra, list(requests), concurrency)


async def sequential(
    base_url: str, texts: Sequence[str], interval_s: float = 0.0, encoding: str = "float"
) -> Run:
    """One request at a time (or one every `interval_s`), one text each."""
    run = Run()
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        for index, text in enumerate(texts):
            due = started + index * interval_s
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            await post(session, base_url + "/v1/embeddings", [text], encoding, run)
        run.wall_s = time.perf_counter() - started
    return run


async def lean_sequential(base_url: str, texts: Sequence[str], encoding: str = "float") -> Run:
    """One request at a time over a keep-alive connection, by a client that only writes the
    request's bytes and reads the answer's: what the worker adds to a round trip, without
    aiohttp's per-request cost (or JSON parsing) on the clock. Each answer is checked after
    its clock stops. When the worker closes the connection (`Connection: close`, its
    connection lifetime), the next request reconnects on its own clock, as any client's would."""
    import json
    from urllib.parse import urlsplit

    url = urlsplit(base_url)
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    run = Run()
    try:
        started = time.perf_counter()
        for text in texts:
            body = json.dumps({"input": [text], "encoding_format": encoding}).encode()
            request = (
                f"POST /v1/embeddings HTTP/1.1\r\nHost: {url.netloc}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            sent = time.perf_counter()
            if connection is None:
                connection = await asyncio.open_connection(url.hostname, url.port)
            reader, writer = connection
            writer.write(request)
            status, answer, close = await _read_answer(reader)
            run.latencies_s.append(time.perf_counter() - sent)
            if close:
                writer.close()
                connection = None
            parsed = json.loads(answer)
            if status != 200:
                raise ValueError(f"{status}: {answer[:200]!r}")
            _check_vectors(parsed, 1, encoding)
            run.texts += 1
            run.tokens += int(parsed["usage"]["prompt_tokens"])
        run.wall_s = time.perf_counter() - started
    finally:
        if connection is not None:
            connection[1].close()
    return run


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, whether the server closes the connection) of one HTTP/1.1 answer with a
    Content-Length (the worker's always have one)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(":", 1) for line in lines[1:] if ":" in line)
    body = await reader.readexactly(int(headers["content-length"]))
    return int(lines[0].split()[1]), body, headers.get("connection", "").strip() == "close"


async def mixed(
    base_url: str, stream: Sequence[Sequence[str]], concurrency: int, queries: Sequence[str],
    interval_s: float, encoding: str = "base64",
) -> tuple[Run, Run]:  # fmt: skip
    """A passage stream and, while it runs, one query every `interval_s`. The stream comes from
    a process of its own: reading its answers (a 2,048-vector `float` answer is 56 MB of JSON,
    about a second of a client's CPU) must not stop the clock of the queries beside it."""
    loop = asyncio.get_running_loop()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        await loop.run_in_executor(pool, time.sleep, 0.0)  # up and imported
        stream_task = loop.run_in_executor(
            pool, _raw_in_process, base_url, [list(s) for s in stream], concurrency, encoding
        )
        await asyncio.sleep(0.5)  # the stream is flowing
        query_run = Run()
        sent: list[asyncio.Future[None]] = []
        async with aiohttp.ClientSession() as session:
            started = time.perf_counter()
            for index, text in enumerate(queries):
                if stream_task.done():
                    break
                await asyncio.sleep(max(0.0, started + index * interval_s - time.perf_counter()))
                query = post(session, base_url + "/v1/embeddings", [text], "float", query_run)
                sent.append(asyncio.ensure_future(query))
            await asyncio.gather(*sent)
            query_run.wall_s = time.perf_counter() - started
        return await stream_task, query_run


def _raw_in_process(
    base_url: str, requests: list[list[str]], concurrency: int, encoding: str
) -> Run:
    return asyncio.run(raw_requests(base_url, requests, concurrency, encoding))


async def loop_lag(base_url: str, threshold_s: float = 0.01) -> tuple[float, float] | None:
    """(samples, samples later than `threshold_s`) of the worker's event-loop lag histogram
    so far; None for a worker without it."""
    return await asyncio.to_thread(_loop_lag_now, base_url, threshold_s)


def _loop_lag_now(base_url: str, threshold_s: float = 0.01) -> tuple[float, float] | None:
    series = scrape(base_url)
    total = series.get("embedfleet_event_loop_lag_seconds_count")
    over_le = series.get(f'embedfleet_event_loop_lag_seconds_bucket{{le="{threshold_s}"}}')
    if total is None or over_le is None:
        return None
    return total, total - over_le


def scrape(base_url: str) -> dict[str, float]:
    """The worker's /metrics now: each series (name with its labels) and its value."""
    import urllib.request

    with urllib.request.urlopen(base_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


FULL_GC = 'python_gc_collections_total{generation="2"}'  # the HTTP process's full collections
_ENGINE_SERIES = (
    FULL_GC,
    "embedfleet_engine_busy_seconds_total",
    "embedfleet_batch_size_sum",
    "embedfleet_batch_size_count",
    "embedfleet_queue_wait_seconds_sum",
    "embedfleet_queue_wait_seconds_count",
)


def engine_counters(base_url: str) -> dict[str, float]:
    """The worker's engine counters now (busy seconds, batches, queue waits)."""
    series = scrape(base_url)
    return {name: series[name] for name in _ENGINE_SERIES if name in series}


def engine_activity(
    before: dict[str, float], after: dict[str, float], wall_s: float
) -> dict[str, float]:
    """What the engine did between two `engine_counters` reads: busy share, batches, mean batch
    size and mean queue wait. It tells a starved engine from a saturated one."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in _ENGINE_SERIES}
    batches = d["embedfleet_batch_size_count"]
    waits = d["embedfleet_queue_wait_seconds_count"]
    return {
        "http_full_gc": d[FULL_GC] if FULL_GC in after else None,
        "busy_share": round(d["embedfleet_engine_busy_seconds_total"] / max(wall_s, 1e-9), 3),
        "batches": batches,
        "mean_batch_inputs": round(d["embedfleet_batch_size_sum"] / batches, 1) if batches else 0,
        "mean_queue_wait_ms": round(1000 * d["embedfleet_queue_wait_seconds_sum"] / waits, 2)
        if waits
        else 0,
    }


def process_cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU seconds a process (or one of its threads) has used (Linux /proc)."""
    import os
    from pathlib import Path

    stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def engine_child(pid: int) -> int | None:
    """The worker's engine process (its child `python -m embedfleet_worker.engine.process`)."""
    found = children(pid, b"embedfleet_worker.engine.process")
    return found[0] if found else None


def children(pid: int, module: bytes) -> list[int]:
    """The process's children whose command line names `module`."""
    from pathlib import Path

    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and module in command:
            found.append(int(entry.name))
    return found
