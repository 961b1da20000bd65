"""Real output recorded from psutil, netlink and py-spy, and the fakes that replay it."""
