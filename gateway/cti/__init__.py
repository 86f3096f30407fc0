"""The OpenMethods HIS Bridge Client: framing, the control target and the destination hierarchy."""
