"""Compiling from human review on the embedded model: a scripted reviewer, then compile with and without it.

For each task:

1. the labeled-demo baseline (the task's baseline instruction with 3 labeled demos: what a user has for
   free, and the run report's baseline) answers 30 training inputs that no compile of the benchmark
   draws for its train or validation rows, into a review store;
2. a **scripted reviewer** grades the 30 outputs through the same HTTP API the review page uses (the real
   server on 127.0.0.1, with its token): it adds the task's criterion with a candidate check, grades each
   output Good when it equals the gold label and Bad otherwise, with a reason from a fixed list of short
   critiques, and types the gold label as the correction of a Bad output;
3. ``compile --feedback STORE`` runs against the same compile without it, per seed, and the run reports
   give test accuracy, the review criterion on test (student vs compiled), the pinned cases kept, the LM
   calls of the compile, and how many search candidates came from the reviewer's gradients.

    DSPY_EXT_LLAMA_THREADS=1 PYTHONPATH=. python bench/feedback.py --seeds 0 1 --budget 120
    PYTHONPATH=. python bench/feedback.py --report-only      # re-render from the stored run folders

Writes ``bench/results/feedback/TASK/{review.sqlite, runs/...}`` and its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._docs import write_section

RESULTS = Path(__file__).resolve().parent / "results" / "feedback"
SECTION = "Compiling from human review (issue 12): scripted reviewer, embedded model"
N_REVIEWED = 30


@dataclass(frozen=True)
class ReviewScript:
    """What the scripted reviewer of one task knows: its criterion and its fixed critiques."""

    criterion: str
    description: str
    check: str
    #: Reason for an output that fails the check (wrong form).
    form_reason: str
    #: Reasons for an output of the right form but the wrong answer, used in turn.
    wrong_reasons: tuple[str, ...]


SCRIPTS = {
    "sentiment": ReviewScript(
        "label only",
        "answers with exactly positive or negative",
        "one_of:positive,negative",
        "answer with the label only: positive or negative",
        (
            "wrong sentiment: read the whole sentence before deciding",
            "sarcasm and faint praise are negative",
            "a mixed review that ends well is positive",
        ),
    ),
    "larger_animal": ReviewScript(
        "animal name only",
        "answers with the name of one animal and nothing else",
        "max_words:2",
        "answer with the animal's name only, no sentence",
        (
            "that is the smaller animal: name the bigger one",
            "compare real body sizes, not how dangerous the animal is",
            "pick one of the two animals in the input",
        ),
    ),
}


def reviewed_rows(task: Any, seeds: list[int], n_train: int, n_val: int) -> list[Any]:
    """``N_REVIEWED`` training rows that no seed draws for its train or validation rows."""
    from dspy_ext.data import split_train_val

    used = set()
    for seed in seeds:
        train, val = split_train_val(task.train, n_train, n_val, seed=seed)
        used |= {ex.input for ex in train + val}
    rows = [ex for ex in task.train if ex.input not in used]
    if len(rows) < N_REVIEWED:
        raise SystemExit(f"{task.name}: only {len(rows)} training rows outside the draws; lower --train/--val")
    return rows[:N_REVIEWED]


class ReviewClient:
    """The review page's HTTP API, as the page's script calls it (token header on every write)."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method: str, path: str, payload: dict | None = None) -> dict:
        headers = {"X-Review-Token": self.token, "X-Review-Client": "scripted-reviewer"}
        body = None
        if payload is not None:
            headers["Content-Type"] = "application/json"
            body = json.dumps(payload).encode()
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        data = json.loads(response.read() or b"{}")
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: {response.status} {data}")
        return data


