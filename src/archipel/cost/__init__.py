"""Money: the cost ledger, budgets and reports."""
