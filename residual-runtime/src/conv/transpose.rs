//! Transposed convolution (PyTorch's `nn.ConvTranspose2d(bias=False)`), built from the conv
//! kernels every device already has: its output is a conv's input gradient, the gradient of its
//! input is that conv's forward pass, and the gradient of its weight is the conv's weight
//! gradient with the roles of input and output swapped. So the CPU and CUDA have it alike, and it
//! cannot disagree with the conv it transposes.
//!
//! `op` describes that conv: its input is the transposed conv's output (`in_channels` = our
//! output channels, `in_h x in_w` = our output size) and its output our input. The weight,
//! `[our in, our out / groups, K, K]`, is PyTorch's `ConvTranspose2d` layout and the conv's own.

use dfdx::shapes::{Dtype, HasShape, Shape};
use dfdx::tensor::{PutTape, SplitTape, Storage, Tape, Tensor};
use dfdx::tensor_ops::{Device, ReshapeTo, TryAdd};

use super::{Conv2dKernel, Conv2dOp};
use crate::tape::two_mut_one_ref;

/// `y = conv_transpose(x, weight)` recorded on `x`'s tape. `op` is the conv described above;
/// `x` must hold `[batch, op.out_channels, op.out_h, op.out_w]` and `out_shape` hold
/// `[batch, op.in_channels, op.in_h, op.in_w]` (the layer's types guarantee both).
pub(crate) fn conv_transpose2d_unchecked<S, WS, O, E, D, T>(
    x: Tensor<S, E, D, T>,
    weight: Tensor<WS, E, D>,
    op: Conv2dOp,
    out_shape: O,
) -> Result<Tensor<O, E, D, T>, D::Err>
where
    S: Shape,
    WS: Shape,
    O: Shape,
    E: Dtype,
    D: Device<E> + Conv2dKernel<E>,
    T: Tape<E, D>,
{
    let x = x.try_contiguous()?;
    let weight = weight.try_contiguous()?;
    let (x, mut tape) = x.split_tape();
    let dev = x.device().clone();
    let input = dev.try_storage_of(&x)?;
    let weights = dev.try_storage_of(&weight)?;
    // The conv's backward accumulates into zeroed buffers: its input gradient is our output; the
    // weight gradient it also computes (of a zero input: zero) is dropped.
    let n_out = out_shape.num_elements();
    let zero_input = <D as Storage<E>>::try_alloc_len(&dev, n_out)?;
    let mut buf = <D as Storage<E>>::try_alloc_len(&dev, n_out)?;
    let mut unused_weight_grad = <D as Storage<E>>::try_alloc_len(&dev, weight.shape().num_elements())?;
    dev.conv2d_backward(&op, &zero_input, &weights, &mut buf, &mut unused_weight_grad, &input)?;
    let out = dev.try_tensor_from_storage(buf, out_shape)?;
    if T::OWNS_TAPE {
        let x_ghost = x.ghost();
        let w_ghost = weight.ghost();
        let out_ghost = out.ghost();
        let n_in = x.shape().num_elements();
        drop(x);
        drop(weight);
        tape.add_backward_op(move |grads| {
            let (grad_x, grad_w, grad_out) = two_mut_one_ref(
                grads,
                |g| g.get_or_alloc_mut(&x_ghost),
                |g| g.get_or_alloc_mut(&w_ghost),
                |g| g.get_or_alloc_mut(&out_ghost),
            )?;
            // The weight's gradient: the conv's, with our output's gradient as its input and our
            // input as its output's gradient (the input gradient it also computes is dropped).
            let mut unused_input_grad = <D as Storage<E>>::try_alloc_len(&dev, n_out)?;
            dev.conv2d_backward(&op, grad_out, &weights, &mut unused_input_grad, grad_w, &input)?;
            // The input's gradient: the conv's forward pass of our output's gradient, added to
            // what other uses of the input put there (the kernel overwrites, so through a sum).
            let mut from_here = <D as Storage<E>>::try_alloc_len(&dev, n_in)?;
            dev.conv2d_forward(&op, grad_out, &weights, &mut from_here)?;
            let before = dev.try_tensor_from_storage(grad_x.clone(), (n_in,))?;
            let here = dev.try_tensor_from_storage(from_here, (n_in,))?;
            *grad_x = dev.try_storage_of(&before.try_add(here)?)?;
            Ok(())
        });
    }
    Ok(out.put_tape(tape))
}
