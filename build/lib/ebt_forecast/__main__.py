"""`python -m ebt_forecast` = `ebt-forecast`."""
import sys

from ebt_forecast.cli import main

sys.exit(main())
