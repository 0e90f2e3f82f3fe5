"""Keras 3 layers and networks for diffusion models (all registered under "tfdiffusion")."""

from tfdiffusion.layers.classifier import build_classifier
from tfdiffusion.layers.dit import DiT, DiTBlock
from tfdiffusion.layers.embedding import SinusoidalEmbedding, TimestepEmbedding
from tfdiffusion.layers.mlp import MLPDenoiser
from tfdiffusion.layers.seed_unet import ConvBlock, SeedUNet
from tfdiffusion.layers.unet import AttentionBlock, ResidualBlock, UNet
