//! The `residual!` macro.
