"""gpuacct-web: the balance page and JSON API.

  gpuacct-web run             serve on --web.listen-address (SIGHUP: read the session secret,
                              the enforcer token and the admin password hash again)
  gpuacct-web hash-password   read a password on standard input, print auth.admin_password_hash
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

from gpuacct.cli_common import (
    command_or_usage,
    service_parser,
)
from gpuacct.files import readable_by_others
from gpuacct.listener import BasicAuth
from gpuacct.service import start
from gpuacct.store import is_url
from ledger import exists as ledger_exists
from web.app import create_app
from web.auth import hash_password


def main(argv: list[str] | None = None) -> int:
    parser, sub = service_parser("gpuacct-web", __doc__, "serve the page and the API",
                                 "the page and the API")
    sub.add_parser("hash-password", help="make auth.admin_password_hash from a password")
    args = parser.parse_args(argv)
    command = command_or_usage(parser, args)
    if command == "hash-password":
        password = (getpass.getpass("password: ") if sys.stdin.isatty()
                    else sys.stdin.readline().rstrip("\n"))
        if len(password) < 8:
            print("gpuacct-web: use at least 8 characters", file=sys.stderr)
            return 2
        print(hash_password(password))
        return 0
    service = start("gpuacct-web", args, lambda s: s.web.listen_address)
    settings, log, host, port = service.settings, service.log, service.host, service.port
    if not ledger_exists(settings.billing.ledger):
        print(f"gpuacct-web: no ledger at {settings.billing.ledger} (start gpuacct-billing "
              "first, or set billing.ledger)", file=sys.stderr)
        return 1
    ledger_file = settings.billing.ledger
    problem = None if is_url(ledger_file) else readable_by_others(Path(ledger_file))
    if problem:
        print(f"gpuacct-web: the ledger: {problem}", file=sys.stderr)
        return 2
    if settings.auth.admin_password_hash is None:
        log.warning("auth.admin_password_hash is not set: nobody can log in as administrator")
    log.info("serving on %s:%d, ledger %s", host, port, settings.billing.ledger)
    app = create_app(settings, service.tls, BasicAuth(service.listener.basic_auth_users))
    service.reload_on_sighup(app.state.ctx.rotate)
    # The page believes X-Forwarded-For from web.trusted_proxies only (web.deps.client_address).
    server = service.asgi_server(app)
    server.run()
    return 0 if server.started else 1
