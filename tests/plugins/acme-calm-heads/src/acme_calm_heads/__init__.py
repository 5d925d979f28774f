"""Test fixture plugin. Importing it is recorded so tests can prove discovery is lazy."""

import os

os.environ["ACME_CALM_HEADS_IMPORTED"] = "1"
