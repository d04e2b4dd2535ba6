//! A Vision Transformer on the CPU: the zoo's ViT-B/16.
//!
//! Builds `residual::zoo::ViT_B_16` (torchvision's `vit_b_16`: a 16x16 patch embedding, the class
//! token, 12 encoder blocks of multi-head self-attention and an MLP, the head on the class token;
//! a ~25-line `residual!` declaration), prints its compile-time summary, runs a forward pass on a
//! batch of images and prints the output shape, the latency and the top-5 classes of
//! each image.
//!
//! ```text
//! cargo run --release --example vit -- [--batch N] [--runs N] [--image FILE.png|jpg]
//!                                      [--weights FILE.safetensors] [--labels FILE.txt] [--brief]
//! ```
//! Without `--image` the batch is synthetic (seeded noise); with it, the image is resized and
//! center-cropped to 224x224 and normalised as torchvision does (`ViT_B_16_Weights.IMAGENET1K_V1`'s
//! transform), and fills the batch. `--weights` loads a torchvision checkpoint exported to
//! safetensors (`safetensors.torch.save_file(torchvision.models.vit_b_16(weights=...).state_dict(), F)`);
//! without it the weights are random, so the classes mean nothing. `--labels` names the classes
//! (one per line, 1000 lines).

mod common;

fn main() {
    common::classify::main::<residual::zoo::ViT_B_16<f32, residual::dfdx::prelude::Cpu>>(2, 1);
}
