"""Sample slices the paper reports on."""

from __future__ import annotations

import numpy as np

from queryrec.features.dataset import PreparedDataset


def last_query_without_click(
    dataset: PreparedDataset, users: np.ndarray, search_ends: np.ndarray
) -> np.ndarray:
    """(B,) bool: the user's most recent search session before t exists and had no click.

    The slice "users whose recent queries had no click", where L_cl has no label unless the
    diffusion job supplies one.
    """
    session = np.asarray(search_ends, dtype=np.int64) - 1
    has_session = session >= 0
    safe = np.where(has_session, session, 0)
    own = has_session & (dataset.search_user[safe] == users)
    clicks = dataset.clicked_offsets[safe + 1] - dataset.clicked_offsets[safe]
    return own & (clicks == 0)
