"""``python -m lifelong`` (also what ``torchrun -m lifelong train ...`` runs)."""

from lifelong.cli import main

main()
