"""The `runs` command: every subcommand, the admin commands' settings, the `runs dev` supervisor,
and tables."""
