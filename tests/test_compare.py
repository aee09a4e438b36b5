"""``dspy-ext compare`` on the fake world: table, statistics, plot, clean stdout and resume.

The LM is injected through ``dspy_ext.cli.main(argv, lm=...)``; the fake
LM answers both the task prompts (plain adapter) and every optimizer's
meta-prompts (see ``tests/support/fake_world.py``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import dspy
import pytest

from dspy_ext.cli import main
from dspy_ext.compare import Cell, render_csv, render_markdown, summarise
from dspy_ext.compare.runner import cell_from_json
from dspy_ext.lm import Price
from dspy_ext.registry import REGISTRY, LabeledConfig, OptimizerSpec

from support.fake_world import fake_world_lm, write_task

ROW_KEYS = {"optimizer", "seed", "test_score", "lm_calls", "seconds", "tokens", "budget_enforced"}


@pytest.fixture
def task_folder(tmp_path: Path) -> Path:
    return write_task(tmp_path / "items", n_train=40, n_test=24)


def argv(
    task_folder: Path, out: Path, *extra: str, optimizers: str = "ape,bfs,labeled", seeds: int = 2, budget: int = 60
) -> list[str]:
    return [
        "compare",
        "--data",
        str(task_folder),
        "--optimizers",
        optimizers,
        "--budget",
        str(budget),
        "--seeds",
        str(seeds),
        "--train",
        "10",
        "--val",
        "10",
        "--threads",
        "2",
        "--adapter",
        "plain",
        "--out",
        str(out),
        *extra,
    ]


def run(args: list[str], lm, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args, lm=lm)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(args: list[str], lm, capsys: pytest.CaptureFixture[str]) -> tuple[dict, str]:
    code, out, err = run([*args, "--json"], lm, capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1, out  # DSPy's prints (BootstrapFewShot's) must not reach stdout
    return json.loads(lines[0]), err


def test_compare_writes_results_and_resumes(
    task_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    lm = fake_world_lm()
    first, err = run_json(argv(task_folder, out), lm, capsys)

    # One row per (optimizer, seed), each scored on the full 24-row test split.
    assert [(r["optimizer"], r["seed"]) for r in first["rows"]] == [
        ("ape", 0),
        ("ape", 1),
        ("bfs", 0),
        ("bfs", 1),
        ("labeled", 0),
        ("labeled", 1),
    ]
    for row in first["rows"]:
        assert set(row) >= ROW_KEYS
        assert 0.0 <= row["test_score"] <= 100.0 and row["test"] == 24
    ape = [r for r in first["rows"] if r["optimizer"] == "ape"]
    assert all(0 < r["lm_calls"] <= 60 and r["budget_enforced"] for r in ape)
    assert all(not r["budget_enforced"] for r in first["rows"] if r["optimizer"] != "ape")
    assert first["new_lm_calls"] == lm.engine.calls > 0
    assert first["failed"] == [] and first["skipped_cells"] == 0
    # Progress: one line per cell on stderr.
    progress = [line for line in err.splitlines() if line.startswith("[")]
    assert len(progress) == 6 and progress[0].startswith("[1/6] items · ape · seed 0: test ")

    # Summary: one row per optimizer with mean ± CI over the 2 seeds and a paired test against the best.
    summary = {row["optimizer"]: row for row in first["summary"]}
    assert list(summary) == ["ape", "bfs", "labeled"]
    best = [name for name, row in summary.items() if row["best"]]
    assert best == [first["best"]]
    top = summary[first["best"]]
    assert top["vs_best"] is None
    assert top["test_mean"] == max(row["test_mean"] for row in summary.values())
    for name, row in summary.items():
        assert row["runs"] == 2
        if name == first["best"]:
            continue
        vs = row["vs_best"]
        assert vs["method"] == "mcnemar-exact" and vs["n"] == 48 and vs["seeds"] == [0, 1]
        assert vs["diff_points"] == pytest.approx(top["test_mean"] - row["test_mean"], abs=0.02)
        assert vs["significant"] == (vs["p_value"] < 0.05)
    # In the fake world demos alone solve 2 of 8 items; the instruction search solves more.
    assert summary["labeled"]["test_mean"] == pytest.approx(25.0)
    assert top["test_mean"] >= 75.0 and summary["labeled"]["vs_best"]["significant"]

    # Files: Markdown + CSV table, PNG plot, one JSON per cell with per-example scores.
    md = (out / "results.md").read_text()
    assert "| optimizer | test % (mean ± 95% CI) |" in md and "![test score vs LM calls](score_vs_calls.png)" in md
    assert "| labeled | 25.0 ± 0.0 | 2 |" in md
    with open(out / "results.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [r["optimizer"] for r in table] == ["ape", "bfs", "labeled"]
    assert sum(r["best"] == "True" for r in table) == 1
    assert (out / "score_vs_calls.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cells = sorted((out / "cells").glob("*.json"))
    assert [c.name for c in cells] == [
        "ape-s0.json",
        "ape-s1.json",
        "bfs-s0.json",
        "bfs-s1.json",
        "labeled-s0.json",
        "labeled-s1.json",
    ]
    stored = json.loads(cells[0].read_text())
    assert len(stored["test_example_scores"]) == 24
    assert (out / "runs" / "ape-s0" / "program.json").exists() and (out / "runs" / "ape-s0" / "trials.jsonl").exists()

    # Re-run: every cell is skipped, no LM call, identical rows.
    calls = lm.engine.calls
    second, err = run_json(argv(task_folder, out), lm, capsys)
    assert second["new_lm_calls"] == 0 and lm.engine.calls == calls
    assert second["rows"] == first["rows"] and second["summary"] == first["summary"]
    assert second["skipped_cells"] == 6
    assert sum("skipped" in line for line in err.splitlines()) == 6

    # A third seed runs only the three new cells; plain-text output names the best.
    code, stdout, err = run(argv(task_folder, out, seeds=3), lm, capsys)
    assert code == 0
    assert sum("skipped" in line for line in err.splitlines()) == 6
    assert stdout.startswith("items: 9 runs (6 resumed)")
    assert "best" in stdout
    assert len(list((out / "cells").glob("*.json"))) == 9


def test_changed_settings_run_the_cell_again(
    task_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    lm = fake_world_lm()
    first, _ = run_json(argv(task_folder, out, optimizers="ape", seeds=1, budget=40), lm, capsys)
    assert first["rows"][0]["lm_calls"] <= 40
    again, err = run_json(argv(task_folder, out, optimizers="ape", seeds=1, budget=50), lm, capsys)
    assert again["skipped_cells"] == 0 and again["new_lm_calls"] > 0
    assert "other settings" in err
    assert again["rows"][0]["budget"] == 50


def test_per_optimizer_config_reaches_the_optimizer(
    task_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    result, _ = run_json(
        argv(task_folder, out, "--optimizer-config", '{"labeled": {"k": 1}}', optimizers="labeled", seeds=1),
        fake_world_lm(),
        capsys,
    )
    run_file = json.loads((out / "runs" / "labeled-s0" / "run.json").read_text())
    assert run_file["config"] == {"k": 1}
    # One demo: the fake model solves 1 item in 8.
    assert result["rows"][0]["test_score"] == pytest.approx(12.5)


def test_a_failing_optimizer_does_not_lose_the_other_cells(
    task_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(config, ctx):
        raise RuntimeError("this optimizer is broken")

    monkeypatch.setitem(
        REGISTRY,
        "broken",
        OptimizerSpec(
            name="broken",
            config_model=LabeledConfig,
            build=broken,
            compile=lambda *a: None,
            enforces_budget=False,
            description="always fails",
        ),
    )
    out = tmp_path / "cmp"
    code, stdout, err = run(
        [*argv(task_folder, out, optimizers="broken,labeled", seeds=1), "--json"], fake_world_lm(), capsys
    )
    assert code == 1
    result = json.loads(stdout)
    assert result["failed"] == [{"optimizer": "broken", "seed": 0, "error": "RuntimeError: this optimizer is broken"}]
    assert [r["optimizer"] for r in result["rows"]] == ["labeled"]
    assert "FAILED" in err
    assert "| broken | no finished run |" in (out / "results.md").read_text()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--optimizers", "ape,nope"], "unknown optimizer 'nope'"),
        (["--optimizers", "ape", "--optimizer-config", '{"ape": {"bogus": 1}}'], "bogus: unknown key"),
        (["--optimizers", "ape", "--optimizer-config", '{"copro": {}}'], "not in optimizers: copro"),
        (["--optimizers", "ape", "--optimizer-config", "{not json"], "--optimizer-config is not valid JSON"),
        (["--optimizers", "ape", "--seeds", "0"], "seeds: Input should be greater than or equal to 1"),
        ([], "optimizers: Field required"),
    ],
)
def test_bad_arguments_exit_2_before_any_model_loads(
    task_folder: Path, tmp_path: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["compare", "--data", str(task_folder), "--out", str(tmp_path / "x"), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.startswith("dspy-ext compare: error:")


def test_an_interrupted_cell_resumes_from_its_journal_and_is_counted_in_full(
    task_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each cell journals its own calls: its count is its own and cold; an interrupted cell resumes from the
    journal without calling the model again, and the replayed calls are counted (no free budget)."""
    out = tmp_path / "cmp"
    lm = fake_world_lm(cache=True)  # DSPy's response cache on, as for a user
    first, _ = run_json(argv(task_folder, out, optimizers="ape", seeds=1), lm, capsys)
    cold = first["rows"][0]["lm_calls"]
    journal = out / "runs" / "ape-s0" / "calls.jsonl"
    assert cold > 0 and len(journal.read_text().splitlines()) >= cold

    # An interrupted cell: its journal holds the calls made, but it never stored its result.
    (out / "cells" / "ape-s0.json").unlink()
    engine_calls = lm.engine.calls
    again, _ = run_json(argv(task_folder, out, optimizers="ape", seeds=1), lm, capsys)
    assert again["skipped_cells"] == 0
    assert again["rows"][0]["lm_calls"] == cold  # replayed calls are charged: not free budget
    assert again["rows"][0]["test_score"] == first["rows"][0]["test_score"]
    # The compile made no model call at all; only scoring could (and the DSPy cache serves it).
    assert lm.engine.calls == engine_calls
    result = json.loads((out / "runs" / "ape-s0" / "run.json").read_text())
    assert result["replayed_calls"] > 0


