"""Views of an artifact for people: Markdown for the whole artifact, plain text per predictor."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from dspy_ext.runtime import PromptArtifact, load

__all__ = ["export_markdown", "predictor_text", "to_markdown"]


def _fence(text: str) -> str:
    """A backtick fence longer than any backtick run inside ``text``."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text.replace("|", "\\|").replace("\n", " ")


def _block(text: str) -> list[str]:
    fence = _fence(text)
    return [f"{fence}text", text, fence]


def _load(artifact_or_path: PromptArtifact | str | os.PathLike[str]) -> PromptArtifact:
    return artifact_or_path if isinstance(artifact_or_path, PromptArtifact) else load(artifact_or_path)


def to_markdown(artifact: PromptArtifact) -> str:
    """The artifact as a Markdown document: metadata, LM settings, and per predictor its fields and messages.

    Args:
        artifact: A loaded artifact.

    Returns:
        Markdown text.

    Example:
        >>> print(to_markdown(load("p.prompt.json"))[:40])   # doctest: +SKIP
        # Prompt artifact `p.prompt.json`
    """
    lines = _summary_lines(artifact)
    for name in artifact.names:
        lines += _predictor_lines(name, artifact.data["predictors"][name])
    return "\n".join(lines).rstrip() + "\n"


def _summary_lines(artifact: PromptArtifact) -> list[str]:
    """The title, schema, hash and predictor names, the metadata table and the LM settings."""
    title = Path(artifact.path).name if artifact.path else "prompt artifact"
    lines = [f"# Prompt artifact `{title}`", ""]
    lines += [
        f"- schema: `{artifact.data['schema']}` version {artifact.schema_version}",
        f"- content hash (sha256): `{artifact.content_hash}`",
        f"- predictors: {', '.join(f'`{n}`' for n in artifact.names)}",
        "",
        "## Metadata",
        "",
        "| key | value |",
        "| --- | --- |",
    ]
    lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in artifact.data["metadata"].items()]
    lines += ["", "## LM settings", ""]
    lm = artifact.data["lm"]
    if lm is None:
        lines.append("No LM was configured at export.")
    else:
        lines += ["| key | value |", "| --- | --- |"]
        lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in lm.items()]
    return lines


def _predictor_lines(name: str, entry: dict) -> list[str]:
    """One predictor's section: adapter, demos, reply format, instructions, fields and messages."""
    lines = ["", f"## Predictor `{name}`", ""]
    lines += [
        f"- adapter: {entry['adapter']} {json.dumps(entry['adapter_options'])}",
        f"- demos: {len(entry['demos'])}",
        f"- reply format: {entry['parse']['format']}"
        + (" (JSON fallback on a failed parse)" if entry["fallback"] else ""),
    ]
    if entry["lm_kwargs"]:
        lines.append(f"- LM settings of this predictor: `{json.dumps(entry['lm_kwargs'])}`")
    lines += ["", "### Instructions", ""]
    lines += _block(entry["instructions"])
    lines += [
        "",
        "### Fields",
        "",
        "| role | name | type | prefix | description |",
        "| --- | --- | --- | --- | --- |",
    ]
    for role, key in (("input", "input_fields"), ("output", "output_fields")):
        for field in entry[key]:
            lines.append(
                f"| {role} | `{field['name']}` | `{_cell(field['type'])}` | {_cell(field['prefix'])} | "
                f"{_cell(field['desc'])} |"
            )
    lines += ["", "### Messages", "", "Input values go where the placeholders `⟦input:NAME⟧` stand.", ""]
    for i, message in enumerate(entry["messages"]):
        lines += [f"**{i + 1}. {message['role']}**", ""]
        lines += _block(message["content"])
        lines.append("")
    return lines


def export_markdown(
    artifact_or_path: PromptArtifact | str | os.PathLike[str],
    path: str | os.PathLike[str] | None = None,
) -> str:
    """Render the Markdown view of an artifact and optionally write it.

    Args:
        artifact_or_path: A loaded artifact or the path of one.
        path: Where to write the Markdown (``None``: only return it).

    Returns:
        The Markdown text.

    Example:
        >>> export_markdown("p.prompt.json", "p.prompt.md")   # doctest: +SKIP
    """
    text = to_markdown(_load(artifact_or_path))
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text


def predictor_text(artifact_or_path: PromptArtifact | str | os.PathLike[str], name: str) -> str:
    """The plain-text view of one predictor's messages (see ``PromptArtifact.text``).

    Args:
        artifact_or_path: A loaded artifact or the path of one.
        name: The predictor name.

    Returns:
        The messages, each under a ``===== role =====`` line.

    Example:
        >>> print(predictor_text("p.prompt.json", "predict"))   # doctest: +SKIP
    """
    return _load(artifact_or_path).text(name)
