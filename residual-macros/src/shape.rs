//! Shape arithmetic: pure functions on `usize`, no syn types. Shapes exclude the batch
//! dimension: `[C, H, W]`, `[S, D]` or `[D]`. Everything is checked arithmetic; nothing panics.

use std::fmt;

/// Formats a shape as the user writes it: `[64, 56, 56]`.
pub(crate) fn show(dims: &[usize]) -> String {
    let parts: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// What an op on images takes.
pub(crate) const IMAGE: &str = "[C, H, W]";
/// What an op on the last dim takes.
pub(crate) const LAST_DIM: &str = "[D] or [S, D]";

/// What a shape rule can reject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ShapeError {
    /// The op does not take inputs of this rank.
    Rank { expected: &'static str, found: Vec<usize> },
    /// The (dilated) window does not fit the padded input along one axis.
    Window { axis: &'static str, input: usize, padding: usize, window: usize },
    /// `groups` does not divide the input (or output) channels.
    Groups { groups: usize, channels: usize, which: &'static str },
    /// Pool padding larger than half the kernel (PyTorch rejects it too).
    PoolPadding { padding: usize, kernel: usize },
    /// A size that does not fit in `usize`.
    Overflow,
    /// A zero where a positive size is required.
    Zero { what: &'static str },
}

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShapeError::Rank { expected, found } => {
                write!(f, "expected a {expected} input, found {} (rank {})", show(found), found.len())
            }
            ShapeError::Window { axis, input, padding, window } => write!(
                f,
                "the window ({window}) does not fit the input {axis} {input} padded by {padding} on each side ({}): the output {axis} would be 0 or less",
                input.saturating_add(padding.saturating_mul(2))
            ),
            ShapeError::Groups { groups, channels, which } => {
                write!(f, "groups = {groups} does not divide the {which} channels ({channels})")
            }
            ShapeError::PoolPadding { padding, kernel } => {
                write!(f, "padding {padding} is more than half the kernel size {kernel}")
            }
            ShapeError::Overflow => write!(f, "sizes overflow"),
            ShapeError::Zero { what } => write!(f, "{what} must be at least 1"),
        }
    }
}

/// Output size of a sliding window along one axis, as PyTorch computes it:
/// `(input + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1`.
pub(crate) fn window_out(
    axis: &'static str,
    input: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
) -> Result<usize, ShapeError> {
    if kernel == 0 {
        return Err(ShapeError::Zero { what: "kernel" });
    }
    if stride == 0 {
        return Err(ShapeError::Zero { what: "stride" });
    }
    if dilation == 0 {
        return Err(ShapeError::Zero { what: "dilation" });
    }
    let window = dilation.checked_mul(kernel - 1).and_then(|w| w.checked_add(1)).ok_or(ShapeError::Overflow)?;
    let padded = padding.checked_mul(2).and_then(|p| p.checked_add(input)).ok_or(ShapeError::Overflow)?;
    if padded < window || input == 0 {
        return Err(ShapeError::Window { axis, input, padding, window });
    }
    Ok((padded - window) / stride + 1)
}

/// Convolution parameters (square kernel, stride, padding, dilation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Conv {
    pub out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    pub groups: usize,
}

/// `[C, H, W] -> [OUT, OH, OW]`; every rule checked, the first violated one reported.
pub(crate) fn conv2d(input: &[usize], c: Conv) -> Result<[usize; 3], ShapeError> {
    let [ch, h, w] = rank3(input)?;
    if c.out == 0 {
        return Err(ShapeError::Zero { what: "out channels" });
    }
    if c.groups == 0 {
        return Err(ShapeError::Zero { what: "groups" });
    }
    if ch % c.groups != 0 {
        return Err(ShapeError::Groups { groups: c.groups, channels: ch, which: "input" });
    }
    if !c.out.is_multiple_of(c.groups) {
        return Err(ShapeError::Groups { groups: c.groups, channels: c.out, which: "output" });
    }
    let oh = window_out("height", h, c.kernel, c.stride, c.padding, c.dilation)?;
    let ow = window_out("width", w, c.kernel, c.stride, c.padding, c.dilation)?;
    Ok([c.out, oh, ow])
}

