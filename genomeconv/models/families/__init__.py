"""Model families, one module (or subpackage) each: its config, modules, tokenizer and
checkpoint layouts. Importing a family's module registers it (`models.base.register`);
`models.checkpoints.families` imports every module here, so a new family is one new file."""
