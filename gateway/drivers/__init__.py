"""The PBX side: the driver interface, the simulated phone network, and the OptimaCCS drivers."""
