//! Image data for the examples: a synthetic ten-class task made on the fly, CIFAR-10's binary
//! files when the user has them, per-channel normalisation, and batches as dfdx tensors.
//!
//! Every image is `[3, 32, 32]`, channel-major (CHW), with values in `[0, 1]` before
//! normalisation, the layout of the zoo's CIFAR models.

use std::fmt;
use std::path::{Path, PathBuf};

use dfdx::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

pub const CHANNELS: usize = 3;
pub const SIDE: usize = 32;
pub const PLANE: usize = SIDE * SIDE;
pub const IMAGE_LEN: usize = CHANNELS * PLANE;
pub const NUM_CLASSES: usize = 10;

/// A batch of images as the zoo's CIFAR models take it; the batch size is chosen at run time.
pub type Images<T = NoneTape> = Tensor<(usize, Const<3>, Const<32>, Const<32>), f32, Cpu, T>;

/// A labelled set of `[3, 32, 32]` images, read by index.
pub trait ImageSet {
    fn len(&self) -> usize;
    /// Writes image `index` into `pixels` (`IMAGE_LEN` values, CHW, in `[0, 1]`) and returns its
    /// label (`0..NUM_CLASSES`).
    fn write_image(&self, index: usize, pixels: &mut [f32]) -> usize;
    /// One line for the log: what the data is.
    fn describe(&self) -> String;
}

// ---------------------------------------------------------------------------------------------
// Synthetic shapes
// ---------------------------------------------------------------------------------------------

/// What each synthetic class draws, by label.
pub const SYNTHETIC_CLASS_NAMES: [&str; NUM_CLASSES] = [
    "vertical stripes",
    "stripes /",
    "horizontal stripes",
    "stripes \\",
    "disc",
    "ring",
    "square",
    "square outline",
    "plus",
    "checkerboard",
];

/// Which half of the synthetic task a set is: the two never share an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// Ten classes of shapes and oriented gratings, one per image, at a random position and size,
/// in random foreground and background colours, with Gaussian pixel noise.
///
/// Colour, brightness and position say nothing about the class (they are drawn independently
/// of it), so a model has to learn spatial features: orientation, curvature, corners, holes.
/// Image `i` depends only on `(seed, split, i)`, so any image can be made on the fly, in any
/// order, and two runs with one seed see identical data.
#[derive(Clone, Debug)]
pub struct SyntheticShapes {
    seed: u64,
    split: Split,
    len: usize,
    noise_std: f32,
}

impl SyntheticShapes {
    /// Standard deviation of the per-pixel noise: enough that single pixels mislead, little
    /// enough that a small network separates the classes within a few epochs.
    pub const NOISE_STD: f32 = 0.15;

    pub fn new(seed: u64, split: Split, len: usize) -> Self {
        Self { seed, split, len, noise_std: Self::NOISE_STD }
    }

    /// The generator for one image: a hash of (seed, split, index), so images are independent.
    fn image_rng(&self, index: usize) -> ChaCha8Rng {
        let split_salt = match self.split {
            Split::Train => 0x7261_696e,
            Split::Test => 0x7465_7374,
        };
        ChaCha8Rng::seed_from_u64(mix(mix(self.seed ^ split_salt) ^ index as u64))
    }
}

impl ImageSet for SyntheticShapes {
    fn len(&self) -> usize {
        self.len
    }

    fn write_image(&self, index: usize, pixels: &mut [f32]) -> usize {
        let mut rng = self.image_rng(index);
        let label = rng.gen_range(0..NUM_CLASSES);
        let shape = ShapeParams::sample(label, &mut rng);
        let (background, foreground) = contrasting_colours(&mut rng);
        let noise = Normal::new(0.0f32, self.noise_std).expect("noise std is positive and finite");

        for y in 0..SIDE {
            for x in 0..SIDE {
                let coverage = shape.coverage(x as f32 + 0.5, y as f32 + 0.5);
                for c in 0..CHANNELS {
                    let clean = background[c] + (foreground[c] - background[c]) * coverage;
                    pixels[c * PLANE + y * SIDE + x] = (clean + noise.sample(&mut rng)).clamp(0.0, 1.0);
                }
            }
        }
        label
    }

