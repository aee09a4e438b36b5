"""Export compiled DSPy prompts as versioned JSON artifacts that run without DSPy.

* :func:`export` writes the artifact: for every predictor the exact messages
  DSPy's adapter sends (inputs as ``⟦input:NAME⟧`` placeholders), demos, output
  fields and reply format, LM settings, metadata and a sha256 content hash.
* :mod:`dspy_ext.runtime` (standard library only; vendor the single
  file) loads, validates, renders and parses artifacts: :func:`load`,
  ``artifact.render(name, **inputs)``, ``artifact.parse(name, reply)``.
* :func:`apply` puts an artifact's instructions and demos back onto a fresh
  program, all-or-nothing.
* :func:`verify` scores a program in DSPy and through the runtime side by side.
* :func:`export_markdown` and :func:`predictor_text` are views for people.

Example:
    >>> from dspy_ext.export import export, load, apply
    >>> with dspy.context(lm=lm, adapter=PlainAdapter()):              # doctest: +SKIP
    ...     export(compiled, "sentiment.prompt.json")
    >>> art = load("sentiment.prompt.json")                            # doctest: +SKIP
    >>> art.parse("predict", my_llm(art.render("predict", input="Dull.")))  # doctest: +SKIP
    {'output': 'negative'}
"""

from __future__ import annotations

from dspy_ext import runtime
from dspy_ext.export.apply import ApplyError, apply, check_program
from dspy_ext.export.exporter import (
    ExportError,
    adapter_from_options,
    build_artifact,
    export,
    lm_settings,
)
from dspy_ext.export.verify import VerifyReport, runtime_program, verify
from dspy_ext.export.views import export_markdown, predictor_text, to_markdown
from dspy_ext.runtime import (
    SCHEMA,
    SCHEMA_VERSION,
    ArtifactError,
    ParseError,
    PromptArtifact,
    RenderError,
    load,
    loads,
)

#: What :func:`export` returns: the artifact as the runtime loads it.
Artifact = PromptArtifact

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "ApplyError",
    "Artifact",
    "ArtifactError",
    "ExportError",
    "ParseError",
    "PromptArtifact",
    "RenderError",
    "VerifyReport",
    "adapter_from_options",
    "apply",
    "build_artifact",
    "check_program",
    "export",
    "export_markdown",
    "lm_settings",
    "load",
    "loads",
    "predictor_text",
    "runtime",
    "runtime_program",
    "to_markdown",
    "verify",
]
