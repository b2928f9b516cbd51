"""Deprecated alias: recgen.models moved to recgen.app.models; import from there.

    from recgen.app.models import build_model
"""

import warnings

from recgen.app import models as _moved
from recgen.app.models import *  # noqa: F401,F403

__all__ = list(_moved.__all__)

warnings.warn("recgen.models moved to recgen.app.models", DeprecationWarning, stacklevel=2)