    fn describe(&self) -> String {
        format!(
            "synthetic shapes ({:?} split, {} images, seed {}, noise std {})",
            self.split, self.len, self.seed, self.noise_std
        )
    }
}

/// One image's shape: where it is, how big, and the class-specific details.
struct ShapeParams {
    label: usize,
    centre: (f32, f32),
    /// Half the side of the shape's bounding box, in pixels.
    radius: f32,
    /// Grating direction (classes 0-3): unit vector across the stripes.
    across: (f32, f32),
    /// Grating period and phase, checkerboard cell size.
    period: f32,
    phase: f32,
}

impl ShapeParams {
    fn sample(label: usize, rng: &mut impl Rng) -> Self {
        // Gratings: the direction across the stripes is 0, 45, 90 or 135 degrees (y points
        // down, so these are vertical, `/`, horizontal and `\` stripes), jittered by up to 10
        // degrees so the classes are orientation ranges, not four exact filters.
        let angle = (label % 4) as f32 * std::f32::consts::FRAC_PI_4 + rng.gen_range(-0.17..0.17);
        Self {
            label,
            centre: (rng.gen_range(9.0..23.0), rng.gen_range(9.0..23.0)),
            radius: rng.gen_range(6.0..10.0),
            across: (angle.cos(), angle.sin()),
            period: rng.gen_range(3.5..6.0),
            phase: rng.gen_range(0.0..std::f32::consts::TAU),
        }
    }

    /// 1 where the pixel at `(x, y)` is foreground, 0 where background.
    fn coverage(&self, x: f32, y: f32) -> f32 {
        let (u, v) = (x - self.centre.0, y - self.centre.1);
        let r = self.radius;
        let round = (u * u + v * v).sqrt();
        let square = u.abs().max(v.abs());
        // Outlines and strokes are 2.5 px thick: thin enough to differ from filled shapes, thick
        // enough to survive the noise.
        let stroke = 2.5;
        let inside = match self.label {
            0..=3 => {
                let t = u * self.across.0 + v * self.across.1;
                round <= r && (std::f32::consts::TAU * t / self.period + self.phase).sin() > 0.0
            }
            4 => round <= r,
            5 => round <= r && round >= r - stroke,
            // Squares use 0.85 r so their area is close to the disc's: size is no clue.
            6 => square <= 0.85 * r,
            7 => square <= 0.85 * r && square >= 0.85 * r - stroke,
            8 => (u.abs() <= stroke * 0.6 || v.abs() <= stroke * 0.6) && square <= r,
            _ => {
                let cell = self.period * 0.75;
                let parity = ((u / cell).floor() + (v / cell).floor()) as i32;
                square <= 0.85 * r && parity.rem_euclid(2) == 0
            }
        };
        if inside {
            1.0
        } else {
            0.0
        }
    }
}

/// A random background and a random foreground that differ by at least 0.3 per channel on
/// average, so the shape is visible under noise in every image.
fn contrasting_colours(rng: &mut impl Rng) -> ([f32; 3], [f32; 3]) {
    loop {
        let background: [f32; 3] = [rng.gen(), rng.gen(), rng.gen()];
        let foreground: [f32; 3] = [rng.gen(), rng.gen(), rng.gen()];
        let contrast: f32 = (0..3).map(|c| (foreground[c] - background[c]).abs()).sum::<f32>() / 3.0;
        if contrast >= 0.3 {
            return (background, foreground);
        }
    }
}

/// SplitMix64's finaliser: spreads nearby integers (consecutive image indices) over all 64 bits.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------------------------------------
// CIFAR-10
// ---------------------------------------------------------------------------------------------

