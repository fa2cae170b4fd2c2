"""Git object ids, computed exactly as git computes them.

The client compares a regular file's ``oid`` with the git blob id of its local file, so these must
be right; trees and commits are hashed the same way so that ids look and behave like the Hub's.
"""

from __future__ import annotations

import hashlib

__all__ = ["git_blob_sha1", "git_commit_sha1", "git_tree_sha1"]


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a file's content (what the Hub reports as a regular file's ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def git_tree_sha1(files: dict[str, str], prefix: str = "") -> str:
    """The git tree id of the folder ``prefix`` of ``files`` (path -> blob id): real git tree encoding, nested."""
    entries: dict[str, tuple[str, bytes]] = {}
    for path, oid in files.items():
        if not path.startswith(prefix):
            continue
        rest = path[len(prefix) :]
        if "/" in rest:
            name = rest.split("/", 1)[0]
            if name not in entries:
                entries[name] = ("40000", bytes.fromhex(git_tree_sha1(files, prefix + name + "/")))
        else:
            entries[rest] = ("100644", bytes.fromhex(oid))
    # git sorts tree entries by name, with folders compared as if their name ended in "/"
    ordered = sorted(entries.items(), key=lambda kv: kv[0] + ("/" if kv[1][0] == "40000" else ""))
    body = b"".join(f"{mode} {name}".encode() + b"\0" + raw for name, (mode, raw) in ordered)
    return hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()


def git_commit_sha1(tree: str, parents: list[str], author: str, stamp: int, title: str, message: str,
                    nonce: str) -> str:
    """The id of a commit object; ``nonce`` is appended as an extra header line.

    The nonce keeps two identical commits made in the same second distinct, as on the Hub (which
    records the exact time); git would collide here.
    """
    text = f"tree {tree}\n"
    text += "".join(f"parent {p}\n" for p in parents)
    text += f"author {author} <{author}@users.noreply.huggingface.co> {stamp} +0000\n"
    text += f"committer {author} <{author}@users.noreply.huggingface.co> {stamp} +0000\n\n"
    text += title + ("\n\n" + message if message else "") + "\n"
    text += f"\nhub-nonce {nonce}\n"
    raw = text.encode()
    return hashlib.sha1(b"commit %d\0" % len(raw) + raw).hexdigest()
