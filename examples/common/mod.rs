//! Code the examples share: data, the training step, progress bars, plots.
//!
//! Each example compiles this folder as its own `mod common;` and uses only part of it, so the
//! unused rest would warn once per example.
#![allow(dead_code)]

pub mod classify;
pub mod data;
pub mod plot;
pub mod progress;
pub mod train;
