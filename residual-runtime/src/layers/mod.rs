//! The dfdx modules the `residual!` macro instantiates, one file per layer.
//! Each is a `Module`/`ModuleMut` for inputs with any tape, a `TensorCollection` with
//! torchvision's parameter names, and statically shaped by const parameters.

mod attention;
mod batchnorm2d;
mod bias2d;
mod conv2d;
mod conv_transpose2d;
mod dropout;
mod flatten;
mod layer_norm;
mod layer_scale;
mod pool2d;
mod subsample_pad;
mod tokens;

pub use attention::SelfAttention;
pub use batchnorm2d::BatchNorm2d;
pub use bias2d::Bias2d;
pub use conv2d::Conv2d;
pub use conv_transpose2d::{conv_transpose_out_size, ConvTranspose2d};
pub use dropout::Dropout;
pub use flatten::Flatten;
pub use layer_norm::LayerNorm;
pub use layer_scale::LayerScale;
pub use pool2d::{AvgPool2d, MaxPool2d};
pub use subsample_pad::SubsamplePad;
pub use tokens::{check_token_ids, ClassToken, PosEmbedding};
