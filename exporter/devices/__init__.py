"""A node's GPUs and NPUs: one module per vendor (named in gpuacct.config.devices), each with
its fake, read together as one node by `node.Devices`."""
