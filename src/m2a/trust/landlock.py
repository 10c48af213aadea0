"""Landlock (the kernel's unprivileged access control) through ctypes: which ABI the kernel has, and
one call that confines the calling process's file-system writes to a few folders.

The unshare sandbox (``nsinit.py``) calls :func:`restrict` in the command's process just before it
executes the command: everything stays readable and executable, only the folders given may be
written (and only the files under ``/dev`` given may be opened for writing), whatever the mounts
say. Where the kernel also has Landlock's scopes (ABI 6), the command cannot signal processes
outside its domain nor reach abstract Unix sockets outside it.

Standard library only: this module is imported by a helper started with ``python -I -S``.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

# syscall numbers: the same on every architecture (the generic table)
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

READ = EXECUTE | READ_FILE | READ_DIR


def _fs_rights(abi: int) -> int:
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


_libc: ctypes.CDLL | None = None


def _syscall(*args: int | bytes | None) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    res = _libc.syscall(*[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return res


def abi() -> int:
    """The Landlock ABI version the kernel offers; 0 when it has none (not built in, or disabled)."""
    if platform.system() != "Linux":
        return 0
    try:
        return _syscall(_CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION)
    except OSError:
        return 0


def restrict(writable: list[str], devices: list[str] = ()) -> int:
    """Confine the calling process (and what it runs) so that it may read and execute anything it
    could before, write only beneath the folders ``writable``, and open for writing the existing
    files beneath ``devices`` (``/dev``: null, tty...) without creating any there. Sets
    no_new_privs. Returns the ABI used; raises OSError when the kernel refuses (callers that need
    Landlock fail closed)."""
    version = abi()
    if version < 1:
        raise OSError(38, "Landlock is not available in this kernel")
    handled = _fs_rights(version)
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if version >= 6 else 0
    attr = struct.pack("=QQQ", handled, 0, scoped) if version >= 6 else struct.pack("=Q", handled)
    ruleset = _syscall(_CREATE_RULESET, attr, len(attr), 0)
    try:
        _allow(ruleset, "/", READ)
        for path in writable:
            _allow(ruleset, path, handled)
        dev = READ | WRITE_FILE | (TRUNCATE if version >= 3 else 0) | (IOCTL_DEV if version >= 5 else 0)
        for path in devices:
            _allow(ruleset, path, dev)
        _set_no_new_privs()
        _syscall(_RESTRICT_SELF, ruleset, 0)
    finally:
        os.close(ruleset)
    return version


def _allow(ruleset: int, path: str, rights: int) -> None:
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        if not os.path.isdir(path):  # a file's rule may only carry the rights that apply to files
            rights &= EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
        attr = struct.pack("=Qi", rights, fd)
        _syscall(_ADD_RULE, ruleset, _RULE_PATH_BENEATH, attr, 0)
    finally:
        os.close(fd)


def _set_no_new_privs() -> None:
    pr_set_no_new_privs = 38
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
