"""``python -m archipel.cli`` runs the CLI (used by tests and by the Ray/local job launchers)."""

from archipel.cli.main import main

main()
