//! `residual`: declare residual networks in a few lines; get statically shaped dfdx modules.
pub use residual_runtime as runtime;
pub use dfdx;
