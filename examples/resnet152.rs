//! The main job: ResNet-152 on the CPU.
//!
//! Builds the zoo's ResNet-152 (a ~25-line `residual!` declaration), prints its compile-time
//! summary, runs a forward pass on a batch of images and prints the output shape, the latency and
//! the top-5 classes of each image.
//!
//! ```text
//! cargo run --release --example resnet152 -- [--batch N] [--runs N] [--image FILE.png|jpg]
//!                                            [--weights FILE.safetensors] [--labels FILE.txt] [--brief]
//! ```
//! Without `--image` the batch is synthetic (seeded noise); with it, the image is resized and
//! center-cropped to 224x224 and normalised as torchvision does, and fills the batch.
//! `--weights` loads a torchvision checkpoint exported to safetensors
//! (`safetensors.torch.save_file(torchvision.models.resnet152(weights=...).state_dict(), F)`);
//! without it the weights are torchvision's random initialisation, so the classes mean nothing.
//! `--labels` names the classes (one per line, 1000 lines).

mod common;

fn main() {
    common::classify::main::<residual::zoo::ResNet152<f32, residual::dfdx::prelude::Cpu>>(4, 3);
}
