"""``python -m dictionary_learning_aligned.reproduce``: the ``reproduce`` command (:func:`.command.main`)."""

import sys

from .command import main

sys.exit(main())
