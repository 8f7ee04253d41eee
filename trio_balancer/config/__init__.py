"""The configuration: a frozen schema and the TOML parser that fills it, strictly.

May import the base modules and protocol (price rates); nothing that does I/O at run time.
"""

from trio_balancer.config.schema import *  # noqa: F403
from trio_balancer.config.schema import __all__ as __all__
