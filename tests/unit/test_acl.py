"""The default-ACL rule of new objects (``posix_acl_create``), on hand-made ACLs; the FUSE
test (``tests/fuse/test_acl.py``) checks the same rule against the kernel."""

from __future__ import annotations

import stat

from layerfs import acl

NO_ID = 0xFFFFFFFF


def _acl(*entries: tuple[int, int]) -> bytes:
    return acl.pack(
        [[tag, perm, 1000 if tag in (acl.USER, acl.GROUP) else NO_ID] for tag, perm in entries]
    )


MINIMAL = _acl((acl.USER_OBJ, 7), (acl.GROUP_OBJ, 5), (acl.OTHER, 0))
EXTENDED = _acl((acl.USER_OBJ, 6), (acl.USER, 7), (acl.GROUP_OBJ, 7), (acl.MASK, 5), (acl.OTHER, 4))


def test_without_a_umask_the_mode_is_taken_as_given() -> None:
    assert acl.new_object(stat.S_IFREG, 0o666, None, EXTENDED) == acl.NewObject(0o666, {})


def test_without_a_default_acl_the_umask_applies() -> None:
    assert acl.new_object(stat.S_IFREG, 0o666, 0o022, None) == acl.NewObject(0o644, {})
    made = acl.new_object(stat.S_IFDIR, 0o2777, 0o027, None)
    assert made.mode == 0o2750  # the set-gid bit is not the umask's


def test_a_minimal_default_acl_narrows_the_mode_and_adds_no_access_acl() -> None:
    assert acl.new_object(stat.S_IFREG, 0o666, 0o000, MINIMAL) == acl.NewObject(0o640, {})
    made = acl.new_object(stat.S_IFDIR, 0o777, 0o022, MINIMAL)
    assert made == acl.NewObject(0o750, {acl.DEFAULT: MINIMAL})  # the umask is ignored


def test_the_mask_narrows_the_group_bits_and_the_access_acl() -> None:
    made = acl.new_object(stat.S_IFREG, 0o666, 0o077, EXTENDED)
    assert made.mode == 0o644  # owner 6&6, mask 5&6 -> 4, other 4&6
    expected = _acl(
        (acl.USER_OBJ, 6), (acl.USER, 7), (acl.GROUP_OBJ, 7), (acl.MASK, 4), (acl.OTHER, 4)
    )
    assert made.xattrs == {acl.ACCESS: expected}


def test_a_value_that_is_no_acl_changes_nothing() -> None:
    assert acl.inherit(b"\x01\x00", 0o666) == (0o666, None)
