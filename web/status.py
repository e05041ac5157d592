"""An account as the pages and the API show it: the ledger's numbers with the burn rate and
time left from Prometheus and what the enforcer has in force."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from gpuacct.policy import UserPolicy
from web.live import Answer, Burn, Live
from web.queries import AccountRow, LedgerView


class AccountStatus(AccountRow, frozen=True):
    cost_per_hour: Decimal | None = None  # over the last hour; None: unknown
    seconds_left: float | None = None  # at that rate; None: not spending, or unknown
    enforcement: UserPolicy | None = None  # None: nothing enforced, or unknown


@dataclass(frozen=True)
class Overview:
    accounts: list[AccountStatus]
    problems: list[str]  # what could not be asked, so the page can say what it lacks
    version: int  # a new number whenever anything in it changed


class Accounts:
    """Every account's status, rebuilt only when the ledger or a live answer has changed."""

    def __init__(self, view: LedgerView, live: Live) -> None:
        self.view, self.live = view, live
        self._built: tuple[tuple[object, ...], Overview] | None = None

    def overview(self) -> Overview:
        rows, burn, enforcement = self.view.overview(), self.live.burn(), self.live.enforcement()
        inputs = (rows, burn, enforcement)
        built = self._built
        if built is not None and all(a is b for a, b in zip(built[0], inputs, strict=True)):
            return built[1]
        overview = Overview([_status(row, burn, enforcement) for row in rows],
                            [a.problem for a in (burn, enforcement) if a.problem],
                            built[1].version + 1 if built else 1)
        self._built = (inputs, overview)
        return overview

    def get(self, user: str) -> AccountStatus | None:
        return next((a for a in self.overview().accounts if a.user == user), None)

    def for_user(self, user: str) -> AccountStatus | None:
        """The account the user is charged to (their own, or a group's), with what is
        enforced on the user."""
        name = self.view.charged_to(user)
        account = self.get(name)
        if account is None or name == user:
            return account
        return account.model_copy(update={"enforcement": self.live.enforcement().value.get(user)})


def _status(row: AccountRow, burn: Answer[dict[str, Burn]],
            enforcement: Answer[dict[str, UserPolicy]]) -> AccountStatus:
    rate = burn.value.get(row.user)
    if rate is None and burn.problem is None:
        rate = Burn(Decimal("0.00"), None)  # Prometheus answered: not spending
    return AccountStatus(**row.model_dump(), cost_per_hour=rate.per_hour if rate else None,
                         seconds_left=rate.seconds_left if rate else None,
                         enforcement=enforcement.value.get(row.user))
