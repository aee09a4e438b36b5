"""API and served models (OpenAI, vLLM, Ollama, llama.cpp's server) on a metered engine.

DSPy's own engines (native lm15 or LiteLLM) do not report to dspy-ext's call
meters, so a budget would not hold for them. :func:`metered_lm` puts any
``dspy.LM`` behind a :class:`ServedEngine`: a
:class:`~dspy_ext.lm.engine.MeteredEngine` whose one try is one request through
the user's LM (its provider, endpoint and key untouched, DSPy's cache and
retries off). So on a served model, as on the embedded one:

* every try is reserved on the active meters first: the call cap is exact under
  threads, and retries count;
* the provider's token usage and finish reason are recorded;
* transient errors (429 with ``Retry-After``, 5xx, resets, timeouts) are retried
  with backoff under the active :class:`~dspy_ext.lm.retry.CallPolicy`;
* the run's call journal (DSPy's response cache slot) sees every reply, so a
  killed compile resumes without paying twice.

Two abilities of the embedded model also work on an OpenAI-compatible endpoint that allows them:

* **likelihood scoring** (:meth:`ServedEngine.score_continuations`): each continuation is one
  ``POST {api_base}/completions`` with ``echo: true, logprobs: 1, max_tokens: 1`` on the chat
  messages rendered by a declared :class:`ChatTemplate` (ChatML by default, SmolLM2's and Qwen's);
  the server returns the log-probability of every prompt token, and the reply's are summed.
  Whether the endpoint can do it is decided once, by a probe (one metered request scoring a tiny
  reply rendered by the template, so a server that shows no such reply fails before any scoring),
  or declared with ``likelihood=True/False``; without a declared base URL it is unavailable. A
  scoring request the endpoint refuses later raises :class:`LikelihoodUnavailable` and decides
  "unavailable" from then on.
* **constrained decoding** (:meth:`ServedEngine.generate_choice`): one ``POST
  {api_base}/chat/completions`` whose ``response_format`` is a JSON schema with an enum of the
  labels, so the reply is one of them. OpenAI's form (``{"type": "json_schema", ...}``) is sent
  first; an endpoint that refuses it (llama-cpp-python's server) gets
  ``{"type": "json_object", "schema": ...}``, and the engine remembers which form worked.

Both are metered and retried exactly like a generation try. They do not pass through DSPy's cache,
but every request (the probe included) goes into the run's call journal, so a resumed compile
replays them instead of paying for them again.

:func:`check_endpoint` asks an OpenAI-compatible endpoint for its model list
before anything is spent, so a closed port, an unknown host, a refused key or an
unknown model stops a command within seconds, with one line.

Example:
    >>> lm = make_lm("openai/smollm2", api_base="http://127.0.0.1:8765/v1", api_key="sk-local")  # doctest: +SKIP
    >>> isinstance(lm.engine, ServedEngine)                                                    # doctest: +SKIP
    True
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

import dspy
from dspy.lm15 import Request

from dspy_ext.lm.engine import Generation, MeteredEngine, generation_of
from dspy_ext.lm.journal import active_journal
from dspy_ext.lm.likelihood import ContinuationScore, LikelihoodUnavailable
from dspy_ext.lm.metering import Price, find_budget_exhausted
from dspy_ext.lm.retry import active_call_policy

logger = logging.getLogger(__name__)

__all__ = [
    "CHATML",
    "CHECK_TIMEOUT",
    "ChatTemplate",
    "EndpointError",
    "ServedEngine",
    "check_endpoint",
    "endpoint_of",
    "metered_lm",
]

# LiteLLM downloads its price list from the internet on first use unless told to read its bundled copy.
# This is an environment default for LiteLLM only (a user's own value is kept); nothing dspy-ext runs may
# reach the internet.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

#: The journal kind of a request a served engine sends itself (see :mod:`dspy_ext.lm.journal`).
SERVED_CALL = "served"

#: Seconds :func:`check_endpoint` waits for an endpoint's model list by default.
CHECK_TIMEOUT = 30.0

#: Client settings of a ``dspy.LM`` that configure its connection (kept on the inner LM only).
_CLIENT_KEYS = ("api_key", "api_base", "base_url", "timeout", "organization", "api_version")


class EndpointError(ValueError):
    """The model's endpoint cannot be used: closed port, unknown host, refused key or unknown model.

    One line naming the endpoint and the cause (the CLI prints it and exits with code 2).
    """


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """How a served model's chat template renders messages into one prompt string (for likelihood scoring).

    ``/v1/completions`` takes raw text, so the engine renders the chat itself; the rendering must be
    the server's for the scores to be those of a chat reply. Nothing tells a client which template a
    server applies, so it is declared (:data:`CHATML` by default). A wrong template gives scores of a
    different prompt; only one whose reply (or end of turn) the server's tokens do not show is caught,
    by the probe (see :meth:`ServedEngine.likelihood_unavailable`).

    Attributes:
        name: Shown in messages.
        turn: One message, with ``{role}`` and ``{content}`` placeholders.
        assistant_cue: What opens the assistant's reply.
        end_of_turn: What closes a reply (scored when ``end_of_turn=True``).
        special: The template's special-token strings; a server's detokenizer drops them, which is
            how the reply's tokens are located among the prompt's.
    """

    name: str
    turn: str
    assistant_cue: str
    end_of_turn: str
    special: tuple[str, ...] = ()

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        """The prompt up to (and with) the assistant cue."""
        turns = "".join(self.turn.format(role=m["role"], content=m.get("content") or "") for m in messages)
        return turns + self.assistant_cue

    def plain(self, text: str) -> str:
        """``text`` without its special-token strings (what the server's token offsets count)."""
        for token in self.special:
            text = text.replace(token, "")
        return text


#: ChatML (SmolLM2, Qwen, many fine-tunes). SmolLM2's own template also adds a default system
#: message when there is none; DSPy's adapters always send one, so this rendering is the same.
CHATML = ChatTemplate(
    "chatml",
    "<|im_start|>{role}\n{content}<|im_end|>\n",
    "<|im_start|>assistant\n",
    "<|im_end|>",
    ("<|im_start|>", "<|im_end|>"),
)


class _HTTPStatusError(RuntimeError):
    """An endpoint answered with an error status (``status_code`` is ``None`` for a refused request body)."""

    def __init__(self, url: str, status: int, text: str) -> None:
        super().__init__(f"{url}: HTTP {status}: {text[:300]}")
        self.url = url
        self.http_status = status
        # llama-cpp-python's server answers a request it cannot validate with 500: not worth a retry.
        self.status_code = None if "validation error" in text.lower() else status
        self.text = text


class ServedEngine(MeteredEngine):
    """Runs each try as one request through a ``dspy.LM`` of any provider, metered like the embedded model.

    Args:
        inner: The user's LM (provider, endpoint, key). A copy with DSPy's response cache and
            retries off is kept, so that each try is exactly one request to the provider.
        price: What the model charges (a served model's, declared by you). ``None``: DSPy's
            estimate from the provider's usage and its bundled price list; unknown where that has
            no price (reported as unknown, never as 0). Scoring and constrained requests are
            priced by ``price`` only (unknown without one).
        chat_template: How the served model renders chat messages (see :class:`ChatTemplate`);
            used by likelihood scoring only.
        likelihood: Whether the endpoint returns prompt log-probabilities on ``/completions``:
            ``True`` (trusted, no probe), ``False`` (off), ``None`` (probe once, on first need,
            with a one-token request that is metered like any try).

    Attributes:
        inner: That copy.
        meters_own_requests: Scoring requests are metered here, one per request (not by the caller).
    """

    meters_own_requests = True

    def __init__(
        self,
        inner: dspy.LM,
        *,
        price: Price | None = None,
        chat_template: ChatTemplate = CHATML,
        likelihood: bool | None = None,
    ) -> None:
        if isinstance(getattr(inner, "engine", None), MeteredEngine):
            raise TypeError(f"{inner.model!r} already runs on a metered engine")
        self.inner = inner.copy(cache=False, num_retries=0)
        self.price = price
        self.chat_template = chat_template
        self.likelihood = likelihood
        self._likelihood_reason: str | None = None if likelihood is not False else "likelihood=False was declared"
        self._probed = likelihood is not None
        #: Why the end-of-turn token cannot be scored here (found by the probe), or ``None``.
        self.end_of_turn_unavailable: str | None = None
        self._schema_form: str | None = None

    def generate(self, request: Request) -> Generation:
        with dspy.context(disable_history=True, usage_tracker=None):
            response = self.inner(request)
        generation = generation_of(response)
        if self.price is not None:
            return generation
        return dataclasses.replace(generation, cost=self._estimate(response))

    def _estimate(self, response: Any) -> float | None:
        from dspy.clients.costs import estimate_cost

        provider, _, model = self.inner.model.rpartition("/")
        try:
            cost, _details = estimate_cost(response, provider=provider or "openai", requested_model=model)
        except Exception:  # advisory, as in DSPy: an unreadable price is unknown, never a failed call
            return None
        return cost

    def close(self) -> None:
        self.inner.close()

    # ---- scoring given replies, and choosing among labels -----------------------------------------
    def _served_name(self) -> str:
        return self.inner.model.partition("/")[2] or self.inner.model

    @property
    def probe_pending(self) -> bool:
        """Whether the endpoint's scoring is still to be probed (one request, made on first need)."""
        return not self._probed

    def likelihood_unavailable(self) -> str | None:
        """Why this endpoint cannot score a given reply, or ``None`` when it can.

        Decided once per engine: by ``likelihood`` when declared, else by a probe (one metered request
        that scores the reply ``Hi`` to ``Hi`` rendered by the chat template, end of turn included, so
        that a server whose prompt tokens do not show the template's reply is told apart before any
        scoring starts). A probe refused for lack of budget decides nothing; one that fails through
        every retry (or is answered 404, 400, ...) decides "unavailable" for good, and so does a
        scoring request the endpoint refuses later.
        """
        if self._probed:
            return self._likelihood_reason
        base, _ = endpoint_of(self.inner)
        if not base:
            reason = (
                f"{self.inner.model!r} has no declared api_base; hosted chat APIs return no prompt log-probabilities"
            )
        else:
            reason = self._probe()
            if reason is not None:
                reason = f"{base}/completions cannot score a given reply ({reason})"
        self._likelihood_reason, self._probed = reason, True
        if reason is not None:
            logger.info("likelihood scoring unavailable: %s", reason)
        return reason

    def _probe(self) -> str | None:
        """Score one tiny chat reply; why that failed, or ``None`` (sets what :meth:`score_continuations` checks)."""
        prefix = self.chat_template.render([{"role": "user", "content": "Hi"}])
        prompt = prefix + "Hi" + self.chat_template.end_of_turn
        body = {"model": self._served_name(), "prompt": prompt, "echo": True, "logprobs": 1, "max_tokens": 1}
        try:
            reply = self._request("/completions", {**body, "temperature": 0})
        except Exception as exc:
            if find_budget_exhausted(exc) is not None:
                raise
            return _unavailable_reason(exc)
        if _token_logprobs(reply) is None:
            return "its /completions reply has no logprobs"
        try:
            self._reply_score(reply, prefix, "Hi", False)
        except ValueError:
            return f"its prompt tokens do not show a reply rendered by the {self.chat_template.name!r} chat template"
        try:
            self._reply_score(reply, prefix, "Hi", True)
        except ValueError:
            self.end_of_turn_unavailable = (
                f"the {self.chat_template.name!r} template's end of turn is not among the server's prompt tokens"
            )
        return None

    def score_continuations(
        self, messages: list[dict[str, str]], continuations: Sequence[str], *, end_of_turn: bool = True
    ) -> list[ContinuationScore]:
        """Log-probability of each continuation as the assistant's reply, from the server's prompt logprobs.

        One metered ``/completions`` request per continuation (``echo``, ``logprobs: 1``,
        ``max_tokens: 1``: the one generated token is not scored). A reply token that merges with
        the assistant cue is scored whole.

        Raises:
            LikelihoodUnavailable: The endpoint cannot score (see :meth:`likelihood_unavailable`).
            BudgetExhausted: An active meter has no call left.
        """
        reason = self.likelihood_unavailable() or (self.end_of_turn_unavailable if end_of_turn else None)
        if reason is not None:
            raise LikelihoodUnavailable(reason)
        prefix = self.chat_template.render(messages)
        suffix = self.chat_template.end_of_turn if end_of_turn else ""
        scores = []
        for text in continuations:
            body = {"model": self._served_name(), "prompt": prefix + text + suffix, "echo": True, "logprobs": 1}
            try:
                reply = self._request("/completions", {**body, "max_tokens": 1, "temperature": 0})
            except _HTTPStatusError as exc:
                raise self._unavailable_from_now(f"/completions refused a scoring request ({exc})") from exc
            try:
                scores.append(self._reply_score(reply, prefix, text, end_of_turn))
            except (LikelihoodUnavailable, ValueError) as exc:  # no logprobs, or the reply is not found in them
                raise self._unavailable_from_now(str(exc)) from None
        return scores

    def _unavailable_from_now(self, reason: str) -> LikelihoodUnavailable:
        """Decide "unavailable" for good (later checks say so without a request); the error to raise."""
        self._likelihood_reason, self._probed = reason, True
        logger.warning("likelihood scoring unavailable from now on: %s", reason)
        return LikelihoodUnavailable(reason)

    def _reply_score(self, reply: dict, prefix: str, text: str, end_of_turn: bool) -> ContinuationScore:
        logprobs = _token_logprobs(reply)
        if logprobs is None:
            raise LikelihoodUnavailable("the /completions reply has no logprobs")
        start = len(self.chat_template.plain(prefix))
        end = start + len(self.chat_template.plain(text))
        total, count, eot = 0.0, 0, False
        for token, offset, value in logprobs:
            if offset + len(token) <= start or value is None:
                continue  # the prompt's own tokens (a token that reaches into the reply is the reply's)
            if offset >= end:
                if not (end_of_turn and not eot and offset == end and token == ""):
                    break  # the one generated token
                eot = True  # the end-of-turn special token (the detokenizer drops its text)
            total += float(value)
            count += 1
        if count == 0 or (end_of_turn and not eot):
            raise ValueError(f"cannot find the reply {text!r} among the server's prompt tokens")
        usage = reply.get("usage") or {}
        return ContinuationScore(total, count, int(usage.get("prompt_tokens") or 0))

    def generate_choice(
        self, messages: list[dict[str, str]], labels: Sequence[str], *, field: str = "output", max_tokens: int = 64
    ) -> str:
        """One of ``labels``, generated under a JSON-schema enum ``response_format`` (one metered request).

        Raises:
            ValueError: The endpoint ignored the schema (the reply is not one of the labels).
        """
        schema = {
            "type": "object",
            "properties": {field: {"type": "string", "enum": list(labels)}},
            "required": [field],
            "additionalProperties": False,
        }
        forms = {
            "json_schema": {"type": "json_schema", "json_schema": {"name": "label", "schema": schema, "strict": True}},
            "json_object": {"type": "json_object", "schema": schema},
        }
        order = [self._schema_form] if self._schema_form else ["json_schema", "json_object"]
        body = {"model": self._served_name(), "messages": messages, "max_tokens": max_tokens, "temperature": 0}
        for form in order:
            try:
                reply = self._request("/chat/completions", {**body, "response_format": forms[form]})
            except _HTTPStatusError as exc:
                if form == order[-1] or "response_format" not in exc.text:
                    raise
                continue  # this endpoint spells a schema the other way
            self._schema_form = form
            content = ((reply.get("choices") or [{}])[0].get("message") or {}).get("content") or ""
            try:
                label = json.loads(content)[field]
            except (ValueError, TypeError, KeyError):
                label = None
            if label not in labels:
                raise ValueError(f"the endpoint did not keep to the label schema: {content[:200]!r}")
            return label
        raise AssertionError("unreachable")

    def _request(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to the endpoint: every try reserved on the active meters and retried like a generation.

        In a journaled compile the request goes into the run's call journal (kind ``"served"``): an
        answer, or a refusal (an HTTP error that is not retried), is replayed on a resumed run and
        charged as it was, one call.
        """
        journal = active_journal()
        key = None
        if journal is not None:
            key = journal.call_key(SERVED_CALL, {"model": self.inner.model, "path": path, "body": body})
            replayed = journal.replay_call(key)
            if replayed is not None:
                refused = replayed.get("refused")
                if refused is not None:
                    raise _HTTPStatusError(refused["url"], refused["status"], refused["text"])
                return replayed["reply"]
        replies: list[dict[str, Any]] = []

        def attempt(timeout: float | None) -> Generation:
            reply = self._post(path, body, timeout)
            replies.append(reply)
            usage = reply.get("usage") or {}
            return Generation("", int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))

        refused = lambda exc: isinstance(exc, _HTTPStatusError) and exc.status_code is None
        try:
            generation, cost = self.metered(attempt, final=refused)
        except _HTTPStatusError as exc:  # refused, not retried: a resumed run is refused the same way
            if journal is not None:
                record = {"refused": {"url": exc.url, "status": exc.http_status, "text": exc.text}}
                journal.record_call(key, SERVED_CALL, record, {"failed": True})
            raise
        if journal is not None:
            usage = {"input_tokens": generation.input_tokens, "output_tokens": generation.output_tokens, "cost": cost}
            journal.record_call(key, SERVED_CALL, {"reply": _journal_form(replies[-1])}, usage)
        return replies[-1]

    def _post(self, path: str, body: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        base, key = endpoint_of(self.inner)
        if not base and self.inner.model.startswith("openai/"):
            base = "https://api.openai.com/v1"  # OpenAI's own address, where no other is declared
        if not base:
            raise ValueError(f"{self.inner.model!r} has no declared api_base to send {path} to")
        url = base.rstrip("/") + path
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout or 600.0) as answer:
                return json.loads(answer.read().decode("utf-8", "replace"))
        except urllib.error.HTTPError as exc:
            raise _HTTPStatusError(url, exc.code, exc.read().decode("utf-8", "replace")) from None


def _token_logprobs(reply: dict[str, Any]) -> list[tuple[str, int, float | None]] | None:
    """``(token text, text offset, logprob)`` of every token of a ``/completions`` reply, or ``None``."""
    try:
        logprobs = reply["choices"][0]["logprobs"]
        rows = list(zip(logprobs["tokens"], logprobs["text_offset"], logprobs["token_logprobs"], strict=True))
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return rows or None


def _journal_form(reply: dict[str, Any]) -> dict[str, Any]:
    """What the engine reads of a reply (usage, message, token logprobs), as the call journal keeps it.

    A ``/completions`` reply with ``echo`` holds every prompt token's top log-probabilities, which
    nothing here reads; they are left out.
    """
    choices = reply.get("choices") if isinstance(reply, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return reply
    first = {k: v for k, v in choices[0].items() if k in ("message", "text", "finish_reason", "index")}
    logprobs = choices[0].get("logprobs")
    if isinstance(logprobs, dict):
        first["logprobs"] = {k: logprobs[k] for k in ("tokens", "text_offset", "token_logprobs") if k in logprobs}
    elif "logprobs" in choices[0]:
        first["logprobs"] = logprobs
    return {"usage": reply.get("usage"), "choices": [first]}


def _unavailable_reason(exc: BaseException) -> str:
    status = getattr(exc, "http_status", None)
    if status is not None:
        return f"HTTP {status}"
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}"


def metered_lm(
    lm: dspy.BaseLM, *, price: Price | None = None, chat_template: ChatTemplate = CHATML, likelihood: bool | None = None
) -> dspy.BaseLM:
    """``lm`` on a :class:`ServedEngine`, if it is a ``dspy.LM`` on one of DSPy's own engines (``auto``,
    ``lm15``, ``litellm``); any other LM (on an engine object, dspy-ext's or your own, or a custom
    ``BaseLM``) is returned as it is.

    The result has the same model string and generation settings, so DSPy's cache key and the run's
    call journal are those of the original LM.

    Args:
        lm: Any LM.
        price, chat_template, likelihood: See :class:`ServedEngine`.
    """
    if not isinstance(lm, dspy.LM) or not isinstance(lm.engine, str):
        return lm
    kwargs = {k: v for k, v in lm.kwargs.items() if k not in _CLIENT_KEYS}
    engine = ServedEngine(lm, price=price, chat_template=chat_template, likelihood=likelihood)
    return dspy.LM(lm.model, model_type=lm.model_type, engine=engine, cache=lm.cache, num_retries=0, **kwargs)


def _user_lm(lm: dspy.LM) -> dspy.LM:
    """The LM that really sends the requests: a :class:`ServedEngine`'s inner LM, else ``lm`` itself."""
    engine = getattr(lm, "engine", None)
    return engine.inner if isinstance(engine, ServedEngine) else lm


def endpoint_of(lm: dspy.LM) -> tuple[str | None, str | None]:
    """The OpenAI-compatible base URL and API key ``lm`` sends to (``None`` where it does not say)."""
    inner = _user_lm(lm)
    kwargs = getattr(inner, "kwargs", {}) or {}
    base = kwargs.get("api_base") or kwargs.get("base_url")
    key = kwargs.get("api_key")
    if getattr(inner, "model", "").startswith("openai/"):
        base = base or os.environ.get("OPENAI_API_BASE") or os.environ.get("OPENAI_BASE_URL")
        key = key or os.environ.get("OPENAI_API_KEY")
    return base, key


def check_endpoint(lm: dspy.LM, *, timeout: float | None = None) -> None:
    """Ask ``lm``'s OpenAI-compatible endpoint for ``GET /models``; raise one clear error if it cannot serve.

    No completion is requested, so nothing is spent. An LM without a declared endpoint (a hosted API on
    its default address) and an endpoint that does not list models are not checked. A closed port, an
    unknown host and a refused key fail at once; only an endpoint that does not answer waits ``timeout``.

    Args:
        lm: The LM.
        timeout: Seconds to wait for the listing. ``None``: :data:`CHECK_TIMEOUT` (30 s: a server's first
            request after a restart can be slow), or the active call policy's timeout where that is longer.

    Raises:
        EndpointError: Connection refused, unknown host, no answer within ``timeout``, HTTP 401/403
            (the key), or a model list that does not hold the model.
    """
    if timeout is None:
        timeout = max(CHECK_TIMEOUT, active_call_policy(getattr(lm, "engine", None)).timeout or 0.0)
    base, key = endpoint_of(lm)
    if not base:
        return
    url = base.rstrip("/") + "/models"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            listing = json.loads(answer.read().decode("utf-8", "replace"))
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise EndpointError(f"{base}: the endpoint refused the API key (HTTP {exc.code})") from None
        return  # an endpoint without a model list: the first call will tell
    except (urllib.error.URLError, OSError) as exc:
        raise EndpointError(f"{base}: cannot reach the model endpoint ({_reason(exc, timeout)})") from None
    except ValueError:
        return  # not JSON: not an OpenAI-compatible listing
    _check_model_listed(_user_lm(lm).model, base, listing)


def _reason(exc: BaseException, timeout: float) -> str:
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return "unknown host"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"no answer within {timeout:g} s"
    return f"{type(reason).__name__}: {reason}"


def _check_model_listed(model: str, base: str, listing: Any) -> None:
    data = listing.get("data") if isinstance(listing, dict) else None
    served = [m.get("id") for m in data if isinstance(m, dict)] if isinstance(data, list) else []
    wanted = model.partition("/")[2] or model
    if served and wanted not in served:
        shown = ", ".join(str(s) for s in served[:10])
        raise EndpointError(f"{base}: model {wanted!r} is not served there (it serves: {shown})")
