"""``python -m trainer`` trains; see trainer/train.py for the commands."""

import sys

from trainer.cli import main

sys.exit(main())
