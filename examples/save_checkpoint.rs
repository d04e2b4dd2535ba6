//! A model trained here, back to PyTorch: trains the zoo's ResNet-18 for a few SGD steps on
//! seeded noise (so weights and batch-norm statistics are no longer their initial values),
//! saves it, and saves an input batch with the logits this crate computes for it in eval mode.
//!
//! ```text
//! cargo run --release --example save_checkpoint -- [--out DIR] [--steps N]
//! .venv-ref/bin/python scripts/reference/roundtrip_torchvision.py DIR
//! ```
//! Writes `DIR/resnet18.safetensors` (the checkpoint, in torchvision's layout) and
//! `DIR/resnet18_io.safetensors` (`input` [2, 3, 224, 224] and `logits` [2, 1000], F32). The
//! script loads the checkpoint into `torchvision.models.resnet18()` with `strict=True` and
//! compares torchvision's logits with ours. `DIR` defaults to `out/checkpoint`.

use std::error::Error;
use std::path::PathBuf;

use residual::dfdx::optim::{Momentum, Sgd, SgdConfig};
use residual::dfdx::prelude::*;
use residual::zoo::ResNet18;

type Model = ResNet18<f32, Cpu>;
const BATCH: usize = 2;

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = pico_args::Arguments::from_env();
    let out: PathBuf = args.opt_value_from_str("--out")?.unwrap_or_else(|| PathBuf::from("out/checkpoint"));
    let steps: usize = args.opt_value_from_str("--steps")?.unwrap_or(3);
    let rest = args.finish();
    if !rest.is_empty() {
        return Err(format!("unknown arguments: {rest:?}").into());
    }
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;

    let dev = Cpu::seed_from_u64(0);
    let mut model = dev.build_module::<Model, f32>();
    let mut opt = Sgd::new(&model, SgdConfig { lr: 0.01, momentum: Some(Momentum::Classic(0.9)), weight_decay: None });
    let mut grads = model.alloc_grads();
    for step in 0..steps {
        let x: Tensor<Rank4<BATCH, 3, 224, 224>, f32, Cpu> = dev.sample_normal();
        let labels: Tensor<Rank2<BATCH, 1000>, f32, Cpu> = dev.sample_uniform().softmax::<Axis<1>>();
        let logits = model.forward_mut(x.traced(grads));
        let loss = cross_entropy_with_logits_loss(logits, labels);
        println!("step {step}: loss {:.4}", loss.array());
        grads = loss.backward();
        opt.update(&mut model, &grads).map_err(|e| format!("optimiser update failed: {e}"))?;
        model.zero_grads(&mut grads);
    }

    let checkpoint = out.join("resnet18.safetensors");
    residual::io::save_safetensors(&model, &checkpoint)?;
    println!("wrote {}", checkpoint.display());

    let x: Tensor<Rank4<BATCH, 3, 224, 224>, f32, Cpu> = dev.sample_normal();
    let logits = model.forward(x.clone());
    let io_path = out.join("resnet18_io.safetensors");
    let (xv, yv) = (x.as_vec(), logits.as_vec());
    let bytes = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
    let (xb, yb) = (bytes(&xv), bytes(&yv));
    let views = [
        ("input", ::safetensors::tensor::TensorView::new(::safetensors::Dtype::F32, vec![BATCH, 3, 224, 224], &xb)?),
        ("logits", ::safetensors::tensor::TensorView::new(::safetensors::Dtype::F32, vec![BATCH, 1000], &yb)?),
    ];
    ::safetensors::tensor::serialize_to_file(views, &None, &io_path)?;
    println!("wrote {} (an input batch and our eval-mode logits)", io_path.display());
    Ok(())
}
