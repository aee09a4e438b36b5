"""The experiment layer: settings and run files, one run as a library call, user programs and metrics by path."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
import yaml

from dspy_ext.cli import main
from dspy_ext.experiment import (
    CompareSettings,
    ComponentError,
    RunSettings,
    RunSummary,
    SettingsError,
    open_run,
    resolve_metric,
    run,
)

from support.fake_world import fake_world_lm, write_task
from support.slices import task_slice

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def task_folder(tmp_path: Path) -> Path:
    return write_task(tmp_path / "items", n_train=40, n_test=16)


def compile_argv(task_folder: Path, out: Path, *extra: str) -> list[str]:
    return [
        "compile",
        "--data",
        str(task_folder),
        "--optimizer",
        "ape",
        "--budget",
        "40",
        "--train",
        "12",
        "--val",
        "8",
        "--threads",
        "1",
        "--adapter",
        "plain",
        "--out",
        str(out),
        "--json",
        *extra,
    ]


def run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    code = main(argv, lm=fake_world_lm())
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1, captured.out  # stdout holds the JSON object only
    return json.loads(lines[0])


# ---- settings -------------------------------------------------------------------------------


def test_settings_defaults_live_in_one_place() -> None:
    settings = RunSettings(task="sentiment")
    assert (settings.optimizer, settings.budget, settings.seed, settings.train, settings.val) == (
        "demo-search",
        400,
        0,
        50,
        50,
    )
    assert settings.default_out == Path("runs/sentiment-demo-search-s0")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "give exactly one of task"),
        ({"task": "a", "data": "b"}, "give exactly one of task"),
        ({"task": "sentiment", "budget": 0}, "budget: Input should be greater than or equal to 1"),
        ({"task": "sentiment", "bogus": 1}, "bogus: unknown key"),
        ({"task": "sentiment", "optimizer": "nope"}, "unknown optimizer 'nope'"),
        (
            {"task": "sentiment", "optimizer": "ape", "optimizer_config": {"top_k": 0}},
            "top_k: Input should be greater than or equal to 1",
        ),
    ],
)
def test_bad_settings_name_the_key(values: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        RunSettings.build(values)


def test_run_files_in_yaml_toml_and_json_and_flags_on_top(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("task: sentiment\noptimizer: opro\nbudget: 120\n")
    (tmp_path / "a.toml").write_text('task = "sentiment"\noptimizer = "opro"\nbudget = 120\n')
    (tmp_path / "a.json").write_text('{"task": "sentiment", "optimizer": "opro", "budget": 120}')
    for name in ("a.yaml", "a.toml", "a.json"):
        settings = RunSettings.load(tmp_path / name, {"seed": 3})
        assert (settings.task, settings.optimizer, settings.budget, settings.seed) == ("sentiment", "opro", 120, 3)
    # A data source on the command line replaces the file's task.
    assert RunSettings.load(tmp_path / "a.yaml", {"data": "x.jsonl"}).task is None


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("r.yaml", "task: [unclosed", "not valid YAML"),
        ("r.json", "{", "not valid JSON"),
        ("r.toml", "task = ", "not valid TOML"),
        ("r.yaml", "- a list", "expected a mapping of settings"),
        ("r.txt", "task: x", "a run file ends in"),
    ],
)
def test_bad_run_files_give_one_line(tmp_path: Path, name: str, text: str, message: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(SettingsError, match=message) as info:
        RunSettings.load(tmp_path / name)
    assert "\n" not in str(info.value)


def test_compare_settings_give_each_cell_its_run_settings() -> None:
    settings = CompareSettings(
        task="sentiment", optimizers="ape, mipro,ape", optimizer_configs={"ape": {"top_k": 2}}, seeds=2, budget=100
    )
    assert settings.optimizers == ["ape", "mipro"]
    cell = settings.cell("ape", 1)
    assert (cell.optimizer, cell.seed, cell.budget, cell.optimizer_config) == ("ape", 1, 100, {"top_k": 2})


# ---- one run as a library call ------------------------------------------------------------------


def test_run_writes_the_run_folder_and_open_run_reads_it_back(task_folder: Path, tmp_path: Path) -> None:
    settings = RunSettings(
        data=str(task_folder),
        optimizer="ape",
        budget=40,
        train=12,
        val=8,
        threads=1,
        adapter="plain",
        out=str(tmp_path / "run"),
    )
    result = run(settings, lm=fake_world_lm())
    folder = tmp_path / "run"
    assert {p.name for p in folder.iterdir()} >= {
        "settings.yaml",
        "program.json",
        "run.json",
        "report.md",
        "trials.jsonl",
    }
    assert not list(folder.glob("*.tmp*"))  # atomic writes leave no temporary files behind
    summary = json.loads((folder / "run.json").read_text())
    assert summary == json.loads(json.dumps(result.summary.to_dict(), default=str))
    assert RunSummary.from_dict(summary).to_dict() == summary  # run.json reads back to the same summary
    assert 0 < summary["lm_calls"] <= 40 and summary["test"] == 16
    # The honest baseline: the student with 3 labeled demos (the fake model gets 2 in 8 with them), not zero-shot.
    assert summary["baseline_test_score"] == 25.0 and summary["zero_shot_test_score"] == 0.0
    opened = open_run(folder)
    assert opened.settings == result.settings
    components = opened.components(lm=fake_world_lm())
    program = opened.program(components)
    assert program.predict.signature.instructions == result.program.predict.signature.instructions
    assert [dict(d) for d in program.predict.demos] == [dict(d) for d in result.program.predict.demos]


def test_the_readme_library_example_is_five_lines_or_fewer() -> None:
    block = _readme_block("experiment")
    code = [line for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert len(code) <= 5, block
    assert "from dspy_ext.experiment import RunSettings, run" in block


def _readme_block(marker: str) -> str:
    """The Python block of README.md that follows ``<!-- test: MARKER -->``."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"<!-- test: {marker} -->\s*```python\n(.*?)```", text, re.DOTALL)
    assert match, f"README.md has no block marked <!-- test: {marker} -->"
    return textwrap.dedent(match.group(1))


