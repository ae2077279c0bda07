"""Backbones returning (logits, stage feature maps), the TD module, and the LightningModule."""
