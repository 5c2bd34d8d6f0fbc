"""pytorch-grad-cam-compatible helpers: targets, images, reshape transforms, layer discovery."""
