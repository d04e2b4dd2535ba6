//! Ops that dfdx 0.13 lacks on stable Rust (conv2d, 2D pooling, flatten), with backward passes
//! on dfdx's tape, and the statically shaped layers the `residual!` macro instantiates.
