"""Training: data, augmentation, targets, losses, loop, distillation, quantisation."""
