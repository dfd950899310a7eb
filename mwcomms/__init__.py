"""mwcomms: forward the sockets of unmodified Linux programs to an isolated network stack."""
