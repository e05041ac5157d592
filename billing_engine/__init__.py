"""gpuacct-billing: prices usage read from Prometheus and debits a Decimal ledger."""
