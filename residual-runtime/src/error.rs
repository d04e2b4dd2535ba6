//! The runtime's error: what went wrong, in terms a user can act on (op, expected and found shapes).

use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// A tensor's shape does not fit the op or layer it was given to.
    Shape {
        /// The op or layer, e.g. `"conv2d"` or `"Conv2d<64, 128, 3, ...>"`.
        op: String,
        /// What the op needs, e.g. `"[B, 64, 56, 56]"`.
        expected: String,
        /// What it got, e.g. `"[8, 32, 56, 56]"`.
        found: String,
    },
    /// The device failed (out of memory, a CUDA error, ...). Holds the device's own message.
    Device(String),
}

impl Error {
    pub(crate) fn shape(op: impl Into<String>, expected: impl Into<String>, found: impl Into<String>) -> Self {
        Error::Shape { op: op.into(), expected: expected.into(), found: found.into() }
    }

    pub(crate) fn device(err: impl fmt::Debug) -> Self {
        Error::Device(format!("{err:?}"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Shape { op, expected, found } => {
                write!(f, "{op}: expected input of shape {expected}, found {found}")
            }
            Error::Device(msg) => write!(f, "device error: {msg}"),
        }
    }
}

impl std::error::Error for Error {}

/// Formats concrete dims as `[a, b, c]`.
pub fn fmt_dims(dims: &[usize]) -> String {
    let parts: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}
