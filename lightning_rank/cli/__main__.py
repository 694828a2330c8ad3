"""`python -m lightning_rank.cli`: the console script (torchrun and SLURM launch it so)."""

import sys

from lightning_rank.cli.dispatch import main

sys.exit(main())