def scripted_review(store_path: Path, script: ReviewScript) -> dict[str, Any]:
    """Grade every output of the store through the real server's API; returns the counts."""
    from dspy_ext.review import CheckSpec, ReviewApp, ReviewServer, ReviewStore

    store = ReviewStore(store_path)
    counts = {"good": 0, "bad": 0, "form": 0, "corrected": 0}
    with ReviewServer(ReviewApp(store, seed=0), port=0) as server:
        client = ReviewClient(server.port, server.app.token)
        known = {c["name"] for c in client.call("GET", "/api/report")["criteria"]}
        if script.criterion not in known:
            client.call(
                "POST",
                "/api/criteria",
                {"name": script.criterion, "description": script.description, "check": script.check},
            )
        check = CheckSpec.parse(script.check)
        turn = 0
        while True:
            key = client.call("GET", "/api/next?filter=unreviewed")["key"]
            if key is None:
                break
            item = client.call("GET", f"/api/items/{key}")
            output = str(item["outputs"].get("output", ""))
            gold = str((item["gold"] or {}).get("output", ""))
            if output.strip().lower() == gold.strip().lower():
                client.call("POST", f"/api/items/{key}/grade", {"grade": "good"})
                counts["good"] += 1
                continue
            if not check.passes(output):
                reason = script.form_reason
                counts["form"] += 1
            else:
                reason = script.wrong_reasons[turn % len(script.wrong_reasons)]
                turn += 1
            client.call("POST", f"/api/items/{key}/grade", {"grade": "bad", "reason": reason})
            client.call("POST", f"/api/items/{key}/correction", {"correction": gold})
            counts["bad"] += 1
            counts["corrected"] += 1
        counts["report"] = client.call("GET", "/api/report")
    store.close()
    return counts


def collect_student(task_name: str, store_path: Path, seeds: list[int], n_train: int, n_val: int) -> dict:
    from dspy_ext.data import split_train_val
    from dspy_ext.experiment import RunSettings, build_components, build_student
    from dspy_ext.experiment.run import labeled_baseline
    from dspy_ext.review import ReviewStore, collect

    settings = RunSettings(task=task_name)
    components = build_components(settings)
    rows = reviewed_rows(components.task, seeds, n_train, n_val)
    # The program a user has for free and would review first: the student with labeled demos (the run
    # report's baseline), here drawn from the first seed's training rows.
    train, _ = split_train_val(components.task.train, n_train, n_val, seed=seeds[0])
    student = labeled_baseline(build_student(settings, components.task), train, seeds[0])
    with ReviewStore(store_path) as store, components.context():
        summary = collect(
            student, rows, store=store, input_keys=components.task.input_keys, output_keys=components.task.output_keys
        )
    return {
        "inputs": summary.inputs,
        "new_outputs": summary.new_outputs,
        "reused": summary.reused,
        "prompt_version": summary.prompt_version,
    }


def compile_pair(
    task_name: str,
    store_path: Path,
    seed: int,
    budget: int,
    n_train: int,
    n_val: int,
    optimizer: str,
    only: str = "both",
) -> dict[str, dict]:
    from dspy_ext.experiment import RunSettings, run

    out: dict[str, dict] = {}
    for label, feedback in (("without", None), ("with", str(store_path))):
        if only not in ("both", label):
            continue
        folder = RESULTS / task_name / "runs" / f"{optimizer}-{label}-s{seed}"
        settings = RunSettings(
            task=task_name,
            optimizer=optimizer,
            budget=budget,
            seed=seed,
            train=n_train,
            val=n_val,
            threads=1,
            out=str(folder),
            feedback=feedback,
        )
        started = time.perf_counter()
        result = run(settings, restart=True)  # same settings resume; a folder from older code starts over
        print(
            f"{task_name} seed {seed} {label} feedback: test {result.summary.scores.test:.1f} "
            f"({result.summary.spend.lm_calls} calls, {time.perf_counter() - started:.0f} s)",
            flush=True,
        )
        out[label] = result.summary.to_dict()
    return out


