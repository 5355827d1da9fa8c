"""Privacy accounting and the node's persistent privacy ledger."""
