"""The nodes' jobs as the control plane keeps them (the web's Jobs view): written by the billing
engine's job tracker, read by the web; a store of its own beside the ledger."""
