"""What a GPU node's install takes, shipped inside gpuacct's wheel so the control host can put
it into a node's bundle: install-node.sh and the systemd units (no Python code)."""
