"""gpuacct-exporter: the node agent that meters GPU and CPU use per Unix user and job."""
