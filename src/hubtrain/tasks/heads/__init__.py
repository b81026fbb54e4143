"""Task heads for dense prediction: DeepLabV3+ / FCN for segmentation, FPN + FCOS for detection."""
from hubtrain.tasks.heads.fcos import FCOSHead
from hubtrain.tasks.heads.fpn import FPN
from hubtrain.tasks.heads.segmentation import ASPP, DeepLabV3PlusHead, FCNHead

__all__ = ["ASPP", "DeepLabV3PlusHead", "FCNHead", "FPN", "FCOSHead"]