/// CIFAR-10, "binary version" (`cifar-10-batches-bin/`): records of one label byte and 3072
/// pixel bytes (1024 red, 1024 green, 1024 blue, each row-major), which is already CHW.
pub struct Cifar10 {
    records: Vec<u8>,
    len: usize,
    source: String,
}

pub const CIFAR_RECORD_LEN: usize = 1 + IMAGE_LEN;
pub const CIFAR_TRAIN_FILES: [&str; 5] =
    ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];
pub const CIFAR_TEST_FILES: [&str; 1] = ["test_batch.bin"];

#[derive(Debug)]
pub enum CifarError {
    Missing { path: PathBuf, source: std::io::Error },
    Truncated { path: PathBuf, bytes: usize },
    BadLabel { path: PathBuf, record: usize, label: u8 },
}

impl fmt::Display for CifarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CifarError::Missing { path, source } => write!(
                f,
                "cannot read {}: {source} (expected the CIFAR-10 binary version: \
                 data_batch_1.bin ... data_batch_5.bin and test_batch.bin)",
                path.display()
            ),
            CifarError::Truncated { path, bytes } => write!(
                f,
                "{} has {bytes} bytes, not a multiple of the {CIFAR_RECORD_LEN}-byte CIFAR-10 record",
                path.display()
            ),
            CifarError::BadLabel { path, record, label } => {
                write!(f, "{} record {record}: label {label} is not in 0..10", path.display())
            }
        }
    }
}

impl std::error::Error for CifarError {}

impl Cifar10 {
    /// Reads `files` from `dir`, keeping at most `limit` images (the first ones, in file order).
    pub fn open(dir: &Path, files: &[&str], limit: Option<usize>) -> Result<Self, CifarError> {
        let mut records = Vec::new();
        let mut read = Vec::new();
        for name in files {
            let path = dir.join(name);
            let bytes = std::fs::read(&path).map_err(|source| CifarError::Missing { path: path.clone(), source })?;
            if bytes.len() % CIFAR_RECORD_LEN != 0 {
                return Err(CifarError::Truncated { path, bytes: bytes.len() });
            }
            if let Some((record, label)) =
                bytes.chunks_exact(CIFAR_RECORD_LEN).map(|r| r[0]).enumerate().find(|&(_, l)| l as usize >= NUM_CLASSES)
            {
                return Err(CifarError::BadLabel { path, record, label });
            }
            records.extend_from_slice(&bytes);
            read.push(*name);
            if limit.is_some_and(|n| records.len() / CIFAR_RECORD_LEN >= n) {
                break;
            }
        }
        let available = records.len() / CIFAR_RECORD_LEN;
        let len = limit.map_or(available, |n| n.min(available));
        records.truncate(len * CIFAR_RECORD_LEN);
        Ok(Self { records, len, source: format!("CIFAR-10 {} ({})", read.join(", "), dir.display()) })
    }

    pub fn train(dir: &Path, limit: Option<usize>) -> Result<Self, CifarError> {
        Self::open(dir, &CIFAR_TRAIN_FILES, limit)
    }

    pub fn test(dir: &Path, limit: Option<usize>) -> Result<Self, CifarError> {
        Self::open(dir, &CIFAR_TEST_FILES, limit)
    }
}

impl ImageSet for Cifar10 {
    fn len(&self) -> usize {
        self.len
    }

    fn write_image(&self, index: usize, pixels: &mut [f32]) -> usize {
        let record = &self.records[index * CIFAR_RECORD_LEN..(index + 1) * CIFAR_RECORD_LEN];
        for (out, &byte) in pixels.iter_mut().zip(&record[1..]) {
            *out = byte as f32 / 255.0;
        }
        record[0] as usize
    }

    fn describe(&self) -> String {
        format!("{}: {} images", self.source, self.len)
    }
}

// ---------------------------------------------------------------------------------------------
// Normalisation and batches
// ---------------------------------------------------------------------------------------------

