"""`gpuacct-stack`: every part of gpuacct on one machine, and the server launchers it shares
with the test fixtures."""
