"""The INS: the isolated network stack that executes forwarded socket calls."""
