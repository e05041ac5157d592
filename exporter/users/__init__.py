"""What the users of a node reach: their commands (`gpuacct`, `gpuacct-balance`) and the socket
through which those commands speak to the node daemon."""