def digest(folder: Path) -> dict[str, Any]:
    """What a run folder says: scores, calls, pinned cases, and the reviewer's share of the search."""
    from dspy_ext.experiment import RunSummary

    summary = RunSummary.from_dict(json.loads((folder / "run.json").read_text()))
    trials = [json.loads(line) for line in (folder / "trials.jsonl").read_text().splitlines() if line.strip()]
    reviewer = [t for t in trials if t.get("gradient_source") == "reviewer"]
    best = (summary.search or {}).get("best", {})
    return {
        "test": summary.scores.test,
        "val": summary.scores.val,
        "zero_shot": summary.scores.zero_shot_test,
        "calls": summary.spend.lm_calls,
        "seconds": summary.seconds,
        "criteria": summary.criteria,
        "pinned": summary.review.pinned if summary.review else None,
        "feedback": summary.review.feedback if summary.review else None,
        "reviewer_trials": len(reviewer),
        "trials": len(trials),
        "reviewer_train_mean": (
            round(
                sum(t["score"] for t in reviewer if t["split"] == "train")
                / max(1, sum(t["split"] == "train" for t in reviewer)),
                1,
            )
            if reviewer
            else None
        ),
        "lm_train_mean": _mean(
            [
                t["score"]
                for t in trials
                if t["split"] == "train"
                and t.get("gradient_source") != "reviewer"
                and t["origin"].startswith("protegi.edit")
            ]
        ),
        "winner_origin": best.get("origin"),
        "rejected": summary.get("search", {}).get("rejected", {}),
        "instruction": next(iter((best.get("instructions") or {}).values()), ""),
    }


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


