#!/usr/bin/python3
"""Runs a command with io_uring denied, as Docker's and containerd's default seccomp
profiles deny it: io_uring_setup, io_uring_enter and io_uring_register fail with ENOSYS.

Usage: no_io_uring.py PROGRAM [ARGS...]   (Debian's python3-seccomp; run by /usr/bin/python3)
"""
import errno
import os
import sys

import seccomp

f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
for call in ("io_uring_setup", "io_uring_enter", "io_uring_register"):
    f.add_rule(seccomp.ERRNO(errno.ENOSYS), call)
f.load()
os.execv(sys.argv[1], sys.argv[1:])