/// Max / average pooling: `[C, H, W] -> [C, OH, OW]`.
pub(crate) fn pool2d(input: &[usize], kernel: usize, stride: usize, padding: usize) -> Result<[usize; 3], ShapeError> {
    let [ch, h, w] = rank3(input)?;
    if padding.checked_mul(2).is_none_or(|p| p > kernel) {
        return Err(ShapeError::PoolPadding { padding, kernel });
    }
    let oh = window_out("height", h, kernel, stride, padding, 1)?;
    let ow = window_out("width", w, kernel, stride, padding, 1)?;
    Ok([ch, oh, ow])
}

/// The input must be `[C, H, W]`.
pub(crate) fn rank3(input: &[usize]) -> Result<[usize; 3], ShapeError> {
    match input {
        [c, h, w] => Ok([*c, *h, *w]),
        _ => Err(ShapeError::Rank { expected: IMAGE, found: input.to_vec() }),
    }
}

/// Linear and layer norm act on the last dim of `[D]` or `[S, D]`.
pub(crate) fn last_dim(input: &[usize]) -> Result<usize, ShapeError> {
    match input {
        [d] | [_, d] => Ok(*d),
        _ => Err(ShapeError::Rank { expected: LAST_DIM, found: input.to_vec() }),
    }
}

/// `[.., IN] -> [.., OUT]`.
pub(crate) fn linear(input: &[usize], out: usize) -> Result<Vec<usize>, ShapeError> {
    last_dim(input)?;
    if out == 0 {
        return Err(ShapeError::Zero { what: "out features" });
    }
    let mut o = input.to_vec();
    if let Some(last) = o.last_mut() {
        *last = out;
    }
    Ok(o)
}

/// `[C, H, W] -> [C]`.
pub(crate) fn global_avgpool(input: &[usize]) -> Result<[usize; 1], ShapeError> {
    let [c, _, _] = rank3(input)?;
    Ok([c])
}

/// Any rank -> `[product]`.
pub(crate) fn flatten(input: &[usize]) -> Result<[usize; 1], ShapeError> {
    let n = input.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or(ShapeError::Overflow)?;
    Ok([n])
}

/// Concatenation along channels: `[C1, H, W] ++ [C2, H, W] -> [C1 + C2, H, W]`.
pub(crate) fn cat_channels(a: &[usize], b: &[usize]) -> Option<[usize; 3]> {
    match (a, b) {
        ([c1, h1, w1], [c2, h2, w2]) if h1 == h2 && w1 == w2 => Some([c1.checked_add(*c2)?, *h1, *w1]),
        _ => None,
    }
}

/// The stride of a 1x1 conv (or option-A subsampling) that maps `[_, h, w]` to `[_, oh, ow]`,
/// preferring `hint` (the product of the body's strides) when it fits.
pub(crate) fn shortcut_stride(input: &[usize], output: &[usize], hint: usize) -> Option<usize> {
    let ([_, h, w], [_, oh, ow]) = (input, output) else { return None };
    let fits = |s: usize| s > 0 && (h.saturating_sub(1)) / s + 1 == *oh && (w.saturating_sub(1)) / s + 1 == *ow;
    if *h == 0 || *w == 0 {
        return None;
    }
    if fits(hint) {
        return Some(hint);
    }
    (1..=(*h).max(*w)).find(|&s| fits(s))
}

/// Trainable parameters of a conv (weight, plus bias when `bias`).
pub(crate) fn conv_params(in_ch: usize, c: Conv, bias: bool) -> Option<u64> {
    let per = (in_ch / c.groups.max(1)) as u64;
    let k = c.kernel as u64;
    let w = (c.out as u64).checked_mul(per)?.checked_mul(k)?.checked_mul(k)?;
    w.checked_add(if bias { c.out as u64 } else { 0 })
}

/// Multiply-accumulates of a conv at batch 1: `OH * OW * OUT * (IN / G) * K * K`.
pub(crate) fn conv_macs(in_ch: usize, c: Conv, out: [usize; 3]) -> Option<u64> {
    let w = conv_params(in_ch, c, false)?;
    let [_, oh, ow] = out;
    w.checked_mul(oh as u64)?.checked_mul(ow as u64)
}

