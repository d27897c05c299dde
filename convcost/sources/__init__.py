"""Stage 1, sources: turn a SOURCE (YAML spec, file.py:Name, package.module:Name, torchvision:/timm:,
a torch.export .pt2 program) into a model and example inputs."""