# ---- dollars: --max-cost per cell, USD and the task/prompt split in the tables -------------------------------


def _priced_world_lm(price: Price | None, name: str | None = None) -> dspy.LM:
    lm = fake_world_lm(name=name)
    lm.engine.price = price
    return lm


def test_max_cost_caps_every_cell_and_the_tables_show_usd_and_the_split(
    task_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # $1000 per million tokens: a fake-world call (some 50-300 words) costs a few tenths of a dollar.
    price = Price(input_per_1m=1000.0, output_per_1m=1000.0)
    out = tmp_path / "cmp"
    cap = 5.0  # past the demo start's race (task calls only), into the instruction search
    args = argv(task_folder, out, "--max-cost", str(cap), optimizers="ape,labeled", seeds=1, budget=200)
    result, err = run_json(args, _priced_world_lm(price, "fake/priced"), capsys)
    rows = {r["optimizer"]: r for r in result["rows"]}
    ape = rows["ape"]
    # The cap stopped ape's compile long before its 200 calls: its spend is within one call of the cap.
    largest_call = 0.001 * 400  # no fake-world prompt + reply reaches 400 words
    assert ape["cost_cap_reached"] and ape["max_cost"] == cap
    assert cap <= ape["usd"] <= cap + largest_call and ape["lm_calls"] < 200
    assert ape["usd"] == pytest.approx(price.cost(ape["input_tokens"], ape["output_tokens"]), abs=1e-6)
    split = ape["by_role"]
    assert split["task"]["calls"] + split["prompt"]["calls"] == ape["lm_calls"] and split["prompt"]["calls"] > 0
    # Labeled demos cost nothing to build: 0 calls, $0, far from the cap.
    assert rows["labeled"]["usd"] == 0.0 and not rows["labeled"]["cost_cap_reached"]
    assert "(cost cap reached)" in err

    summary = {r["optimizer"]: r for r in result["summary"]}
    assert summary["ape"]["usd_mean"] == pytest.approx(ape["usd"], abs=1e-6)
    assert summary["ape"]["task_calls_mean"] == split["task"]["calls"]
    assert summary["ape"]["prompt_calls_mean"] == split["prompt"]["calls"]
    assert summary["ape"]["cost_cap_reached_runs"] == 1
    md = (out / "results.md").read_text()
    assert "| LM calls (task/prompt) | tokens | USD |" in md and f"and ${cap:g} per compile" in md
    ape_line = next(line for line in md.splitlines() if line.startswith("| ape | "))
    calls = f"{ape['lm_calls']} ({split['task']['calls']}/{split['prompt']['calls']})"
    assert calls in ape_line and "(1/1 at the cap)" in ape_line
    with open(out / "results.csv") as fh:
        table = {r["optimizer"]: r for r in csv.DictReader(fh)}
    assert float(table["ape"]["usd_mean"]) == pytest.approx(ape["usd"], abs=1e-6)
    assert float(table["labeled"]["usd_mean"]) == 0.0
    assert int(float(table["ape"]["prompt_calls_mean"])) == split["prompt"]["calls"]
    assert json.loads((out / "results.json").read_text())["summary"] == result["summary"]

    # The same cap resumes every cell for free; the cap is part of a cell's settings, so a higher one runs again.
    resumed, _ = run_json(args, _priced_world_lm(price, "fake/priced"), capsys)
    assert resumed["skipped_cells"] == 2 and resumed["new_lm_calls"] == 0 and resumed["rows"] == result["rows"]
    higher = argv(task_folder, out, "--max-cost", str(2 * cap), optimizers="ape", seeds=1, budget=200)
    again, _ = run_json(higher, _priced_world_lm(price, "fake/priced"), capsys)
    assert again["skipped_cells"] == 0 and again["rows"][0]["usd"] > cap


def test_an_unknown_price_is_shown_as_unknown_never_as_zero(
    task_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    code, stdout, _ = run(argv(task_folder, out, optimizers="ape", seeds=1, budget=30), _priced_world_lm(None), capsys)
    assert code == 0
    row = json.loads((out / "results.json").read_text())["summary"][0]
    assert row["usd_mean"] is None and row["lm_calls_mean"] > 0
    assert "USD   unknown" in stdout
    md_lines = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| ape | ")]
    assert len(md_lines) == 2 and all("| unknown |" in line for line in md_lines)  # the summary and the run
    with open(out / "results.csv") as fh:
        assert next(csv.DictReader(fh))["usd_mean"] == "unknown"


OLD_ROW = {  # a cell stored before dollars were counted: no usd, token split or by_role
    "optimizer": "ape",
    "seed": 0,
    "test_score": 50.0,
    "val_score": 40.0,
    "lm_calls": 30,
    "tokens": 9000,
    "seconds": 12.0,
    "budget": 30,
    "budget_enforced": True,
    "budget_exhausted": True,
}


def test_cells_stored_before_costs_were_counted_still_render() -> None:
    new_row = {
        **OLD_ROW,
        "seed": 1,
        "usd": 0.25,
        "input_tokens": 8000,
        "output_tokens": 1000,
        "by_role": {"task": {"calls": 24}, "prompt": {"calls": 6}},
    }
    cells = [Cell("ape", 0, OLD_ROW, [1.0, 0.0]), Cell("ape", 1, new_row, [1.0, 1.0])]
    meta = {
        "task": "t",
        "lm": "m",
        "adapter": "plain",
        "program": "transform",
        "metric": "exact_match",
        "budget": 30,
        "seeds": [0, 1],
        "train": 10,
        "val": 10,
        "test": 2,
        "optimizers": ["ape"],
    }
    summary = summarise(cells, ["ape"])
    # One cell without a record makes the mean unknown (not the other cell's $0.25, and not $0).
    assert summary[0]["usd_mean"] is None and summary[0]["task_calls_mean"] is None
    md = render_markdown(meta, summary, cells)
    assert "| ape | 50.0 ± 0.0 | 2 | best |" in md and "| 30 | 9000 | unknown |" in md
    assert "| ape | 0 | 50.0 | 40.0 | 30 | 9000 | unknown | 12.0 |" in md
    assert "| ape | 1 | 50.0 | 40.0 | 30 (24/6) | 9000 | 0.2500 | 12.0 |" in md
    assert "unknown" in render_csv(summary)


def test_the_stored_benchmark_comparisons_still_render() -> None:
    """The comparisons under ``bench/results/compare`` were stored before costs were counted."""
    folders = sorted(Path(__file__).resolve().parents[1].glob("bench/results/compare/*/cells"))
    if not folders:
        pytest.skip("no stored comparison in this checkout")
    for folder in folders:
        cells = [cell_from_json(json.loads(p.read_text())) for p in sorted(folder.glob("*.json"))]
        names = list(dict.fromkeys(c.optimizer for c in cells))
        summary = summarise(cells, names)
        meta = {"task": folder.parent.name, "lm": "m", "adapter": "plain", "program": "p", "metric": "m"}
        meta |= {"budget": 1, "seeds": [0], "train": 1, "val": 1, "test": 1, "optimizers": names}
        md = render_markdown(meta, summary, cells)
        assert md.count("\n| ") >= len(names) + len(cells) and render_csv(summary).count("\n") == len(names) + 1
