"""``python -m xstilts.experiment``."""

import sys

from xstilts import experiment

sys.exit(experiment.main())
