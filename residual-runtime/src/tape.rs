//! Borrowing gradient buffers inside a backward op, with dfdx's public API only.
//!
//! dfdx's own ops use `Gradients::mut_and_ref` (crate-private) to hold the output's gradient
//! and the inputs' gradients at once. From outside we get there in two steps: allocate every
//! buffer first, then take raw pointers, which stay valid because no further insertion happens.
//!
//! dfdx 0.13 re-exports `Tensorlike` and `GhostTensor` `pub(crate)` only, so no function outside
//! dfdx can name a ghost's type or take `impl Tensorlike`. Callers therefore pass each gradient
//! as a lookup closure, written where the ghost's type is inferred:
//! `one_mut_one_ref(grads, |g| g.get_or_alloc_mut(&x_ghost), |g| g.get_or_alloc_mut(&out_ghost))`.

use dfdx::tensor::{Gradients, Storage};

/// Returns `(grads of a, grads of b, grad of out)`: two gradients to accumulate into and the
/// output's gradient to read. The three lookups must name three distinct tensors.
#[allow(dead_code)]
// The return type is the point of the function (three borrows out of one map); a type alias
// would hide which is mutable.
#[allow(clippy::type_complexity)]
pub(crate) fn two_mut_one_ref<E, D: Storage<E>>(
    grads: &mut Gradients<E, D>,
    a: impl Fn(&mut Gradients<E, D>) -> Result<&mut D::Vec, D::Err>,
    b: impl Fn(&mut Gradients<E, D>) -> Result<&mut D::Vec, D::Err>,
    out: impl Fn(&mut Gradients<E, D>) -> Result<&mut D::Vec, D::Err>,
) -> Result<(&mut D::Vec, &mut D::Vec, &D::Vec), D::Err> {
    // First pass allocates every entry; the second only looks them up.
    a(grads)?;
    b(grads)?;
    out(grads)?;
    // SAFETY: all three entries exist, so the lookups below insert nothing and the map's nodes
    // do not move; `assert_distinct` rules out two borrows of one entry.
    let a_ptr: *mut D::Vec = a(grads)?;
    let b_ptr: *mut D::Vec = b(grads)?;
    let out_ptr: *mut D::Vec = out(grads)?;
    assert_distinct(&[a_ptr as *const (), b_ptr as *const (), out_ptr as *const ()]);
    unsafe { Ok((&mut *a_ptr, &mut *b_ptr, &*out_ptr)) }
}

/// Returns `(grad of a, grad of out)`: one gradient to accumulate into and the output's to read.
pub(crate) fn one_mut_one_ref<E, D: Storage<E>>(
    grads: &mut Gradients<E, D>,
    a: impl Fn(&mut Gradients<E, D>) -> Result<&mut D::Vec, D::Err>,
    out: impl Fn(&mut Gradients<E, D>) -> Result<&mut D::Vec, D::Err>,
) -> Result<(&mut D::Vec, &D::Vec), D::Err> {
    a(grads)?;
    out(grads)?;
    // SAFETY: as in `two_mut_one_ref`.
    let a_ptr: *mut D::Vec = a(grads)?;
    let out_ptr: *mut D::Vec = out(grads)?;
    assert_distinct(&[a_ptr as *const (), out_ptr as *const ()]);
    unsafe { Ok((&mut *a_ptr, &*out_ptr)) }
}

fn assert_distinct(ptrs: &[*const ()]) {
    for (i, a) in ptrs.iter().enumerate() {
        for b in &ptrs[i + 1..] {
            // An op whose output shares an id with an input is a bug in this crate, never user input.
            assert!(a != b, "residual-runtime bug: a backward op borrowed one gradient twice");
        }
    }
}
