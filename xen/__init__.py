"""The platform layer: grant tables, event channels and XenStore, on real Xen or simulated."""