def render(tasks: list[str], seeds: list[int], optimizer: str, meta: dict[str, Any]) -> str:
    lines = [
        f"`DSPY_EXT_LLAMA_THREADS=1 PYTHONPATH=. python bench/feedback.py --seeds {' '.join(map(str, seeds))} "
        f"--budget {meta['budget']} --train {meta['train']} --val {meta['val']}`",
        "",
        f"Settings sized for 2 shared cores: seeds {seeds}, budget {meta['budget']} LM calls per compile (the "
        f"optimizer comparison above uses 400), train {meta['train']} / val {meta['val']}, optimizer `{optimizer}`, one llama.cpp thread. The scripted reviewer "
        f"(`bench/feedback.py`) grades {N_REVIEWED} outputs per task of the labeled-demo baseline (the student "
        "with 3 labeled demos) through the review page's "
        "HTTP API (real server on 127.0.0.1, its token): Good when the output equals the gold label, otherwise "
        "Bad with a reason from a fixed list (a wrong-form critique, or one of three wrong-answer critiques in "
        "turn) and the gold label typed as the correction. It adds the task's criterion with one candidate "
        "check, which the alignment then chooses. The reviewed inputs are training rows that no seed draws, "
        "so with feedback the compile also has those labeled rows.",
        "",
        f"Machine: {meta['machine']}; {meta['date']}; load average before {meta['load']}.",
        "",
        "| task | seed | feedback | test acc. | criterion on test (student → compiled) | pinned kept / broken | "
        "compile LM calls | reviewer-gradient candidates (train mean) | LM-gradient candidates (train mean) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for task in tasks:
        script = SCRIPTS[task]
        review_file = RESULTS / task / "review.json"
        review = json.loads(review_file.read_text()) if review_file.exists() else {}
        if review:
            notes.append(
                f"- **{task}**: the reviewer graded {review['good']} Good and {review['bad']} Bad "
                f"({review['form']} for the form); criterion `{script.criterion}` (`{script.check}`): "
                f"{_alignment_text(review)}."
            )
        for seed in seeds:
            for label in ("without", "with"):
                folder = RESULTS / task / "runs" / f"{optimizer}-{label}-s{seed}"
                if not (folder / "run.json").exists():
                    continue
                d = digest(folder)
                crit = d["criteria"].get(script.criterion)
                crit_text = f"{crit['student']:.0f} → {crit['compiled']:.0f}" if crit else "–"
                pinned = f"{d['pinned']['kept']} / {d['pinned']['broken']}" if d["pinned"] else "–"
                rev = f"{d['reviewer_trials']} ({d['reviewer_train_mean']})" if label == "with" else "–"
                lm = f"({d['lm_train_mean']})" if d["lm_train_mean"] is not None else "–"
                lines.append(
                    f"| {task} | {seed} | {label} | {d['test']:.1f} | {crit_text} | {pinned} | {d['calls']} "
                    f"| {rev} | {lm} |"
                )
    why = []
    for task in tasks:
        for seed in seeds:
            with_dir = RESULTS / task / "runs" / f"{optimizer}-with-s{seed}"
            without_dir = RESULTS / task / "runs" / f"{optimizer}-without-s{seed}"
            if not ((with_dir / "run.json").exists() and (without_dir / "run.json").exists()):
                continue
            w, wo = digest(with_dir), digest(without_dir)
            text = (
                f"- {task} seed {seed}: {w['test']:.0f} with vs {wo['test']:.0f} without; "
                f"{w['reviewer_trials']} trials of candidates from the reviewer's reasons "
                f"(train mean {w['reviewer_train_mean']}); winner `{w['winner_origin']}`"
            )
            if w["winner_origin"] == "reference":
                text += (
                    f": the guarded search fell back to the reference program (the student as given, zero-shot, "
                    f"{w['zero_shot']:.0f} on test) because the budget ran out before its final choice could be "
                    "checked against the guard on the whole valset (report.md, Regression guards)"
                )
            elif w["instruction"]:
                text += f", instruction {w['instruction'][:90]!r}"
            if w["feedback"] and w["feedback"]["notes"]:
                text += "; " + "; ".join(n for n in w["feedback"]["notes"] if "criterion" in n)
            why.append(text + ".")
    lines += [
        "",
        "Columns: *criterion on test* is the review criterion's aligned check on the 100 test rows "
        "(the run metric combined with it, so it is only measured when the compile had feedback); *pinned* "
        "are the outputs graded Good, re-run with the compiled program and checked by the aligned check; the "
        "candidate columns count search trials of edits made from the reviewer's reasons versus the LM's "
        "own diagnoses, with their mean minibatch score.",
        "",
        *notes,
        "",
        "From the run folders (`run.json`, `trials.jsonl`, `report.md`):",
        "",
        *why,
    ]
    return "\n".join(lines)


def _alignment_text(review: dict) -> str:
    for entry in review.get("report", {}).get("criteria", []):
        for cand in entry["candidates"]:
            if cand["chosen"]:
                return f"coverage {cand['coverage']:.0%}, false failure rate {cand['false_failure_rate']:.0%}, chosen"
        return "no check chosen (it fails no Bad output, or too many Good ones)"
    return "not reviewed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(SCRIPTS), choices=list(SCRIPTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--budget", type=int, default=120)
    parser.add_argument("--train", type=int, default=30)
    parser.add_argument("--val", type=int, default=20)
    parser.add_argument("--optimizer", default="protegi")
    parser.add_argument("--report-only", action="store_true", help="re-render from the stored run folders")
    parser.add_argument("--review-only", action="store_true", help="collect and review, do not compile")
    parser.add_argument(
        "--only",
        choices=["both", "with", "without"],
        default="both",
        help="compile only with or only without the review (two processes can share the work)",
    )
    parser.add_argument("--no-write", action="store_true", help="print, do not write docs/benchmarks.md")
    args = parser.parse_args()
    os.environ.setdefault("DSPY_EXT_LLAMA_THREADS", "1")
    meta = {
        "budget": args.budget,
        "train": args.train,
        "val": args.val,
        "machine": f"{os.cpu_count()} CPUs, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    if not args.report_only:
        for task in args.tasks:
            folder = RESULTS / task
            folder.mkdir(parents=True, exist_ok=True)
            store_path = folder / "review.sqlite"
            if (folder / "review.json").exists() and store_path.exists():
                print(f"{task}: reviewed earlier ({folder / 'review.json'})", flush=True)
                continue
            collected = collect_student(task, store_path, args.seeds, args.train, args.val)
            print(f"{task}: collected {collected}", flush=True)
            counts = scripted_review(store_path, SCRIPTS[task])
            (folder / "review.json").write_text(json.dumps(counts, indent=1) + "\n")
            print(f"{task}: reviewed {counts['good']} good, {counts['bad']} bad", flush=True)
        for seed in [] if args.review_only else args.seeds:
            for task in args.tasks:
                compile_pair(
                    task,
                    RESULTS / task / "review.sqlite",
                    seed,
                    args.budget,
                    args.train,
                    args.val,
                    args.optimizer,
                    args.only,
                )
    body = render(args.tasks, args.seeds, args.optimizer, meta)
    print(body)
    if not args.no_write:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