/// Parameters of a linear layer: `in * out (+ out)`.
pub(crate) fn linear_params(i: usize, o: usize, bias: bool) -> Option<u64> {
    (i as u64).checked_mul(o as u64)?.checked_add(if bias { o as u64 } else { 0 })
}

/// MACs of a linear layer on `[D]` (`in * out`) or `[S, D]` (`S * in * out`).
pub(crate) fn linear_macs(input: &[usize], o: usize) -> Option<u64> {
    let i = *input.last()? as u64;
    let rows = if input.len() == 2 { *input.first()? as u64 } else { 1 };
    rows.checked_mul(i)?.checked_mul(o as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(out: usize, kernel: usize, stride: usize, padding: usize) -> Conv {
        Conv { out, kernel, stride, padding, dilation: 1, groups: 1 }
    }

    #[test]
    fn window_matches_pytorch_formula() {
        // ResNet stem: 224 -> 112 (7x7/2 pad 3), maxpool 3/2 pad 1: 112 -> 56.
        assert_eq!(window_out("height", 224, 7, 2, 3, 1), Ok(112));
        assert_eq!(window_out("height", 112, 3, 2, 1, 1), Ok(56));
        // 3x3 stride 2 pad 1 on odd sizes rounds down: 7 -> 4, 5 -> 3.
        assert_eq!(window_out("height", 7, 3, 2, 1, 1), Ok(4));
        assert_eq!(window_out("height", 5, 3, 2, 1, 1), Ok(3));
        // Dilation widens the window: k=3, d=2 -> 5.
        assert_eq!(window_out("height", 5, 3, 1, 0, 2), Ok(1));
        assert_eq!(window_out("height", 9, 3, 1, 2, 2), Ok(9));
        // Exactly fitting window -> 1.
        assert_eq!(window_out("width", 7, 7, 1, 0, 1), Ok(1));
    }

    #[test]
    fn window_too_large_is_an_error() {
        assert_eq!(
            window_out("height", 5, 7, 1, 0, 1),
            Err(ShapeError::Window { axis: "height", input: 5, padding: 0, window: 7 })
        );
        // padding rescues it
        assert_eq!(window_out("height", 5, 7, 1, 1, 1), Ok(1));
        // dilation makes a 3-window 5 wide
        assert!(matches!(window_out("width", 4, 3, 1, 0, 2), Err(ShapeError::Window { window: 5, .. })));
        assert!(window_out("height", 0, 1, 1, 0, 1).is_err());
        assert_eq!(window_out("height", 4, 0, 1, 0, 1), Err(ShapeError::Zero { what: "kernel" }));
        assert_eq!(window_out("height", 4, 1, 0, 0, 1), Err(ShapeError::Zero { what: "stride" }));
        assert_eq!(window_out("height", 4, 1, 1, 0, 0), Err(ShapeError::Zero { what: "dilation" }));
        assert_eq!(window_out("height", 4, usize::MAX, 1, 0, 2), Err(ShapeError::Overflow));
        assert_eq!(window_out("height", 4, 3, 1, usize::MAX, 1), Err(ShapeError::Overflow));
    }

    #[test]
    fn conv_shapes_and_rules() {
        assert_eq!(conv2d(&[3, 224, 224], conv(64, 7, 2, 3)), Ok([64, 112, 112]));
        assert_eq!(conv2d(&[64, 56, 56], conv(256, 1, 1, 0)), Ok([256, 56, 56]));
        assert_eq!(conv2d(&[256, 56, 56], conv(512, 1, 2, 0)), Ok([512, 28, 28]));
        let g = Conv { groups: 32, ..conv(128, 3, 1, 1) };
        assert_eq!(conv2d(&[128, 8, 8], g), Ok([128, 8, 8]));
        assert_eq!(conv2d(&[100, 8, 8], g), Err(ShapeError::Groups { groups: 32, channels: 100, which: "input" }));
        assert_eq!(
            conv2d(&[64, 8, 8], Conv { groups: 32, ..conv(48, 3, 1, 1) }),
            Err(ShapeError::Groups { groups: 32, channels: 48, which: "output" })
        );
        assert_eq!(
            conv2d(&[64, 8, 8], Conv { groups: 0, ..conv(48, 3, 1, 1) }),
            Err(ShapeError::Zero { what: "groups" })
        );
        assert_eq!(conv2d(&[64, 8, 8], conv(0, 3, 1, 1)), Err(ShapeError::Zero { what: "out channels" }));
        assert_eq!(conv2d(&[64], conv(8, 3, 1, 1)), Err(ShapeError::Rank { expected: "[C, H, W]", found: vec![64] }));
        assert!(matches!(conv2d(&[3, 4, 9], conv(8, 5, 1, 0)), Err(ShapeError::Window { axis: "height", .. })));
        assert!(matches!(conv2d(&[3, 9, 4], conv(8, 5, 1, 0)), Err(ShapeError::Window { axis: "width", .. })));
    }

    #[test]
    fn pool_shapes_and_rules() {
        assert_eq!(pool2d(&[64, 112, 112], 3, 2, 1), Ok([64, 56, 56]));
        assert_eq!(pool2d(&[8, 4, 4], 2, 2, 0), Ok([8, 2, 2]));
        assert_eq!(pool2d(&[8, 4, 4], 2, 2, 2), Err(ShapeError::PoolPadding { padding: 2, kernel: 2 }));
        assert!(matches!(pool2d(&[8, 2, 2], 3, 1, 0), Err(ShapeError::Window { .. })));
        assert!(matches!(pool2d(&[8, 2], 3, 1, 0), Err(ShapeError::Rank { .. })));
    }

    #[test]
    fn rank_generic_ops() {
        assert_eq!(linear(&[512], 1000), Ok(vec![1000]));
        assert_eq!(linear(&[16, 64], 128), Ok(vec![16, 128]));
        assert!(matches!(linear(&[512, 7, 7], 10), Err(ShapeError::Rank { expected: "[D] or [S, D]", .. })));
        assert_eq!(linear(&[4], 0), Err(ShapeError::Zero { what: "out features" }));
        assert_eq!(last_dim(&[16, 64]), Ok(64));
        assert_eq!(global_avgpool(&[2048, 7, 7]), Ok([2048]));
        assert!(global_avgpool(&[2048]).is_err());
        assert_eq!(flatten(&[512, 7, 7]), Ok([25088]));
        assert_eq!(flatten(&[16, 64]), Ok([1024]));
        assert_eq!(flatten(&[usize::MAX, 2]), Err(ShapeError::Overflow));
        assert_eq!(cat_channels(&[64, 8, 8], &[32, 8, 8]), Some([96, 8, 8]));
        assert_eq!(cat_channels(&[64, 8, 8], &[32, 4, 4]), None);
        assert_eq!(cat_channels(&[64], &[32]), None);
    }

    #[test]
    fn shortcut_stride_finds_the_subsampling() {
        assert_eq!(shortcut_stride(&[64, 56, 56], &[128, 28, 28], 2), Some(2));
        assert_eq!(shortcut_stride(&[64, 56, 56], &[256, 56, 56], 1), Some(1));
        // hint wrong: search finds 2 for 7 -> 4 (ceil)
        assert_eq!(shortcut_stride(&[64, 7, 7], &[128, 4, 4], 1), Some(2));
        assert_eq!(shortcut_stride(&[64, 8, 8], &[128, 9, 9], 1), None);
        assert_eq!(shortcut_stride(&[64], &[128], 1), None);
    }

    #[test]
    fn counts_match_torchvision() {
        // ResNet-50 stem conv: 64*3*7*7 = 9408 params, 118,013,952 MACs.
        let c = conv(64, 7, 2, 3);
        assert_eq!(conv_params(3, c, false), Some(9408));
        assert_eq!(conv_macs(3, c, [64, 112, 112]), Some(118_013_952));
        assert_eq!(conv_params(3, c, true), Some(9408 + 64));
        let g = Conv { groups: 32, ..conv(128, 3, 1, 1) };
        assert_eq!(conv_params(128, g, false), Some(128 * 4 * 9));
        assert_eq!(linear_params(2048, 1000, true), Some(2_049_000));
        assert_eq!(linear_params(2048, 1000, false), Some(2_048_000));
        assert_eq!(linear_macs(&[2048], 1000), Some(2_048_000));
        assert_eq!(linear_macs(&[16, 64], 128), Some(16 * 64 * 128));
        assert_eq!(show(&[64, 56, 56]), "[64, 56, 56]");
        assert_eq!(show(&[]), "[]");
    }
}
