"""The usage ledger: one record per request, its schema and migrations, the stores and the writer.

May import the base modules only; it knows records, not requests or flights.
"""

from trio_balancer.ledger.store import *  # noqa: F403
from trio_balancer.ledger.store import __all__ as __all__
