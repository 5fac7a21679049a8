"""The README's commands and settings table stay true: CI runs its test command, every flag is documented."""

from __future__ import annotations

from pathlib import Path

from aqtrack.config import Config, flag, show

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    readme_test_command = (
        "bash scripts/system-deps.sh && "
        "pip install torch==2.13.0 && pip install -e '.[test]' && python -m pytest"
    )
    assert f"```bash\n{readme_test_command}\n```" in README
    ci_command = next(line for line in ci.splitlines() if "python -m pytest" in line)
    assert ci_command.replace(" -q", "") == readme_test_command


def test_readme_main_command_trains_three_rounds_with_mlflow_run():
    assert "pip install torch==2.13.0 && pip install -e . && mlflow run . --env-manager local" in README
    assert "-P rounds=3" in README


def test_readme_documents_every_setting_with_its_default():
    rows = {line.split(" | ")[0]: line for line in README.splitlines() if line.startswith("| `--")}
    for name, default in Config().to_dict().items():
        row = rows.get(f"| `{flag(name)}` / `{name}`")
        assert row is not None, name
        assert f"`{show(default)}`" in row or (default == "" and '`""`' in row), (name, row)
