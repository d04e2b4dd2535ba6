//! Borrowing gradient buffers inside a backward op, with dfdx's public API only.
//!
//! dfdx's own ops use `Gradients::mut_and_ref` (crate-private) to hold the output's gradient
//! and the inputs' gradients at once. From outside we get there in two steps: allocate every
//! buffer first, then take raw pointers, which stay valid because no further insertion happens.

use dfdx::shapes::Shape;
use dfdx::tensor::{Gradients, Storage, Tensorlike};

/// Returns `(grads of a, grads of b, grad of out)`: two gradients to accumulate into and the
/// output's gradient to read. `a`, `b` and `out` must be three distinct tensors.
pub(crate) fn two_mut_one_ref<'g, E, D, SA, SB, SO>(
    grads: &'g mut Gradients<E, D>,
    a: &impl Tensorlike<SA, E, D>,
    b: &impl Tensorlike<SB, E, D>,
    out: &impl Tensorlike<SO, E, D>,
) -> Result<(&'g mut D::Vec, &'g mut D::Vec, &'g D::Vec), D::Err>
where
    D: Storage<E>,
    SA: Shape,
    SB: Shape,
    SO: Shape,
{
    assert_distinct(&[a.id(), b.id(), out.id()]);
    grads.try_alloc_for(a)?;
    grads.try_alloc_for(b)?;
    grads.try_alloc_for(out)?;
    // SAFETY: all three entries exist, so the `get_or_alloc_mut` calls below insert nothing and
    // the map's nodes do not move; the ids are distinct, so the three borrows do not alias.
    let a_ptr: *mut D::Vec = grads.get_or_alloc_mut(a)?;
    let b_ptr: *mut D::Vec = grads.get_or_alloc_mut(b)?;
    let out_ptr: *const D::Vec = grads.get_or_alloc_mut(out)?;
    unsafe { Ok((&mut *a_ptr, &mut *b_ptr, &*out_ptr)) }
}

/// Returns `(grad of a, grad of out)`: one gradient to accumulate into and the output's to read.
pub(crate) fn one_mut_one_ref<'g, E, D, SA, SO>(
    grads: &'g mut Gradients<E, D>,
    a: &impl Tensorlike<SA, E, D>,
    out: &impl Tensorlike<SO, E, D>,
) -> Result<(&'g mut D::Vec, &'g D::Vec), D::Err>
where
    D: Storage<E>,
    SA: Shape,
    SO: Shape,
{
    assert_distinct(&[a.id(), out.id()]);
    grads.try_alloc_for(a)?;
    grads.try_alloc_for(out)?;
    // SAFETY: as in `two_mut_one_ref`.
    let a_ptr: *mut D::Vec = grads.get_or_alloc_mut(a)?;
    let out_ptr: *const D::Vec = grads.get_or_alloc_mut(out)?;
    unsafe { Ok((&mut *a_ptr, &*out_ptr)) }
}

fn assert_distinct(ids: &[dfdx::tensor::UniqueId]) {
    for (i, a) in ids.iter().enumerate() {
        for b in &ids[i + 1..] {
            // An op whose output shares an id with an input is a bug in this crate, never user input.
            assert!(a != b, "residual-runtime bug: a backward op borrowed one gradient twice");
        }
    }
}
