"""The command line's common parts."""

from typer.testing import CliRunner

from genomeconv.cli import app


def test_info_lists_versions_and_devices():
    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    for key in ("genomeconv", "torch", "ray", "pysam", "devices", "ray status"):
        assert key in result.output
