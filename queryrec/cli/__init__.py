"""The `queryrec` command line: one Typer app, every subcommand callable in-process."""
