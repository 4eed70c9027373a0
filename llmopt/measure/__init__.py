"""Honest measurement: clocks read after the device is synchronized, device and process memory, the machine a
run was on, and the roofline (the least time the hardware allows for the same tokens)."""