/// Per-channel mean and standard deviation, measured on training images, applied to every set.
#[derive(Clone, Copy, Debug)]
pub struct ChannelNorm {
    pub mean: [f32; CHANNELS],
    pub std: [f32; CHANNELS],
}

impl ChannelNorm {
    /// Measures the statistics on the first `max_images` images of `set` (accumulated in f64:
    /// millions of pixels).
    pub fn measure(set: &dyn ImageSet, max_images: usize) -> Self {
        let count = set.len().min(max_images).max(1);
        let mut sum = [0f64; CHANNELS];
        let mut sum_sq = [0f64; CHANNELS];
        let mut pixels = vec![0f32; IMAGE_LEN];
        for index in 0..count.min(set.len()) {
            set.write_image(index, &mut pixels);
            for (c, plane) in pixels.chunks_exact(PLANE).enumerate() {
                for &p in plane {
                    sum[c] += p as f64;
                    sum_sq[c] += (p as f64) * (p as f64);
                }
            }
        }
        let n = (count * PLANE) as f64;
        let mut norm = Self { mean: [0.0; CHANNELS], std: [1.0; CHANNELS] };
        for c in 0..CHANNELS {
            let mean = sum[c] / n;
            norm.mean[c] = mean as f32;
            norm.std[c] = ((sum_sq[c] / n - mean * mean).max(1e-12)).sqrt() as f32;
        }
        norm
    }

    fn apply(&self, pixels: &mut [f32]) {
        for (c, plane) in pixels.chunks_exact_mut(PLANE).enumerate() {
            for p in plane {
                *p = (*p - self.mean[c]) / self.std[c];
            }
        }
    }
}

impl fmt::Display for ChannelNorm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mean [{:.3}, {:.3}, {:.3}], std [{:.3}, {:.3}, {:.3}]",
            self.mean[0], self.mean[1], self.mean[2], self.std[0], self.std[1], self.std[2]
        )
    }
}

/// Images `indices` of `set`, normalised, as one tensor, with their labels.
pub struct Batch {
    pub images: Images,
    pub labels: Vec<usize>,
}

impl Batch {
    pub fn gather(set: &dyn ImageSet, indices: &[usize], norm: &ChannelNorm, dev: &Cpu) -> Self {
        let mut data = vec![0f32; indices.len() * IMAGE_LEN];
        let mut labels = Vec::with_capacity(indices.len());
        for (&index, pixels) in indices.iter().zip(data.chunks_exact_mut(IMAGE_LEN)) {
            labels.push(set.write_image(index, pixels));
            norm.apply(pixels);
        }
        let images = dev.tensor_from_vec(data, (indices.len(), Const::<3>, Const::<32>, Const::<32>));
        Self { images, labels }
    }

    /// The labels as one-hot rows: the target probabilities `cross_entropy_with_logits_loss` takes.
    pub fn one_hot_targets(&self, dev: &Cpu) -> Tensor<(usize, Const<NUM_CLASSES>), f32, Cpu> {
        let mut probs = vec![0f32; self.labels.len() * NUM_CLASSES];
        for (row, &label) in self.labels.iter().enumerate() {
            probs[row * NUM_CLASSES + label] = 1.0;
        }
        dev.tensor_from_vec(probs, (self.labels.len(), Const::<NUM_CLASSES>))
    }
}

/// The order in which one epoch visits `len` images: a shuffle that depends only on
/// `(seed, epoch)`, so a resumed run sees the batches an uninterrupted run would have.
pub fn epoch_order(len: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(seed ^ 0x6570_6f63_6800_0000 ^ epoch as u64)));
    order
}

/// Consecutive batches of `batch_size` indices; the last, shorter batch is dropped so every
/// step sees the same number of images (batch norm statistics on tiny batches are noisy).
pub fn batches(order: &[usize], batch_size: usize) -> impl Iterator<Item = &[usize]> {
    order.chunks_exact(batch_size)
}
