//! The option-A shortcut vs. a naive f64 loop (`F.pad(x[:, :, ::s, ::s], (0,0,0,0, p, q))`).

use dfdx::prelude::*;

use super::*;
use crate::layers::SubsamplePad;

/// Reference: index arithmetic written out for each output element; also the gradient of
/// `sum(out * w)`.
fn naive(nchw: [usize; 4], out_c: usize, s: usize, x: &[f64], w: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let [b, c, h, wd] = nchw;
    let (oh, ow) = (h.div_ceil(s), wd.div_ceil(s));
    let front = (out_c - c) / 2;
    let mut out = vec![0.0; b * out_c * oh * ow];
    let mut grad = vec![0.0; x.len()];
    for bi in 0..b {
        for oc in 0..out_c {
            for y in 0..oh {
                for xx in 0..ow {
                    let o = ((bi * out_c + oc) * oh + y) * ow + xx;
                    if oc >= front && oc < front + c {
                        let i = ((bi * c + oc - front) * h + y * s) * wd + xx * s;
                        out[o] = x[i];
                        grad[i] += w[o];
                    }
                }
            }
        }
    }
    (out, grad)
}

fn values(n: usize, seed: usize) -> Vec<f64> {
    (0..n).map(|i| ((i * 31 + seed * 7) % 23) as f64 * 0.5 - 5.0).collect()
}

#[test]
fn forward_and_backward_match_naive_loop() {
    let dev: Cpu = Default::default();
    // Even and odd channel differences, stride 1/2/3, non-square, batch 1 and 3.
    for &(nchw, out_c, s) in &[([1, 2, 4, 4], 4, 2), ([3, 3, 5, 6], 8, 2), ([2, 2, 7, 5], 2, 3), ([1, 4, 3, 3], 7, 1)] {
        let x = values(nchw.iter().product(), out_c);
        let xt = dev.tensor_from_vec(x.clone(), (nchw[0], nchw[1], nchw[2], nchw[3]));
        let y = try_subsample_pad(xt.leaky_trace(), out_c, s).unwrap();
        let w = values(y.shape().num_elements(), s + 1);
        let (want, want_g) = naive(nchw, out_c, s, &x, &w);
        assert_eq!(y.as_vec(), want, "{nchw:?} -> {out_c} at stride {s}");
        let wt = dev.tensor_from_vec(w, *y.shape());
        let g = (y * wt).sum().backward();
        assert_eq!(g.get(&xt).as_vec(), want_g, "grad {nchw:?} -> {out_c} at stride {s}");
    }
}

#[test]
fn layer_matches_op_batched_unbatched_and_f32() {
    let dev: Cpu = Default::default();
    let x = values(2 * 3 * 5 * 4, 1);
    let (want, _) = naive([2, 3, 5, 4], 6, 2, &x, &vec![0.0; 2 * 6 * 3 * 2]);
    let xt: Tensor<Rank4<2, 3, 5, 4>, f64, _> = dev.tensor(x.clone());
    let y: Tensor<Rank4<2, 6, 3, 2>, f64, _> = SubsamplePad::<3, 6, 2, 3, 2>.forward(xt);
    assert_eq!(y.as_vec(), want);

    let x0: Tensor<Rank3<3, 5, 4>, f32, _> = dev.tensor(x[..60].iter().map(|&v| v as f32).collect::<Vec<_>>());
    let y0: Tensor<Rank3<6, 3, 2>, f32, _> = SubsamplePad::<3, 6, 2, 3, 2>.forward(x0);
    let want0: Vec<f32> = want[..36].iter().map(|&v| v as f32).collect();
    assert_eq!(y0.as_vec(), want0);
}

#[test]
fn bad_inputs_are_errors_that_name_the_shapes() {
    let dev: Cpu = Default::default();
    let x: Tensor<(usize, usize, usize, usize), f32, _> = dev.zeros_like(&(2, 8, 4, 4));
    let err = try_subsample_pad(x.clone(), 4, 2).unwrap_err().to_string();
    assert!(err.contains("subsample_pad(out_channels=4, stride=2)"), "{err}");
    assert!(err.contains("[2, 8, 4, 4]") && err.contains("C <= 4"), "{err}");
    let err = try_subsample_pad(x, 16, 0).unwrap_err().to_string();
    assert!(err.contains("stride >= 1"), "{err}");
}

#[test]
fn kernel_entries_refuse_ops_that_do_not_fit_their_buffers() {
    let dev = Cpu::default();
    let buf = |n: usize| -> <Cpu as Storage<f32>>::Vec { dev.try_alloc_len(n).unwrap() };
    let good = SubsamplePadOp::new([2, 4, 6, 6], 8, 2).unwrap();
    assert_eq!(good.buffer_lens(), Some([288, 144]));
    assert!(dev.subsample_pad_forward(&good, &buf(288), &mut buf(144)).is_ok());
    assert!(dev.subsample_pad_backward(&good, &mut buf(288), &buf(144)).is_ok());
    assert!(dev.subsample_pad_forward(&good, &buf(287), &mut buf(144)).is_err());
    assert!(dev.subsample_pad_backward(&good, &mut buf(288), &buf(143)).is_err());
    // Fields no constructor sets: padding past the output channels, an output size that does
    // not follow from the stride.
    let off_the_end = SubsamplePadOp { pad_front: 6, ..good };
    assert!(dev.subsample_pad_forward(&off_the_end, &buf(288), &mut buf(144)).is_err());
    let taller = SubsamplePadOp { out_h: 6, ..good };
    assert!(dev.subsample_pad_forward(&taller, &buf(288), &mut buf(288)).is_err());
}
