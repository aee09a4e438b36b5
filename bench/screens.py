"""Issue 19: which screen DemoSearch uses by default (likelihood, accuracy or the blend of both).

One command runs every missing cell (each one a resumable `dspy-ext compare` cell, so an interrupted run
continues where it stopped) and writes the section "Issue 19: DemoSearch's default screen" of
docs/benchmarks.md:

    python bench/screens.py --jobs 2

It runs the code of this checkout (``PYTHONPATH`` set to it, ``DSPY_EXT_LLAMA_THREADS=1``), one command per
screen S and public task T:

    python -m dspy_ext compare --task T --optimizers demo-search \\
        --optimizer-config '{"demo-search": {"screen_by": S}}' --budget 400 --seeds 3 --seed 0 --threads 1 \\
        --out bench/results/issue19_screens/S/T

``--collect-only`` tabulates what is stored. Cells that have not finished are shown as missing, never
estimated, and the rule choosing the default is applied only when every cell has finished. The answer rule
each run chose is read from its run folder (``runs/``, not kept in git) into ``choices.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cells import run_grid  # noqa: E402
from issue10 import SEEDS, cells, fmean, paired_text  # noqa: E402

SCREENS = ["likelihood", "accuracy", "blend"]
DEFAULT = "likelihood"
TASKS = ["sentiment", "first_word_letter", "larger_animal", "singular_to_plural", "sentence_similarity"]
RESULTS = Path("bench") / "results" / "issue19_screens"  # relative to ROOT, the working folder of every command
CHOICES = RESULTS / "choices.json"
TITLE = "Issue 19: DemoSearch's default screen"
MARGIN = 1.0
RULE = (
    "The default screen is the one with the highest mean test score over the five public tasks (sentiment, "
    "first_word_letter, larger_animal, singular_to_plural, sentence_similarity) x seeds 0-2 at budget 400. A "
    "screen other than the current default (likelihood) replaces it only if its mean is higher by at least 1.0 "
    "point; the held-out tasks are not looked at for this choice."
)


# ---- running -------------------------------------------------------------------------------------------
def commands() -> list[list[str]]:
    """One ``compare`` command per (task, screen), task by task so that a cut-off run leaves whole tasks."""
    jobs = []
    for task in TASKS:
        for screen in SCREENS:
            jobs.append(
                [sys.executable, "-m", "dspy_ext", "compare", "--task", task, "--optimizers", "demo-search"]
                + ["--optimizer-config", json.dumps({"demo-search": {"screen_by": screen}})]
                + ["--budget", "400", "--seeds", "3", "--seed", "0", "--threads", "1"]
                + ["--out", str(RESULTS / screen / task)]
            )
    return jobs


# ---- reading -------------------------------------------------------------------------------------------
def runs(screen: str, task: str) -> dict[int, dict]:
    """``{seed: {"row": ..., "scores": [...]}}`` of the finished demo-search cells of ``screen`` on ``task``."""
    found = cells(RESULTS / screen / task)
    return {s: found[("demo-search", s)] for s in SEEDS if ("demo-search", s) in found}


def collect_choices() -> dict[str, dict]:
    """The search's choices per cell (answer rule, screen that ran, k), read from the run folders and kept in
    ``choices.json`` (the run folders are not in git)."""
    kept = json.loads(CHOICES.read_text()) if CHOICES.exists() else {}
    for screen in SCREENS:
        for task in TASKS:
            for seed, cell in runs(screen, task).items():
                summary = Path(cell["row"]["out"]) / "run.json"
                if summary.exists():
                    search = json.loads(summary.read_text()).get("search") or {}
                    kept[f"{screen}/{task}/{seed}"] = {
                        **{key: search.get(key) for key in ("answers", "screening", "screening_note", "k")},
                        "screened_arms": sum(
                            1 for r in search.get("racing") or [] if r.get("screened_by") and r.get("answer") == "free"
                        ),
                    }
    CHOICES.parent.mkdir(parents=True, exist_ok=True)
    CHOICES.write_text(json.dumps(kept, indent=1, sort_keys=True) + "\n")
    return kept


def answer_rule(choices: dict[str, dict], screen: str, task: str, seed: int) -> str:
    """The answer rule the run chose ("?" when its run folder was not read)."""
    answers = (choices.get(f"{screen}/{task}/{seed}") or {}).get("answers") or {}
    return "/".join(sorted(set(answers.values()))) or "?"


def cell_text(screen: str, task: str, choices: dict[str, dict]) -> tuple[str, float | None]:
    """A table cell: mean test % (per-seed scores; mean calls; mean val-test gap; answer rule per seed)."""
    done = runs(screen, task)
    if not done:
        return "missing (seeds 0-2)", None
    rows = [done[s]["row"] for s in sorted(done)]
    tests = [r["test_score"] for r in rows]
    gaps = [r["val_score"] - r["test_score"] for r in rows if r.get("val_score") is not None]
    rules = ", ".join(answer_rule(choices, screen, task, s) for s in sorted(done))
    gap = f"; gap {fmean(gaps):+.1f}" if gaps else ""
    text = (
        f"{fmean(tests):.1f} ({', '.join(f'{t:.0f}' for t in tests)}; "
        f"{fmean([r['lm_calls'] for r in rows]):.0f} calls{gap}; rule {rules})"
    )
    missing = [s for s in SEEDS if s not in done]
    if missing:
        return text + f" **seed {', '.join(map(str, missing))} missing**", None
    return text, fmean(tests)


def screens_table(choices: dict[str, dict]) -> tuple[str, dict[str, float]]:
    """Tasks x screens, the mean over tasks, and the means of the screens whose every cell finished."""
    lines = ["| task | " + " | ".join(SCREENS) + " |", "|---" * (len(SCREENS) + 1) + "|"]
    means: dict[str, list[float]] = {s: [] for s in SCREENS}
    for task in TASKS:
        texts = []
        for screen in SCREENS:
            text, mean = cell_text(screen, task, choices)
            texts.append(text)
            if mean is not None:
                means[screen].append(mean)
        lines.append(f"| {task} | " + " | ".join(texts) + " |")
    complete = {s: fmean(v) for s, v in means.items() if len(v) == len(TASKS)}
    row = [f"**{complete[s]:.2f}**" if s in complete else f"{len(means[s])} of {len(TASKS)} tasks" for s in SCREENS]
    lines.append("| **mean of tasks** | " + " | ".join(row) + " |")
    return "\n".join(lines), complete


def pooled_test(a: str, b: str) -> str:
    """Paired test of screen ``a`` against ``b`` on all (task, seed, test row) triples both finished."""
    pairs = [(runs(a, t), runs(b, t)) for t in TASKS]
    return paired_text([(left[s], right[s]) for left, right in pairs for s in SEEDS if s in left and s in right])


def screened_arms(choices: dict[str, dict]) -> str:
    """The mean number of arms each screen scored before the race, over the runs whose folder was read."""
    parts = []
    for screen in SCREENS:
        counts = [c["screened_arms"] for k, c in choices.items() if k.startswith(f"{screen}/") and "screened_arms" in c]
        parts.append(f"{screen} {fmean(counts):.1f} ({len(counts)} runs)" if counts else f"{screen} –")
    return "Arms screened before the race (incumbent included; answer-rule variants not counted), mean per run: " + (
        "; ".join(parts) + "."
    )


def missing_cells() -> list[str]:
    """``screen/task/seed`` of every cell that has not finished."""
    return [f"{s}/{t}/seed {seed}" for s in SCREENS for t in TASKS for seed in SEEDS if seed not in runs(s, t)]


def verdict(means: dict[str, float]) -> str:
    """The stated rule applied to the measured means (only when all cells finished)."""
    missing = missing_cells()
    if missing:
        return (
            f"**The rule is not applied:** {len(missing)} of {len(SCREENS) * len(TASKS) * len(SEEDS)} cells are "
            f"missing ({', '.join(missing)}). The default stays `{DEFAULT}`."
        )
    best = max(SCREENS, key=lambda s: means[s])
    lead = means[best] - means[DEFAULT]
    picked = best if best != DEFAULT and lead >= MARGIN else DEFAULT
    ranking = "; ".join(f"{s} {means[s]:.2f}" for s in sorted(SCREENS, key=lambda s: -means[s]))
    reason = f"the highest mean is {best}'s, {lead:+.2f} points over {DEFAULT}" + (
        "" if best == DEFAULT else f" ({'at least' if lead >= MARGIN else 'less than'} {MARGIN:.1f})"
    )
    return f"**The rule picks `{picked}`.** Means of the tasks: {ranking}; {reason}."


def body(choices: dict[str, dict]) -> str:
    table, means = screens_table(choices)
    return "\n".join(
        [
            "`python bench/screens.py --jobs 2` (runs what is missing, then writes this section; the commands are "
            "in its docstring). DemoSearch at its defaults except `screen_by`: `likelihood` (the probability of the "
            "gold label among the labels, one forward pass per screen row), `accuracy` (generated accuracy on the "
            "screen rows) and `blend` (both on the same 20 rows: accuracy ranks, the likelihood score breaks ties; "
            "it costs both screens' calls, so at budget 400 it screens fewer arms). Every cell also races the "
            "answer rule (free, constrained, calibrated). Budget 400 (a hard cap), seeds 0-2 (50 train / 50 val "
            "rows drawn per seed, the full 100-row test split), embedded SmolLM2-135M-Instruct, PlainAdapter, one "
            "llama.cpp thread per process, two processes on 2 shared cores.",
            "",
            f"**The rule, stated before any cell was run:** {RULE}",
            "",
            "Each cell: mean test % over seeds 0-2 (each seed's score; mean compile LM calls; mean val-minus-test "
            "gap of the chosen program; the answer rule each seed chose).",
            "",
            table,
            "",
            screened_arms(choices),
            "",
            f"Pooled paired tests on every (task, seed, test row): blend vs likelihood {pooled_test('blend', DEFAULT)}; "
            f"accuracy vs likelihood {pooled_test('accuracy', DEFAULT)}; blend vs accuracy "
            f"{pooled_test('blend', 'accuracy')}.",
            "",
            verdict(means),
        ]
    )


def main() -> None:
    run_grid(__doc__, commands, lambda: body(collect_choices()), TITLE)


if __name__ == "__main__":
    main()
