"""gpuacct-web: balances, history, recharge and prices, server-rendered."""
