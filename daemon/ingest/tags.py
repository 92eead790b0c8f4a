"""The tags a train message may carry for error analysis, checked like any array.

A message tags its rows with `tags`, either int codes (m,) into the header's
`tag_names` (-1: the row has no tag) or multi-hot (m, T) 0/1 with T = len(tag_names).
Whatever form came, the check returns them multi-hot: (m, T) bool, with the names.
"""
from __future__ import annotations

import numpy as np

from learnd.clients.protocol import ProtocolError

MAX_TAG_NAME_LEN = 64


def tag_names(header, max_tags):
    """The header's tag_names: a list of 1..max_tags distinct non-empty strings."""
    names = header.get("tag_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ProtocolError("bad_header", "a message with tags needs header 'tag_names': a non-empty "
                                          "list of strings, the name of each tag code")
    if len(names) > max_tags:
        raise ProtocolError("too_large", f"{len(names)} tag_names, more than max_tags = {max_tags}")
    if len(set(names)) != len(names) or not all(0 < len(n) <= MAX_TAG_NAME_LEN for n in names):
        raise ProtocolError("bad_header", f"tag_names must be distinct strings of 1..{MAX_TAG_NAME_LEN} chars")
    return tuple(names)


def check_tags(tags, header, m, max_tags):
    """(multi-hot (m, T) bool, names) of a message's tags; ProtocolError when they are bad.

    tags: the `tags` array as sent; m: the message's rows.
    """
    if max_tags == 0:
        raise ProtocolError("bad_array", "this daemon takes no tags (max_tags = 0)")
    names = tag_names(header, max_tags)
    if tags.dtype.kind not in "iub":
        raise ProtocolError("bad_array", f"tags must be integer codes or 0/1, got dtype {tags.dtype.str}")
    if tags.ndim not in (1, 2) or tags.shape[0] != m:
        raise ProtocolError("shape_mismatch", f"tags must be ({m},) codes or ({m}, {len(names)}) multi-hot, "
                                              f"got shape {list(tags.shape)}")
    T = len(names)
    if tags.ndim == 1:
        if m and (int(tags.min()) < -1 or int(tags.max()) >= T):
            raise ProtocolError("bad_tag", f"tag codes must be -1 (none) or 0..{T - 1} (tag_names has {T}), "
                                           f"got {int(tags.min())}..{int(tags.max())}")
        hot = np.zeros((m, T), dtype=bool)
        tagged = np.flatnonzero(tags >= 0)
        hot[tagged, tags[tagged]] = True
        return hot, names
    if tags.shape[1] != T:
        raise ProtocolError("shape_mismatch", f"multi-hot tags must have {T} columns (one per tag_names), "
                                              f"got {tags.shape[1]}")
    if tags.dtype.kind != "b" and not np.isin(tags, (0, 1)).all():
        raise ProtocolError("bad_tag", "multi-hot tags must be 0 or 1")
    return tags.astype(bool), names
