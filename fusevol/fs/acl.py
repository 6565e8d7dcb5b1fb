"""POSIX ACLs in their xattr form, as far as fusevol takes them: an access ACL
that says no more than a mode (owner, group or mask, and others) is that mode.

Volumes keep no ACLs (the kernel checks modes: default_permissions), but tools
set such ACLs while copying or resetting permissions (`setfacl -b`, `cp -a`),
and ext4 takes them as a chmod.
"""

import struct

_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")  # tag, permissions (rwx), id
_VERSION = 2
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


def mode_bits(value: bytes) -> int | None:
    """The permission bits an access ACL amounts to, or None when it names users
    or groups (or is malformed): only a real ACL could hold that."""
    if len(value) < _HEADER.size or (len(value) - _HEADER.size) % _ENTRY.size:
        return None
    if _HEADER.unpack_from(value)[0] != _VERSION:
        return None
    perms = {}
    for offset in range(_HEADER.size, len(value), _ENTRY.size):
        tag, perm, _ = _ENTRY.unpack_from(value, offset)
        if tag not in (USER_OBJ, GROUP_OBJ, MASK, OTHER) or tag in perms or perm & ~0o7:
            return None
        perms[tag] = perm
    if not {USER_OBJ, GROUP_OBJ, OTHER} <= perms.keys():
        return None
    group = perms.get(MASK, perms[GROUP_OBJ])  # a mask stands for the group class
    return perms[USER_OBJ] << 6 | group << 3 | perms[OTHER]
