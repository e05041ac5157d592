"""The group accounts the config describes, as plans the ledger is made to agree with: members
listed, or a Unix group's from NSS (looked up at most once a minute)."""

from __future__ import annotations

from gpuacct.config import BillingSettings
from gpuacct.limits import GroupMembers
from ledger import AccountPlan


class AccountPlans:
    def __init__(self, settings: BillingSettings) -> None:
        self.settings = settings
        self.groups = GroupMembers((a.unix_group for a in settings.accounts.values()
                                    if a.unix_group), "billing.accounts.*.unix_group")

    def __call__(self) -> list[AccountPlan]:
        groups = self.groups() if self.groups.groups else {}
        plans = []
        for name, account in sorted(self.settings.accounts.items()):
            members = (frozenset(account.members) if account.members is not None
                       else frozenset(groups.get(account.unix_group, ()))
                       if account.unix_group else None)
            plans.append(AccountPlan(name, account.owner, members,
                                     dict(account.member_monthly_limits),
                                     account.opening_balance))
        return plans
