"""The paper's three losses, one file each: L_ctr, L_next, L_cl."""

from queryrec.losses.contrastive_loss import contrastive_loss
from queryrec.losses.ctr_loss import ctr_loss
from queryrec.losses.next_item_loss import next_item_loss

__all__ = ["contrastive_loss", "ctr_loss", "next_item_loss"]
