//! Fashion-MNIST, the papers' dataset, from Debian's `dataset-fashion-mnist`.
//!
//! Pixels are scaled to [0, 1] with no augmentation; the last 5,000 of the
//! 60,000 training images are held out for validation, as in ParM.

pub mod idx;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

pub use idx::{IdxArray, read_idx};

/// Where Debian's package puts the files.
pub const DEFAULT_DATA_DIR: &str = "/usr/share/datasets/fashion-mnist";
/// Images held out of the training files for validation.
pub const VALIDATION_SIZE: usize = 5_000;
pub const IMAGE_SIDE: usize = 28;
pub const CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

const TRAIN_IMAGES: &str = "train-images-idx3-ubyte.gz";
const TRAIN_LABELS: &str = "train-labels-idx1-ubyte.gz";
const TEST_IMAGES: &str = "t10k-images-idx3-ubyte.gz";
const TEST_LABELS: &str = "t10k-labels-idx1-ubyte.gz";

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(
        "Fashion-MNIST file {path} is missing: install it with `apt-get install dataset-fashion-mnist`, or point --data-dir at a folder holding {file}"
    )]
    Missing { path: PathBuf, file: &'static str },
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is corrupt ({reason}); reinstall it with `apt-get install --reinstall dataset-fashion-mnist`"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("{0}")]
    Tensor(#[from] candle_core::Error),
}

/// A set of images with their labels.
#[derive(Debug, Clone)]
pub struct Split {
    /// `[n, 1, 28, 28]`, f32 in [0, 1].
    pub images: Tensor,
    pub labels: Vec<u8>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The first `n` examples (all of them if there are fewer).
    pub fn take(&self, n: usize) -> Result<Split, DataError> {
        let n = n.min(self.len());
        Ok(Split {
            images: self.images.narrow(0, 0, n)?,
            labels: self.labels[..n].to_vec(),
        })
    }

    /// The same split with its images on `device` (one copy).
    pub fn to_device(&self, device: &Device) -> Result<Split, DataError> {
        Ok(Split {
            images: self.images.to_device(device)?,
            labels: self.labels.clone(),
        })
    }

    /// The images at `indices`, stacked in that order.
    pub fn images_at(&self, indices: &[u32]) -> Result<Tensor, candle_core::Error> {
        let idx = Tensor::from_slice(indices, indices.len(), self.images.device())?;
        self.images.index_select(&idx, 0)
    }
}

/// The three splits of the papers' setup.
#[derive(Debug, Clone)]
pub struct FashionMnist {
    pub train: Split,
    pub validation: Split,
    pub test: Split,
}

impl FashionMnist {
    /// Loads the four IDX files from `dir`.
    pub fn load(dir: &Path) -> Result<Self, DataError> {
        let train = load_split(dir, TRAIN_IMAGES, TRAIN_LABELS)?;
        let test = load_split(dir, TEST_IMAGES, TEST_LABELS)?;
        let n = train.len();
        if n <= VALIDATION_SIZE {
            return Err(DataError::Corrupt {
                path: dir.join(TRAIN_LABELS),
                reason: format!("only {n} training images, need more than {VALIDATION_SIZE}"),
            });
        }
        let keep = n - VALIDATION_SIZE;
        let validation = Split {
            images: train.images.narrow(0, keep, VALIDATION_SIZE)?,
            labels: train.labels[keep..].to_vec(),
        };
        let train = train.take(keep)?;
        Ok(Self {
            train,
            validation,
            test,
        })
    }

    /// The dataset with every split's images on `device`: read on the host,
    /// then copied once, so training and evaluation run where the model is.
    pub fn to_device(&self, device: &Device) -> Result<Self, DataError> {
        Ok(Self {
            train: self.train.to_device(device)?,
            validation: self.validation.to_device(device)?,
            test: self.test.to_device(device)?,
        })
    }
}

fn load_split(
    dir: &Path,
    images_file: &'static str,
    labels_file: &'static str,
) -> Result<Split, DataError> {
    let images = read_required(dir, images_file)?;
    let labels = read_required(dir, labels_file)?;
    let corrupt = |file: &str, reason: String| DataError::Corrupt {
        path: dir.join(file),
        reason,
    };
    if images.dims.len() != 3 || images.dims[1] != IMAGE_SIDE || images.dims[2] != IMAGE_SIDE {
        return Err(corrupt(
            images_file,
            format!(
                "expected n×28×28 images, found dimensions {:?}",
                images.dims
            ),
        ));
    }
    if labels.dims.len() != 1 || labels.dims[0] != images.dims[0] {
        return Err(corrupt(
            labels_file,
            format!(
                "{} labels for {} images",
                labels.dims.first().copied().unwrap_or(0),
                images.dims[0]
            ),
        ));
    }
    if let Some(bad) = labels.data.iter().find(|&&l| l as usize >= CLASSES.len()) {
        return Err(corrupt(
            labels_file,
            format!("label {bad} out of range 0..10"),
        ));
    }
    let n = images.dims[0];
    let pixels: Vec<f32> = images.data.iter().map(|&p| p as f32 / 255.0).collect();
    // CPU by design: decoded from the files on the host; `to_device` moves it.
    let images = Tensor::from_vec(pixels, (n, 1, IMAGE_SIDE, IMAGE_SIDE), &Device::Cpu)?;
    Ok(Split {
        images,
        labels: labels.data,
    })
}

fn read_required(dir: &Path, file: &'static str) -> Result<IdxArray, DataError> {
    let path = dir.join(file);
    if !path.exists() {
        return Err(DataError::Missing { path, file });
    }
    read_idx(&path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_gz(dir: &Path, file: &str, array: &IdxArray) {
        let f = std::fs::File::create(dir.join(file)).unwrap();
        let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        gz.write_all(&idx::encode_idx(array)).unwrap();
        gz.finish().unwrap();
    }

    fn fixture(dir: &Path, n_train: usize) {
        let images = |n: usize| IdxArray {
            dims: vec![n, 28, 28],
            data: (0..n * 784).map(|i| (i % 256) as u8).collect(),
        };
        let labels = |n: usize| IdxArray {
            dims: vec![n],
            data: (0..n).map(|i| (i % 10) as u8).collect(),
        };
        write_gz(dir, TRAIN_IMAGES, &images(n_train));
        write_gz(dir, TRAIN_LABELS, &labels(n_train));
        write_gz(dir, TEST_IMAGES, &images(7));
        write_gz(dir, TEST_LABELS, &labels(7));
    }

    #[test]
    fn splits_and_scales_a_fixture() {
        let dir = tempfile::tempdir().unwrap();
        fixture(dir.path(), VALIDATION_SIZE + 3);
        let d = FashionMnist::load(dir.path()).unwrap();
        assert_eq!(d.train.len(), 3);
        assert_eq!(d.validation.len(), VALIDATION_SIZE);
        assert_eq!(d.test.len(), 7);
        assert_eq!(d.train.images.dims(), &[3, 1, 28, 28]);
        // The validation split starts right after the kept training images.
        assert_eq!(d.validation.labels[0], 3);
        let max = d.test.images.max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(
            (max - 1.0).abs() < 1e-6,
            "pixels scaled to [0, 1], max {max}"
        );
    }

    #[test]
    fn missing_files_name_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let err = FashionMnist::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("apt-get install dataset-fashion-mnist"),
            "{err}"
        );
    }

    #[test]
    fn corrupt_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        fixture(dir.path(), VALIDATION_SIZE + 3);
        std::fs::write(dir.path().join(TEST_IMAGES), b"not gzip").unwrap();
        let err = FashionMnist::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
        assert!(err.contains(TEST_IMAGES), "{err}");
    }

    #[test]
    fn label_count_must_match() {
        let dir = tempfile::tempdir().unwrap();
        fixture(dir.path(), VALIDATION_SIZE + 3);
        write_gz(
            dir.path(),
            TEST_LABELS,
            &IdxArray {
                dims: vec![6],
                data: vec![0; 6],
            },
        );
        let err = FashionMnist::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("6 labels for 7 images"), "{err}");
    }
}