@pytest.mark.embedded
def test_the_readme_library_example_runs_on_the_embedded_model(
    tmp_path: Path, local_lm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_readme_block("experiment"), "README.md", "exec"), namespace)  # our own README, not LM text
    result = namespace["result"]
    assert result.out.is_dir() and (result.out / "settings.yaml").is_file()
    assert 0 < result.summary.spend.lm_calls <= result.settings.budget
    assert 0.0 <= result.summary.scores.test <= 100.0


# ---- run files on the command line ------------------------------------------------------------


def test_compile_config_reproduces_a_run_and_a_flag_overrides_a_key(
    task_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = run_json(compile_argv(task_folder, tmp_path / "first"), capsys)
    stored = tmp_path / "first" / "settings.yaml"
    assert yaml.safe_load(stored.read_text())["optimizer"] == "ape"

    again = run_json(["compile", "--config", str(stored), "--out", str(tmp_path / "again"), "--json"], capsys)
    for key in ("test_score", "val_score", "lm_calls", "tokens", "config", "data_hash"):
        assert again[key] == first[key], key
    assert (tmp_path / "again" / "program.json").read_text() == (tmp_path / "first" / "program.json").read_text()

    other = run_json(
        ["compile", "--config", str(stored), "--budget", "30", "--out", str(tmp_path / "other"), "--json"], capsys
    )
    assert other["budget"] == 30 and other["lm_calls"] <= 30
    assert yaml.safe_load((tmp_path / "other" / "settings.yaml").read_text())["budget"] == 30


def test_export_needs_only_the_run_folder(task_folder: Path, tmp_path: Path, capsys) -> None:
    run_json(compile_argv(task_folder, tmp_path / "run"), capsys)
    code = main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "prompt.json"), "--json"], lm=fake_world_lm())
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert result["task"] == "items" and result["program"] == "transform"
    assert (tmp_path / "prompt.json").is_file()


# ---- user programs and metrics by import path --------------------------------------------------

USER_MODULE = '''
import dspy


class Shout(dspy.Module):
    """A user's own program: one predictor with its own signature and instruction."""

    def __init__(self):
        super().__init__()
        self.answer = dspy.Predict(dspy.Signature("input -> output", "Handle the request at level 5."))

    def forward(self, input):
        return self.answer(input=input)


def first_token_match(example, prediction, trace=None):
    return float(str(prediction.output).split()[:1] == str(example.output).split()[:1])


NOT_A_PROGRAM = 42


def two_args_only(a):
    return 1.0
'''


@pytest.fixture
def user_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    (project / "my_prompts.py").write_text(USER_MODULE)
    monkeypatch.chdir(project)
    monkeypatch.syspath_prepend(str(project))
    return project


