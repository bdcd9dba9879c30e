"""Preparation after Ready (engine/preparation.py): the runner's steps run on the compute
thread between batches, a request never waits behind more than one step, and a step that fails
ends the preparation while the engine keeps serving."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest

from embedfleet_worker.engine.executor import EmbeddingEngine, EngineConfig
from embedfleet_worker.engine.options import EmbedOptions
from embedfleet_worker.engine.preparation import Preparation
from embedfleet_worker.model.loader import LoadedModel, ModelSpec, load_model
from tests.modelzoo import minilm_dir


@pytest.fixture(scope="module")
def minilm() -> LoadedModel:
    return load_model(ModelSpec(model=str(minilm_dir()), device="cpu"))


def steps(outcomes: list[bool | Exception], ran: list[str]) -> Iterator[bool]:
    for outcome in outcomes:
        ran.append(threading.current_thread().name)
        if isinstance(outcome, Exception):
            raise outcome
        yield outcome


@pytest.mark.parametrize(
    ("outcomes", "returns", "prepared"),
    [
        ([], [False], True),  # nothing to prepare: ends at the first step
        ([True, True], [True, True, False], True),
        ([False, True], [False, True, False], True),  # waiting on background work, a step
        ([True, RuntimeError("compile failed")], [True, False], False),  # logged, not raised
    ],
)
def test_steps_until_the_preparation_ends(
    outcomes: list[bool | Exception], returns: list[bool], prepared: bool
) -> None:
    done: list[bool] = []
    prep = Preparation(steps(outcomes, []), on_done=done.append)
    assert [prep.step() for _ in returns] == returns
    assert not prep.pending
    assert prep.step() is False  # ended: nothing more, on_done not called again
    assert done == [prepared]


def test_a_busy_engine_steps_once_per_interval() -> None:
    prep = Preparation(iter([True, True]), busy_interval=1.0)
    assert prep.due(100.0)
    prep.step()
    now = time.perf_counter()
    assert not prep.due(now + 0.5)
    assert prep.due(now + 1.0)


def test_a_failing_step_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    prep = Preparation(steps([RuntimeError("CUDA graph capture failed")], []))
    with caplog.at_level(logging.WARNING, logger="embedfleet.worker"):
        assert prep.step() is False
    assert "serves unprepared" in caplog.text
    assert "CUDA graph capture failed" in caplog.text


def test_requests_are_served_between_the_steps_on_the_compute_thread(
    minilm: LoadedModel,
) -> None:
    """Twenty steps of 0.1 s: a request sent while they run is answered after at most one of
    them (well before the last), and every step ran on the compute thread."""
    assert minilm.encoder is not None
    ran: list[str] = []
    prepared = threading.Event()

    def slow_steps() -> Iterator[bool]:
        for _ in range(20):
            ran.append(threading.current_thread().name)
            time.sleep(0.1)
            yield True

    engine = EmbeddingEngine(minilm.runner, minilm.encoder, EngineConfig())
    engine.start()
    time.sleep(0.2)  # idle, before it is given the preparation: it waits for work
    engine.prepare_between_batches(Preparation(slow_steps(), on_done=lambda _: prepared.set()))
    try:
        time.sleep(0.25)  # a few steps in
        answered = threading.Event()
        sent = time.perf_counter()
        engine.submit(
            minilm.encoder.encode(["a question"], EmbedOptions()),
            EmbedOptions(),
            on_done=lambda result, error: answered.set(),
        )
        assert answered.wait(30)
        waited = time.perf_counter() - sent
        steps_by_then = len(ran)
        assert prepared.wait(30)
    finally:
        engine.stop()
    assert steps_by_then < 20, "the request waited for the whole preparation"
    assert waited < 1.0, waited  # one 0.1 s step and the batch, with room for a slow machine
    assert set(ran) == {"embedfleet-compute"}


def test_an_engine_that_stops_mid_preparation_stops(minilm: LoadedModel) -> None:
    def endless() -> Iterator[bool]:
        while True:
            time.sleep(0.01)
            yield True

    engine = EmbeddingEngine(minilm.runner, minilm.encoder, EngineConfig())
    engine.start()
    engine.prepare_between_batches(Preparation(endless()))
    time.sleep(0.1)
    started = time.perf_counter()
    engine.stop(10)
    assert time.perf_counter() - started < 5
    assert not engine.running
