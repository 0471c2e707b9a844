"""The command line's options: one name per concept in every command's --help, defaults stated
once (pipelines/options.py), old spellings that still work with a one-line note, and every bad
option as one line `error: ...`, exit 2."""

from __future__ import annotations

import inspect
import re

import click
import pytest
import typer
from typer.testing import CliRunner

from genomeconv.cli import app
from genomeconv.commands import embed, track, train, variants
from genomeconv.pipelines import options
from helpers import assert_one_line_error, run_cli_here

# concept -> its one name; a command offering the concept must spell it so, and no command may
# offer any of the other spellings seen before (they live on only as hidden aliases).
CONCEPTS = {
    "reference": ("--fasta", ("--reference", "--ref", "--genome")),
    "genes": ("--genes", ("--gene",)),
    "regions": ("--region", ("--regions",)),
    "strands": ("--strands", ("--strand", "--no-rc", "--rc")),
    "unit size": ("--unit-bp", ("--unit-size",)),
    "model": ("--model", ("--base-model", "--family", "--k")),
    "workers": ("--num-workers", ("--workers",)),
    "replace outputs": ("--overwrite", ()),
}
JOBS = ("embed", "track", "score-variants", "pretrain", "finetune")
RUN_GROUP = ("--out", "--model", "--device", "--dtype", "--num-workers", "--address")
JOB_GROUP = ("--gpus-per-worker", "--overwrite", "--keep-nonfinite", "--unit-bp")


def commands() -> dict[str, click.Command]:
    """Every command by its full name ("plot track"), walking the groups."""
    found: dict[str, click.Command] = {}

    def walk(cmd: click.Command, name: str) -> None:
        if hasattr(cmd, "commands"):  # a group (typer may carry its own copy of click)
            for sub, child in cmd.commands.items():
                walk(child, f"{name} {sub}".strip())
        else:
            found[name] = cmd

    walk(typer.main.get_command(app), "")
    return found


def visible_options(cmd: click.Command) -> set[str]:
    return {o for p in options_of(cmd) for o in p.opts + p.secondary_opts}


def options_of(cmd: click.Command) -> list[click.Option]:
    return [p for p in cmd.params if p.param_type_name == "option" and not p.hidden]


@pytest.mark.parametrize("name", sorted(commands()))
def test_one_name_per_concept_in_every_help(name):
    cmd = commands()[name]
    shown = visible_options(cmd)
    help_text = CliRunner().invoke(app, [*name.split(), "--help"], terminal_width=200).output
    for concept, (spelling, others) in CONCEPTS.items():
        for other in others:
            assert other not in shown, f"{name}: {other} ({concept}) is spelled {spelling}"
            assert not re.search(rf"{re.escape(other)}\b(?!-)", help_text), (name, other)
    if name in JOBS:
        assert set(RUN_GROUP) <= shown, (name, set(RUN_GROUP) - shown)
    if name in ("embed", "track", "score-variants"):
        assert set(JOB_GROUP) <= shown, (name, set(JOB_GROUP) - shown)
        assert {"--fasta", "--region", "--genes", "--gtf"} <= shown


def test_each_shared_option_is_declared_once():
    """Every job (and query) takes a shared option from commands/options.py: the same help
    text. (`submit` and `jobs` take the job server's URL as --address, another port of the
    cluster; a plot draws one --region.)"""
    helps: dict[str, set[str]] = {}
    for name, cmd in commands().items():
        if name not in (*JOBS, "query"):
            continue
        for p in options_of(cmd):
            for o in p.opts:
                helps.setdefault(o, set()).add(p.help or "")
    for option in (*RUN_GROUP[1:], *JOB_GROUP, "--fasta", "--region", "--genes", "--gtf",
                   "--bed", "--features", "--strands"):
        if option == "--strands":  # plot track draws strands; the jobs score them
            continue
        assert len(helps[option]) == 1, (option, helps[option])


@pytest.mark.parametrize("command, cls", [
    (embed.embed, options.EmbedOptions), (track.track, options.TrackOptions),
    (variants.score_variants, options.VariantOptions), (train.pretrain, options.PretrainOptions),
    (train.finetune, options.FinetuneOptions)])
def test_cli_defaults_are_the_options_defaults(command, cls):
    for name, param in inspect.signature(command).parameters.items():
        default = getattr(param.default, "default", param.default)
        if hasattr(cls, name) and default is not None and name not in ("warmup_lengths",):
            assert default == getattr(cls, name), (command.__name__, name)


@pytest.mark.parametrize("args, note", [
    (["score-variants", "v.vcf", "--fasta", "r.fa", "--no-rc"], "--no-rc is now --strands fwd"),
    (["score-variants", "v.vcf", "--fasta", "r.fa", "--unit-size", "3"], "--unit-size is now"),
    (["score-variants", "--saturate", "c:1-2", "--fasta", "r.fa", "--force"],
     "--force is now --max-hours 0"),
    (["finetune", "v.vcf", "--fasta", "r.fa", "--base-model", "m"], "--base-model is now --model"),
    (["query", "out", "--gene", "G1"], "--gene is now --genes"),
    (["plot", "track", "out", "--region", "c:1-2", "--strand", "fwd", "-o", "x.png"],
     "--strand is now --strands"),
])
def test_old_spellings_still_parse_with_a_note(args, note, tmp_path, monkeypatch):
    """The old spelling reaches the command (which then fails on the missing files, one line)."""
    monkeypatch.chdir(tmp_path)
    result = run_cli_here(*args)
    assert f"genomeconv: {note}" in result.stderr or "error: " in result.stderr, result.stderr
    if "--saturate" not in args:  # --saturate reads the FASTA before the options are built
        assert f"genomeconv: {note}" in result.stderr, result.stderr
    assert "No such option" not in result.stderr


@pytest.mark.parametrize("args, text", [
    (["embed", "x.fa", "--num-workers", "0"], "--num-workers must be at least 1"),
    (["embed", "x.fa", "--pooling", "median"], "--pooling must be one of"),
    (["track", "x.fa", "--strands", "up"], "--strands must be one of"),
    (["score-variants", "v.vcf", "--fasta", "x.fa", "--max-hours", "-1"], "--max-hours"),
    (["score-variants", "v.vcf"], "--fasta"),
    (["embed", "x.fa", "--no-such-option"], "No such option"),
    (["pretrain", "--steps", "0"], "--steps"),
    (["query", "out", "--format", "xml"], "--format must be"),
    (["submit", "--env", "NOEQUALS", "--", "info"], "--env expects KEY=VALUE"),
    (["track"], "give the reference"),
])
def test_bad_options_are_one_line(args, text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.fa").write_text(">c\nACGT\n")
    assert_one_line_error(run_cli_here(*args), text)
