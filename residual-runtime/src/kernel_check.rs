//! The one place every kernel entry (conv, pooling, the option-A shortcut; CPU and CUDA) checks
//! its op and its buffers before a kernel touches memory. The op structs have public fields and
//! the kernel traits are public, so a caller can pass any op with any buffers: each op says what
//! lengths it implies (`buffer_lens`, `None` for an op its own constructor would not build: a zero
//! or inconsistent field, an output size that does not follow from the input, a product past
//! `usize::MAX`), and a kernel runs only when every buffer has exactly that length.

use dfdx::tensor::CpuError;

/// The product of `dims`, or `None` when it overflows `usize`.
pub(crate) fn product(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// `Ok` when `lens` is known (the op is valid) and every buffer length in `have` equals it, else
/// the error dfdx uses for a buffer of the wrong length (CUDA entries wrap it in `CudaError::Cpu`).
pub(crate) fn check_lens<const N: usize>(lens: Option<[usize; N]>, have: [usize; N]) -> Result<(), CpuError> {
    if lens.is_some_and(|want| want == have) {
        Ok(())
    } else {
        Err(CpuError::WrongNumElements)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_refuses_overflow() {
        assert_eq!(product(&[2, 3, 4]), Some(24));
        assert_eq!(product(&[]), Some(1));
        assert_eq!(product(&[1 << 32, 1 << 32]), None);
        assert_eq!(product(&[0, usize::MAX, 2]), Some(0));
    }

    #[test]
    fn check_lens_needs_a_valid_op_and_equal_lengths() {
        assert!(check_lens(Some([3, 4]), [3, 4]).is_ok());
        assert!(check_lens(Some([3, 4]), [3, 5]).is_err());
        assert!(check_lens(None, [0, 0]).is_err());
    }
}
