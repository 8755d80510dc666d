"""The team runtime: agents claiming tasks under leases and sharing verified gists."""
