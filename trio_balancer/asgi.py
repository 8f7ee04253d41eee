"""The documented Hypercorn entry point: ``hypercorn --worker-class trio 'trio_balancer.asgi:create_app()'``.

The app lives in :mod:`trio_balancer.app.asgi`; this name stays so deployments that use it
(systemd units, scripts) keep working.
"""

from trio_balancer.app.asgi import CONFIG_ENV, BalancerApp, create_app

__all__ = ["CONFIG_ENV", "BalancerApp", "create_app"]
