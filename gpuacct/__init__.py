"""gpuacct: GPU and CPU accounting, billing and enforcement for shared GPU servers.

This package holds what the services share: configuration, the command-line plumbing and
`gpuacct-stack`, which runs every part on one machine.
"""

__version__ = "0.2.0"
