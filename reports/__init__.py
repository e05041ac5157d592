"""Reports from the ledger, read through its reader only: monthly statements (CSV, HTML, PDF)
and CSV exports of usage, transactions and waste."""
