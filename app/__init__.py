"""The top floor: the `queryrec` command line (`app.cli`), the demo (`app.demo`) and the
model bench (`app.bench`). Everything else is below it; nothing imports it."""
