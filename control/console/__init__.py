"""The web console, served by control at /console/ (issue #9): account requests,
administrator approval, credentials download; a glance at the cloud.

    from control.console import Console
    app = Console(service).build_app()     # ControlServer mounts it at /console/

Modules: app (routes, middleware, rendering), sessions (signed cookie + CSRF token),
passwords (scrypt, strength, the password tree), requests (account requests),
throttle (failed-login counting), visitor / admin / user (the pages).
"""

from .app import PREFIX, Console

__all__ = ["Console", "PREFIX"]
