"""The README's Python API example runs as printed (it drifted once when pool() moved)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_python_api_example_runs():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "embedding (64,)" and lines[1].startswith("ok llr "), result.stdout


def test_evo2_command_lines_parse():
    """The Evo 2 section's command lines are accepted by the real CLI (options and types parsed,
    nothing run), so a renamed option breaks this test rather than a user's first run."""
    import shlex

    import typer

    from genomeconv.cli import app

    text = (ROOT / "README.md").read_text()
    section = text.split("## Evo 2", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```bash\n(.*?)```", section, re.S)
    lines = [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line]
    group = typer.main.get_command(app)
    parent = typer.Context(group, info_name="genomeconv")
    assert len(lines) == 5
    for argv in lines:
        assert argv[0] == "genomeconv", argv
        command = group.get_command(parent, argv[1])
        assert command is not None, argv
        command.make_context(argv[1], argv[2:], parent=parent)
