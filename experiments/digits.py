"""The default experiment (digits, AGD over classification and label-text NCE).

Its table lives in `imp/config/digits.py` so that `python -m imp.main` with no flags runs the
same experiment from an installed package; see that file for the settings.
"""

from imp.config.digits import get_config  # noqa: F401
