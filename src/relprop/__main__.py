"""``python -m relprop`` is the ``relprop`` command (and what ``torchrun -m relprop`` runs)."""
import sys

from .cli import main

sys.exit(main())
