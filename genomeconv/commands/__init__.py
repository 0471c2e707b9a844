"""The command line's command groups: each module defines `register(app)` adding its typer
commands, one thin function each that builds the pipeline's options object (options.py: every
shared option declared once, old spellings as hidden aliases) and calls the pipeline. Heavy
imports (torch, ray) stay inside the commands so that `genomeconv --help` stays fast."""
