"""Python's subprocess (vfork + close_range/dup2 in the child) must not disturb the parent's
shim state: a forwarded socket keeps working and no control connection is leaked per child.
Prints "FDS <first> <last>" (open fds after the first and the tenth child) and "NAME ok"."""
import os
import socket
import subprocess

s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
name = s.getsockname()
counts = []
for i in range(10):
    subprocess.run(["true"], check=True, stdout=subprocess.PIPE)
    assert s.getsockname() == name
    counts.append(len(os.listdir("/proc/self/fd")))
print("FDS", counts[0], counts[-1])
print("NAME", "ok" if s.getsockname() == name else "changed")