def test_user_program_and_metric_by_import_path(
    task_folder: Path, user_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_json(
        [
            "compile",
            "--data",
            str(task_folder),
            "--program",
            "my_prompts:Shout",
            "--metric",
            "my_prompts:first_token_match",
            "--optimizer",
            "labeled",
            "--train",
            "12",
            "--val",
            "8",
            "--adapter",
            "plain",
            "--out",
            str(user_project / "run"),
            "--json",
        ],
        capsys,
    )
    # Level 5 plus up to 2 demos: the fake model solves 7 items in 8.
    assert result["test_score"] == pytest.approx(100 * 14 / 16)
    assert result["program"] == "my_prompts:Shout" and result["metric"] == "my_prompts:first_token_match"
    program_state = json.loads((user_project / "run" / "program.json").read_text())
    assert "answer" in program_state


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--program", "my_prompts:Missing", "program 'my_prompts:Missing': module 'my_prompts' has no attribute"),
        ("--program", "no_such_pkg.mod:Prog", "program 'no_such_pkg.mod:Prog': cannot import module 'no_such_pkg.mod'"),
        ("--program", "my_prompts:NOT_A_PROGRAM", "expected a dspy.Module class, instance or factory, got int"),
        ("--program", "my_prompts:", "expected an import path 'package.module:Name'"),
        ("--metric", "my_prompts:two_args_only", "a metric takes (example, prediction, trace=None)"),
        ("--metric", "my_prompts:NOT_A_PROGRAM", "int object is not callable"),
        ("--program", "nonsense", "unknown program 'nonsense'"),
    ],
)
def test_a_bad_import_path_is_a_one_line_error(
    task_folder: Path, user_project: Path, flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "compile",
            "--data",
            str(task_folder),
            flag,
            value,
            "--optimizer",
            "labeled",
            "--out",
            str(user_project / "run"),
        ],
        lm=fake_world_lm(),
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("dspy-ext compile: error: ") and len(err.strip().splitlines()) == 1
    assert message in err


def test_resolve_metric_accepts_two_argument_metrics(user_project: Path) -> None:
    (user_project / "two.py").write_text("def metric(example, prediction):\n    return 1.0\n")
    assert resolve_metric("two:metric").__name__ == "metric"
    with pytest.raises(ComponentError, match="unknown metric 'nope'"):
        resolve_metric("nope")


# ---- the README's main job on the real model ---------------------------------------------------


@pytest.mark.embedded
def test_embedded_compile_writes_a_complete_run_folder(
    tmp_path: Path, local_lm, capsys: pytest.CaptureFixture[str]
) -> None:
    """``dspy-ext compile`` with APE at a small budget on SmolLM2, on a small slice of the sentiment task."""
    folder = task_slice(tmp_path / "sentiment-slice", n_train=30, n_test=10)
    capsys.readouterr()
    code = main(
        [
            "compile",
            "--data",
            str(folder),
            "--optimizer",
            "ape",
            "--budget",
            "30",
            "--train",
            "15",
            "--val",
            "10",
            "--seed",
            "0",
            "--out",
            str(tmp_path / "run"),
            "--json",
        ],
        lm=local_lm,
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert 0 < summary["lm_calls"] <= 30 and summary["budget_enforced"] is True
    assert summary["lm"].startswith("local/") and summary["adapter"] == "PlainAdapter"
    assert summary["test"] == 10 and 0.0 <= summary["test_score"] <= 100.0
    run_dir = tmp_path / "run"
    trials = [json.loads(line) for line in (run_dir / "trials.jsonl").read_text().splitlines()]
    assert trials and all(t["method"] == "ape" for t in trials)
    opened = open_run(run_dir)
    assert opened.settings.optimizer == "ape" and opened.settings.budget == 30
    report = (run_dir / "report.md").read_text()
    assert "## Predictor `predict`" in report
    gain = summary["test_score"] - summary["baseline_test_score"]
    assert f"Test {summary['test_score']:.1f}%: {gain:+.1f} points over the labeled-demo baseline" in report


def test_lm_retries_and_timeout_are_settings(
    task_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--lm-retries`` reaches every engine call: a connection reset on each first try is retried, or not."""
    from dspy_ext.lm import FakeEngine

    from support.fake_world import respond

    seen: set[str] = set()

    class Flaky(FakeEngine):
        def generate(self, request):
            text = str(request)
            if text not in seen:
                seen.add(text)
                raise ConnectionResetError("connection reset by peer")
            return super().generate(request)

    import dspy

    def evaluate(*flags: str) -> dict:
        seen.clear()
        lm = dspy.LM(f"fake/flaky-{len(flags)}", engine=Flaky(respond), cache=False)
        capsys.readouterr()
        code = main(
            [
                "evaluate",
                "--data",
                str(task_folder),
                "--adapter",
                "plain",
                "--demos",
                "2",
                "--threads",
                "1",
                "--json",
                *flags,
            ],
            lm=lm,
        )
        assert code in (0, 1)
        return json.loads(capsys.readouterr().out)

    retried = evaluate("--lm-retries", "1")
    assert retried["errors"]["lm_error"] == 0 and retried["n"] == 16
    not_retried = evaluate("--lm-retries", "0")
    assert not_retried["errors"]["lm_error"] == 16
    assert RunSettings(task="sentiment", lm_timeout=2.5).lm_timeout == 2.5
    with pytest.raises(SettingsError, match="lm_timeout: Input should be greater than 0"):
        RunSettings(task="sentiment", lm_timeout=0)
